"""Search masks: a mask file and the automatic exclusion of carbon and contamination.

The micrograph comes from the independent forward model (``forward_model``: no
twodtm code), with particles on clean ice and two planted defects: a carbon
film over the left fifth (20 % more absorption, its own CTF-filtered phase
texture) and a bright blob (a thin-ice patch, 30 % more electrons with a soft
edge). Three more particles lie on the defects, two on the carbon and one in
the blob, as particles do on real carbon and contamination; there they are
picks to avoid (on carbon a particle is in another environment, under a
different background). Pure ice defects give no z-score above the threshold
here (the per-pixel normalisation absorbs a uniform texture), but they lower
the recall of an unmasked search. Measured (recall, precision on the clean-ice
particles): masked 1.0, 1.0; unmasked 0.9, 0.9 with one pick on a defect;
clean (carbon area masked by a file) 0.8, 0.89. The same particles and noise
without the defects are the reference. The searches run through ``twodtm match``
and ``twodtm peaks``.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from scipy import ndimage

import forward_model as fm
from test_independent_search import (
    DEFOCUS,
    DOSE,
    FAST,
    MICROSCOPE,
    PIXEL_SIZE,
    optics_yaml,
    pair,
    pseudo_atoms,
    run_cli,
)
from twodtm.config import parse_config
from twodtm.config.match import Masking, MatchConfig
from twodtm.errors import InputDataError
from twodtm.io.results import MatchResult
from twodtm.local._boxes import whitened_real_image
from twodtm.masking import ExclusionSettings, auto_exclusion
from twodtm.picking import PeakSettings, number_of_trials, pick_peaks
from twodtm.preprocess import FilterSettings, prepare_image
from twodtm.programs._match_task import load_inputs
from twodtm.programs._particles import read_micrograph
from twodtm.programs.demo import demo_optics, demo_volume
from twodtm.programs.match import match_template
from twodtm.simulate import SimulationParams, simulate_micrograph

SHAPE = (224, 320)
BOX = FAST.box
CARBON_COLUMNS = 64  # carbon covers columns < 64
BLOB = (150.0, 250.0, 14.0)  # row, column, radius (px)
N_PARTICLES = 10
# Finer than FAST's 12 deg, so that z clears the threshold with a margin.
ANGLE_STEP = 9.0


def _particles(seed: int = 3) -> tuple[fm.Particle, ...]:
    """Particles on the clean ice, a box clear of both defects and of each other."""
    rng = np.random.default_rng(seed)
    placed: list[fm.Particle] = []
    low = [CARBON_COLUMNS + BOX, BOX / 2 + 2]
    high = [SHAPE[1] - BOX / 2 - 3, SHAPE[0] - BOX / 2 - 3]
    while len(placed) < N_PARTICLES:
        x, y = rng.uniform(low, high)
        if np.hypot(y - BLOB[0], x - BLOB[1]) < BLOB[2] + BOX:
            continue
        if any(np.hypot(x - p.x, y - p.y) < BOX + 2 for p in placed):
            continue
        pose = rng.uniform([10, 10, 0], [70, 45, 360])
        defocus = DEFOCUS + float(rng.uniform(-250, 250))
        placed.append(fm.Particle(float(x), float(y), *map(float, pose), defocus))
    return tuple(placed)


# Particles on the defects: two on the carbon, one in the blob (x, y).
_ON_DEFECTS = ((26.0, 60.0), (30.0, 165.0), (BLOB[1], BLOB[0]))


def _on_defects() -> tuple[fm.Particle, ...]:
    rng = np.random.default_rng(17)
    return tuple(
        fm.Particle(x, y, *map(float, rng.uniform([10, 10, 0], [70, 45, 360])), DEFOCUS)
        for x, y in _ON_DEFECTS
    )


def _planted() -> np.ndarray:
    rows, cols = np.indices(SHAPE)
    blob = np.hypot(rows - BLOB[0], cols - BLOB[1]) < BLOB[2]
    return (cols < CARBON_COLUMNS) | blob


def _simulate(defects: bool, seed: int = 5) -> np.ndarray:
    """Poisson counts; the defects change transmission and add carbon texture."""
    volume = pseudo_atoms(FAST)
    particles = _particles() + _on_defects()
    phase = fm.render_phase(volume, PIXEL_SIZE, SHAPE, particles, MICROSCOPE)
    rng = np.random.default_rng(seed)
    transmission = np.ones(SHAPE)
    texture = rng.normal(0.0, 0.15, SHAPE)
    if defects:
        carbon = np.indices(SHAPE)[1] < CARBON_COLUMNS
        ctf = MICROSCOPE.ctf(SHAPE, PIXEL_SIZE, DEFOCUS)
        texture = np.fft.irfft2(np.fft.rfft2(texture) * ctf, s=SHAPE)
        phase = phase + np.where(carbon, texture, 0.0)
        transmission = np.where(carbon, 0.8, 1.0)
        rows, cols = np.indices(SHAPE)
        r = np.hypot(rows - BLOB[0], cols - BLOB[1])
        transmission = transmission * (1 + 0.3 / (1 + np.exp((r - BLOB[2]) / 1.5)))
    expected = DOSE * PIXEL_SIZE**2 * transmission * (1 + 2 * phase)
    return rng.poisson(np.clip(expected, 0.0, None)).astype(np.float64)


def _search(
    directory: Path, micrograph: Path, template: Path, masking: dict
) -> tuple[MatchResult, pd.DataFrame, dict]:
    """``twodtm match`` (one defocus plane, 9 deg grid) then ``twodtm peaks``."""
    config = {
        "micrograph": str(micrograph),
        "template": str(template),
        "optics": optics_yaml(),
        "defocus_search": {"enabled": False},
        "orientation_search": {
            "in_plane_step": ANGLE_STEP,
            "out_of_plane_step": ANGLE_STEP,
            "symmetry": "O",
        },
        "masking": masking,
        "compute": {"fused_statistics": True},
        "output": {"directory": str(directory / "result")},
    }
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "match.yaml").write_text(yaml.safe_dump(config))
    run_cli(["match", str(directory / "match.yaml"), "--no-report"])
    run_cli(["peaks", str(directory / "result")])
    result = MatchResult.load(directory / "result")
    picks = pd.read_csv(directory / "result" / "particles.csv")
    record = json.loads((directory / "result" / "peaks.json").read_text())
    return result, picks, record


@pytest.fixture(scope="module")
def searches(tmp_path_factory) -> dict:
    """The defect micrograph with and without masking, and the clean one."""
    root = tmp_path_factory.mktemp("masking")
    template = root / "template.mrc"
    fm.write_mrc(str(template), pseudo_atoms(FAST), PIXEL_SIZE)
    paths = {}
    for name, defects in (("defects", True), ("clean", False)):
        paths[name] = root / f"{name}.mrc"
        fm.write_mrc(str(paths[name]), _simulate(defects), PIXEL_SIZE)
    # The clean micrograph with a user mask over the carbon's place: the
    # reference of recall, and of a mask file.
    user_mask = np.ones(SHAPE, dtype=np.float32)
    user_mask[:, :CARBON_COLUMNS] = 0.0
    fm.write_mrc(str(root / "mask.mrc"), user_mask, PIXEL_SIZE)
    runs = {
        "masked": ("defects", {}),
        "unmasked": ("defects", {"auto_exclude": False}),
        "clean": ("clean", {"mask": str(root / "mask.mrc")}),
    }
    found = {
        label: _search(root / label, paths[image], template, masking)
        for label, (image, masking) in runs.items()
    }
    return {"root": root, "paths": paths, **found}


def _truth() -> pd.DataFrame:
    return pd.DataFrame([vars(p) for p in _particles()])


def _on(region: np.ndarray, picks: pd.DataFrame) -> int:
    rows = np.rint(picks.y.to_numpy()).astype(int)
    cols = np.rint(picks.x.to_numpy()).astype(int)
    return int(region[rows, cols].sum())


def _score(picks: pd.DataFrame) -> tuple[float, float]:
    n_true = len(pair(picks, _truth()))
    return n_true / N_PARTICLES, n_true / max(len(picks), 1)


def test_no_picks_on_the_defects_and_the_particles_still_found(searches):
    planted = _planted()
    near = ndimage.distance_transform_edt(~planted) <= BOX / 2
    masked, unmasked, clean = (searches[k][1] for k in ("masked", "unmasked", "clean"))
    scores = {k: _score(searches[k][1]) for k in ("masked", "unmasked", "clean")}
    print(
        "recall, precision:",
        {k: tuple(round(v, 2) for v in s) for k, s in scores.items()},
        f"picks on the defects: masked {_on(near, masked)}, "
        f"unmasked {_on(near, unmasked)} of {len(unmasked)}",
    )
    # Without masking the defects are picked: the test can fail.
    assert _on(near, unmasked) >= 1
    assert _on(near, masked) == 0
    recall, precision = scores["masked"]
    assert recall >= scores["clean"][0]
    assert recall >= scores["unmasked"][0]
    assert precision >= 0.85


def test_excluded_fraction_matches_the_planted_defects(searches):
    result = searches["masked"][0]
    planted = _planted()
    excluded = ~result.searched
    meta = json.loads((searches["root"] / "masked/result/result.json").read_text())
    # Each defect grows by the template radius (the dilation) and by up to one
    # 21 A block of the low-resolution statistics (7 px at 3 A/px), where the
    # block grid meets the edge.
    distance = ndimage.distance_transform_edt(~planted)
    least = float(np.mean(distance <= BOX / 2 - 1))
    most = float(np.mean(distance <= BOX / 2 + 7 * np.sqrt(2)))
    print(
        f"excluded {meta['excluded_fraction']:.3f}: planted {planted.mean():.3f}, "
        f"grown by the radius {least:.3f} .. plus a block {most:.3f}"
    )
    assert float(excluded[planted].mean()) > 0.99
    assert least <= meta["excluded_fraction"] <= most
    assert meta["excluded_pixels"] == int(excluded.sum())
    assert (searches["root"] / "masked/result/mask.mrc").is_file()


def test_a_clean_micrograph_excludes_nothing_and_searches_as_before(searches):
    clean = fm.read_map(str(searches["paths"]["clean"]))[0]
    excluded = auto_exclusion(clean, PIXEL_SIZE, BOX, ExclusionSettings())
    assert not excluded.any()
    # the clean run excluded exactly the mask file's zeros
    result, picks, record = searches["clean"]
    assert result.metadata.excluded_pixels == SHAPE[0] * CARBON_COLUMNS
    assert _on(~result.searched, picks) == 0


def test_the_threshold_counts_only_the_searched_pixels(searches):
    result, _, record = searches["clean"]
    per_pixel = result.metadata.correlations_per_pixel
    searched = SHAPE[0] * (SHAPE[1] - CARBON_COLUMNS)
    assert record["n_trials"] == per_pixel * searched
    assert record["n_pixels"] == searched
    # Half of the image masked: half the trials, and no pick in that half.
    unmasked = replace(result, mask=None)
    half = np.ones(SHAPE, dtype=bool)
    half[:, SHAPE[1] // 2 :] = False
    halved = replace(result, mask=half)
    assert number_of_trials(halved) == 0.5 * number_of_trials(unmasked)
    picks, record = pick_peaks(halved, PeakSettings(), BOX)
    everywhere, wide = pick_peaks(unmasked, PeakSettings(), BOX)
    assert record.threshold < wide.threshold
    assert (picks.x < SHAPE[1] // 2).all()
    assert (everywhere.x >= SHAPE[1] // 2).any()


def _small_config(tmp_path: Path, masking: dict) -> MatchConfig:
    rng = np.random.default_rng(0)
    micrograph = tmp_path / "noise.mrc"
    fm.write_mrc(str(micrograph), rng.poisson(40.0, (128, 160)), 2.0)
    template = tmp_path / "blob.mrc"
    fm.write_mrc(str(template), pseudo_atoms(FAST)[8:24, 8:24, 8:24], 2.0)
    config = {
        "micrograph": str(micrograph),
        "template": str(template),
        "optics": {"pixel_size": 2.0, "defocus_u": 12000.0, "defocus_v": 12000.0},
        "defocus_search": {"enabled": False},
        "orientation_search": {"in_plane_step": 60.0, "out_of_plane_step": 60.0},
        "masking": masking,
    }
    return parse_config(MatchConfig, config, "test")


def test_auto_exclusion_on_a_clean_micrograph_changes_no_bit(tmp_path):
    on = match_template(_small_config(tmp_path, {"auto_exclude": True}))
    off = match_template(_small_config(tmp_path, {"auto_exclude": False}))
    assert on.mask is None and on.metadata.excluded_pixels == 0
    for name, values in off.maps.items():
        np.testing.assert_array_equal(on.maps[name], values, err_msg=name)


def test_a_mask_of_another_shape_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "wrong_mask.mrc"
    fm.write_mrc(str(path), np.ones((64, 64)), 2.0)
    config = _small_config(tmp_path, {"mask": str(path)})
    with pytest.raises(InputDataError, match="wrong_mask.mrc.*shape"):
        match_template(config)
    zeros = tmp_path / "zero_mask.mrc"
    fm.write_mrc(str(zeros), np.zeros((128, 160)), 2.0)
    with pytest.raises(InputDataError, match="zero_mask.mrc.*nothing"):
        match_template(_small_config(tmp_path, {"mask": str(zeros)}))


def test_excluded_pixels_are_flattened_and_the_searched_noise_is_unit():
    """White noise of variance 4 beside a 'carbon' strip: offset, 25x the power.

    Whitened with the strip excluded, the searched pixels must come out as the
    noise alone would: unit variance (no whitening cut, no bandpass: the band is
    every frequency), and the strip flat at the searched mean before whitening.
    """
    rng = np.random.default_rng(0)
    shape, strip = (128, 160), 40
    image = rng.normal(7.0, 2.0, shape)
    image[:, :strip] = 60.0 + rng.normal(0.0, 10.0, (shape[0], strip))
    searched = np.ones(shape, dtype=bool)
    searched[:, :strip] = False
    before = image.copy()
    settings = FilterSettings(outlier_sigma=None)
    prepared = prepare_image(
        torch.from_numpy(image), 1.0, settings, False, torch.from_numpy(searched)
    )
    np.testing.assert_array_equal(image, before)  # the input is not modified
    whitened = torch.fft.irfft2(prepared.whitened_dft, s=shape).numpy()
    assert abs(whitened[searched].var() - 1.0) < 0.05
    # unmasked, the strip's power sets the filter and the density
    plain = prepare_image(torch.from_numpy(image), 1.0, settings, False)
    unmasked = torch.fft.irfft2(plain.whitened_dft, s=shape).numpy()
    assert abs(unmasked[searched].var() - 1.0) > 0.2
    # the flattened strip: the same whitening as a micrograph filled by hand
    filled = np.where(searched, image, image[searched].mean())
    by_hand = prepare_image(torch.from_numpy(filled), 1.0, settings, False)
    ratio = prepared.whitened_dft.abs().sum() / by_hand.whitened_dft.abs().sum()
    share = searched.mean()
    assert float(ratio) == pytest.approx(share**0.5, rel=1e-5)
    torch.testing.assert_close(
        prepared.whitened_dft, by_hand.whitened_dft * share**0.5, rtol=1e-4, atol=1e-4
    )


def test_refine_whitens_the_micrograph_as_the_search_did(searches):
    """The local searches read the search's mask: the same whitened image."""
    root, micrograph = searches["root"], searches["paths"]["defects"]
    template = root / "template.mrc"
    raw = {
        "micrograph": str(micrograph),
        "template": str(template),
        "optics": optics_yaml(),
        "defocus_search": {"enabled": False},
    }
    inputs = load_inputs(parse_config(MatchConfig, raw))
    assert inputs.searched is not None and not inputs.searched.all()
    config = parse_config(MatchConfig, raw)
    searched_image = prepare_image(
        torch.from_numpy(inputs.micrograph),
        config.optics.pixel_size,
        replace(config.preprocessing.filter_settings(), outlier_sigma=None),
        config.preprocessing.pad_to_fft_friendly,
        torch.from_numpy(inputs.searched),
    )
    expected = whitened_real_image(searched_image)
    fields = config.preprocessing
    optics = config.optics.to_optics()
    size = int(inputs.template.shape[-1])
    cpu = torch.device("cpu")
    refined = read_micrograph(str(micrograph), optics, fields, Masking(), size, cpu)
    torch.testing.assert_close(refined.whitened, expected, rtol=0, atol=1e-6)
    # without the exclusion, the carbon sets the whitening: another image
    bare = read_micrograph(
        str(micrograph), optics, fields, Masking(auto_exclude=False), size, cpu
    )
    assert float((bare.whitened - expected).abs().max()) > 0.1


def test_refined_zscores_of_masked_picks_stay_above_the_search(searches, tmp_path):
    """``twodtm refine`` on the masked search's picks of the carbon micrograph.

    With the search's masking the refinement finds each particle at least as
    well as the coarse search did (measured: mean z 7.22, every gain 0.4-2.4);
    whitened over the carbon as well, as refine did before it read the mask, it
    lost 0.9-2.5 on every particle (mean z 4.36, under the threshold).
    """
    root = searches["root"]
    picks = root / "masked" / "result" / "particles.csv"
    searched = pd.read_csv(picks)
    refined = {}
    for label, masking in (("masked", {}), ("whole", {"auto_exclude": False})):
        config = {
            "micrograph": str(searches["paths"]["defects"]),
            "template": str(root / "template.mrc"),
            "particles": str(picks),
            "optics": optics_yaml(),
            "masking": masking,
            "output": {"directory": str(tmp_path / label)},
        }
        (tmp_path / f"{label}.yaml").write_text(yaml.safe_dump(config))
        run_cli(["refine", str(tmp_path / f"{label}.yaml")])
        refined[label] = pd.read_csv(tmp_path / label / "particles.csv")
    masked, whole = refined["masked"], refined["whole"]
    assert len(masked) == len(searched) >= 8
    assert (masked.delta_zscore > 0).all()
    assert masked.zscore.mean() > searched.zscore.mean() + 0.3
    assert whole.zscore.mean() < masked.zscore.mean() - 1.0


def test_the_demo_micrograph_excludes_nothing():
    """The demo's 1024^2 apoferritin micrograph: strong particles, no defect."""
    volume, _ = demo_volume()
    optics = demo_optics()
    params = SimulationParams(
        image_shape=(1024, 1024),
        n_particles=12,
        dose=30.0,
        defocus_spread=50.0,
        seed=2024,
    )
    image = np.asarray(simulate_micrograph(volume, optics, params).micrograph)
    size = int(volume.shape[-1])
    excluded = auto_exclusion(image, optics.pixel_size, size, ExclusionSettings())
    assert not excluded.any()
