"""Atomic-model templates: box, cache, conventions against the atoms and an MRC.

The model is one chain of human apoferritin (PDB 6Z6U, 1,359 atoms, from the
shared 24-mer), simulated at 4 A per voxel so that ttsim3d stays fast. Three
references share no code with ``twodtm.model_template``:

- the atoms themselves (read with gemmi), summed as Gaussians in Fourier space
  with numpy, which fixes the layout (x along the last axis, hand, centre voxel);
- the map a user gets from ttsim3d as an MRC file (``Simulator.export_to_mrc`` at
  1 A), binned by the independent ``forward_model.bin_map``: the "MRC template of
  the same model";
- a micrograph of that MRC rendered by ``forward_model``, searched with
  ``twodtm match`` once with the MRC and once with the model (``.pdb.gz``).
"""

from __future__ import annotations

import gzip
import itertools
import json
from pathlib import Path

import gemmi
import numpy as np
import pytest
import starfile
import torch
import yaml
from ttsim3d.models import Simulator, SimulatorConfig
from typer.testing import CliRunner

import forward_model as fm
from twodtm import model_template as mt
from twodtm.cli import app
from twodtm.config import MatchConfig, parse_config
from twodtm.errors import ConfigError
from twodtm.io.mrc import read_mrc, write_mrc
from twodtm.io.results import MatchResult
from twodtm.orientations import orientation_grid

APOFERRITIN = Path("/work/shared/data/6z6u_apoferritin_24mer.pdb")
PIXEL_SIZE = 3.0  # A
FINE = 1.0  # A, voxel of the user's ttsim3d MRC
DEFOCUS = 10000.0  # A
DOSE = 100.0  # e/A^2: matched-filter SNR 12-14 for this 18 kDa chain
SHAPE = (128, 128)
STEP = 15.0  # deg, in-plane and out-of-plane grid step (360 poses in O's unit)
needs_model = pytest.mark.skipif(
    not APOFERRITIN.is_file(), reason=f"{APOFERRITIN} (shared test data) is absent"
)


def _pdb(path: Path, atoms: list[tuple[str, float, float, float]]) -> Path:
    """Write a minimal PDB file: one carbon/nitrogen/... ATOM record per atom."""
    lines = [
        f"ATOM  {k + 1:5d}  {e:<3s} ALA A{k + 1:4d}    {x:8.3f}{y:8.3f}{z:8.3f}"
        f"  1.00 20.00          {e:>2s}"
        for k, (e, x, y, z) in enumerate(atoms)
    ]
    path.write_text("\n".join([*lines, "END", ""]))
    return path


def _atoms(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Heavy-atom positions (x, y, z), A, and atomic numbers, read with gemmi."""
    structure = gemmi.read_structure(str(path))
    xyz, z = [], []
    for chain in structure[0]:
        for residue in chain:
            for atom in residue:
                if atom.element.name != "H":
                    xyz.append(atom.pos.tolist())
                    z.append(atom.element.atomic_number)
    return np.array(xyz), np.array(z, dtype=np.float64)


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Chain A of the 6Z6U 24-mer as its own PDB file."""
    if not APOFERRITIN.is_file():
        pytest.skip(f"{APOFERRITIN} (shared test data) is absent")
    full = gemmi.read_structure(str(APOFERRITIN))
    single = gemmi.Structure()
    single.cell = full.cell
    model = gemmi.Model("1")
    model.add_chain(full[0][0])
    single.add_model(model)
    path = tmp_path_factory.mktemp("model") / "apoferritin_chain.pdb"
    single.write_pdb(str(path))
    return path


@pytest.fixture(scope="module")
def unfiltered(chain: Path) -> np.ndarray:
    """The chain's template at 3 A without the detector MTF."""
    settings = mt.ModelTemplateSettings(pixel_size=PIXEL_SIZE, detector_mtf=False)
    return mt.load_template(chain, settings).data


def _user_mrc(chain: Path, directory: Path, box: int, apply_dqe: bool) -> Path:
    """What a user makes by hand: ttsim3d's MRC at 1 A, binned to 3 A."""
    fine = directory / f"ttsim3d_{int(apply_dqe)}.mrc"
    factor = round(PIXEL_SIZE / FINE)
    Simulator(
        pdb_filepath=chain,
        pixel_spacing=FINE,
        volume_shape=(box * factor,) * 3,
        simulator_config=SimulatorConfig(apply_dqe=apply_dqe),
    ).export_to_mrc(fine, device="cpu")
    volume, voxel = fm.read_map(str(fine))
    binned, binned_voxel = fm.bin_map(volume, voxel, box * factor, box)
    path = directory / f"user_template_{int(apply_dqe)}.mrc"
    fm.write_mrc(str(path), binned, binned_voxel)
    return path


# ------------------------------------------------------------------ no ttsim3d


def test_suffixes_name_models_and_maps() -> None:
    for name in ("a.pdb", "a.cif", "b.mmcif", "c.ent", "x.cif.gz", "Y.PDB.GZ"):
        assert mt.is_atomic_model(name), name
    for name in ("a.mrc", "a.map", "a.mrc.gz", "pdb", "cif.mrc"):
        assert not mt.is_atomic_model(name), name


def test_box_is_twice_the_largest_atom_distance_plus_margins(tmp_path: Path) -> None:
    # Mean position (0, 0, 5); farthest atom (70, 0, 5) at 70 A from it.
    atoms = [("C", -50.0, 0.0, 5.0), ("C", 70.0, 0.0, 5.0)]
    atoms += [("N", -10.0, 40.0, 5.0), ("O", -10.0, -40.0, 5.0)]
    path = _pdb(tmp_path / "four.pdb", atoms)
    xyz = np.array([a[1:] for a in atoms])
    expected = float(np.linalg.norm(xyz - xyz.mean(0), axis=1).max())
    assert expected == pytest.approx(70.0)
    assert mt.model_radius(path) == pytest.approx(expected, abs=1e-3)
    # (2 * 70 + 2 * 10) / 4 = 40 voxels (2^3 5); 160 / 3 = 53.3 -> 54 (2 3^3).
    assert mt.box_size_for(70.0, 4.0, 10.0) == 40
    assert mt.box_size_for(70.0, 3.0, 10.0) == 54
    # 154 / 7 = 22 = 2 * 11 is not FFT-friendly: 24.
    assert mt.box_size_for(70.0, 7.0, 7.0) == 24


def test_settings_come_from_the_program_config() -> None:
    data = {
        "micrograph": "m.mrc",
        "template": "model.cif.gz",
        "optics": {
            "pixel_size": 1.3,
            "voltage": 200.0,
            "defocus_u": 9e3,
            "defocus_v": 9e3,
        },
        "preprocessing": {
            "template_pixel_size": 1.25,
            "model_template": {"b_factor": 30.0, "dose_end": 50.0, "box_size": 96},
        },
    }
    settings = mt.model_template_settings(parse_config(MatchConfig, data))
    assert settings == mt.ModelTemplateSettings(
        pixel_size=1.25, voltage=200.0, box_size=96, b_factor=30.0, dose_end=50.0
    )
    data["preprocessing"]["model_template"] = {"dose_start": 20.0, "dose_end": 10.0}
    with pytest.raises(ConfigError, match="dose_end"):
        parse_config(MatchConfig, data)
    data["preprocessing"]["model_template"] = {"bfactor": 20.0}
    with pytest.raises(ConfigError, match="model_template.bfactor: unknown key"):
        parse_config(MatchConfig, data)


def test_a_model_without_settings_names_the_fix(tmp_path: Path) -> None:
    path = _pdb(tmp_path / "one.pdb", [("C", 0.0, 0.0, 0.0)])
    with pytest.raises(ConfigError, match="pixel size and voltage"):
        mt.load_template(path)


def test_maps_are_cached_by_content_and_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    atoms = [("C", 0.0, 0.0, 0.0), ("N", 12.0, 3.0, -4.0), ("S", -6.0, 8.0, 2.0)]
    pdb = _pdb(tmp_path / "three.pdb", atoms)
    packed = tmp_path / "elsewhere" / "three.pdb.gz"
    packed.parent.mkdir()
    packed.write_bytes(gzip.compress(pdb.read_bytes()))
    calls: list[int] = []

    def fake(path: Path, settings: mt.ModelTemplateSettings, box: int) -> np.ndarray:
        calls.append(box)
        return np.full((box,) * 3, float(len(calls)), np.float32)

    monkeypatch.setattr(mt, "simulate_model", fake)
    settings = mt.ModelTemplateSettings(pixel_size=2.0, box_size=15)
    cache = tmp_path / "result"
    first = mt.model_template_map(pdb, settings, cache)
    assert calls == [16]  # an odd box is made even
    assert first.parent == cache
    assert first.name.startswith("template_three_")
    record = json.loads(first.with_suffix(".json").read_text())
    assert record["model_sha256"] == mt.model_digest(pdb)
    assert record["settings"]["pixel_size"] == 2.0
    assert read_mrc(first).pixel_size == pytest.approx(2.0)
    # The same content elsewhere and gzipped: the same map, not simulated again.
    assert mt.model_template_map(packed, settings, cache) == first
    assert mt.load_template(packed, settings, cache).data.max() == 1.0
    assert calls == [16]
    # Any setting that changes the map gives another one.
    for changed in (
        mt.ModelTemplateSettings(pixel_size=2.0, box_size=16, b_factor=10.0),
        mt.ModelTemplateSettings(pixel_size=2.0, box_size=16, dose_weighting=False),
        mt.ModelTemplateSettings(pixel_size=2.0, box_size=16, voltage=200.0),
        mt.ModelTemplateSettings(pixel_size=2.1, box_size=16),
    ):
        assert mt.model_template_map(pdb, changed, cache) != first
    assert len(calls) == 5
    # Another model: another map. A truncated cached map is simulated again.
    other = _pdb(tmp_path / "other.pdb", atoms[:2])
    assert mt.model_template_map(other, settings, cache) != first
    first.write_bytes(first.read_bytes()[:2000])
    assert mt.model_template_map(pdb, settings, cache) == first
    assert read_mrc(first).data.max() == float(len(calls)) == 7.0


def test_resolve_leaves_maps_alone_and_points_models_at_their_map(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        mt, "simulate_model", lambda p, s, box: np.ones((box,) * 3, np.float32)
    )
    pdb = _pdb(tmp_path / "one.pdb", [("C", 0.0, 0.0, 0.0), ("C", 20.0, 0.0, 0.0)])
    data = {
        "micrograph": "m.mrc",
        "template": "t.mrc",
        "optics": {"pixel_size": 2.0, "defocus_u": 9e3, "defocus_v": 9e3},
    }
    config = parse_config(MatchConfig, data)
    assert mt.resolve_model_template(config, tmp_path / "out") is config
    with_model = config.model_copy(update={"template": str(pdb)})
    resolved = mt.resolve_model_template(with_model, tmp_path / "out")
    path = Path(resolved.template)
    assert path.parent == tmp_path / "out"
    # Radius 10 A, margin 10 A: 40 A / 2 A = 20 voxels.
    assert read_mrc(path).data.shape == (20, 20, 20)
    assert resolved.model_copy(update={"template": str(pdb)}) == with_model


# ------------------------------------------------------------------ ttsim3d


def _fourier_atoms(xyz: np.ndarray, weights: np.ndarray, box: int) -> np.ndarray:
    """Atoms as Gaussians (B = 100 A^2) on a ``box^3`` grid, mean at ``box // 2``.

    Summed in Fourier space (exactly band-limited, no interpolation); the map is
    indexed ``[z, y, x]`` with x the atoms' x.
    """
    k = np.fft.fftfreq(box)
    kz, ky, kx = np.meshgrid(k, k, np.fft.rfftfreq(box), indexing="ij")
    centred = xyz - xyz.mean(0)
    dft = np.zeros(kz.shape, dtype=np.complex128)
    for (x, y, z), w in zip(centred / PIXEL_SIZE + box // 2, weights, strict=True):
        dft += w * np.exp(-2j * np.pi * (kx * x + ky * y + kz * z))
    return np.fft.irfftn(dft * _envelope(box), s=(box,) * 3, axes=(0, 1, 2))


def _envelope(box: int, b_factor: float = 100.0) -> np.ndarray:
    k = np.fft.fftfreq(box) / PIXEL_SIZE
    kz, ky, kx = np.meshgrid(k, k, np.fft.rfftfreq(box) / PIXEL_SIZE, indexing="ij")
    return np.exp(-b_factor * (kx**2 + ky**2 + kz**2) / 4.0)


def _cross_correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Normalised circular cross-correlation; ``[s]`` compares ``a(r)``, ``b(r-s)``."""
    a, b = a - a.mean(), b - b.mean()
    axes = (0, 1, 2)
    product = np.fft.rfftn(a, axes=axes) * np.conj(np.fft.rfftn(b, axes=axes))
    cc = np.fft.irfftn(product, s=a.shape, axes=axes)
    return cc / np.sqrt((a * a).sum() * (b * b).sum())


def _peak_shift(cc: np.ndarray) -> np.ndarray:
    """Sub-voxel (z, y, x) shift of the cross-correlation peak (parabola per axis)."""
    t = cc.shape[0]
    peak = np.unravel_index(int(np.argmax(cc)), cc.shape)
    shift = []
    for axis in range(3):
        at = list(peak)
        values = []
        for step in (-1, 0, 1):
            at[axis] = (peak[axis] + step) % t
            values.append(cc[tuple(at)])
        low, mid, high = values
        offset = 0.5 * (low - high) / (low - 2 * mid + high)
        whole = peak[axis] if peak[axis] <= t // 2 else peak[axis] - t
        shift.append(whole + offset)
    return np.array(shift)


@needs_model
def test_model_map_has_the_atoms_layout_hand_and_centre(
    chain: Path, unfiltered: np.ndarray
) -> None:
    box = unfiltered.shape[0]
    assert box == mt.box_size_for(mt.model_radius(chain), PIXEL_SIZE, 10.0) == 30
    xyz, z = _atoms(chain)
    reference = _fourier_atoms(xyz, z, box)
    axes = (0, 1, 2)
    smooth = np.fft.irfftn(
        np.fft.rfftn(unfiltered, axes=axes) * _envelope(box), s=(box,) * 3, axes=axes
    )
    same = _cross_correlation(smooth, reference)
    assert same[0, 0, 0] > 0.93  # measured 0.966
    np.testing.assert_allclose(_peak_shift(same), 0.0, atol=0.05)
    # Every other axis order or mirror of the reference matches worse, at any shift.
    others = []
    for order in itertools.permutations(range(3)):
        for signs in itertools.product((1, -1), repeat=3):
            if order == (0, 1, 2) and signs == (1, 1, 1):
                continue
            moved = np.transpose(reference, order)
            flips = tuple(a for a, s in enumerate(signs) if s < 0)
            moved = np.flip(moved, flips) if flips else moved
            others.append(float(_cross_correlation(smooth, moved).max()))
    assert len(others) == 47
    assert max(others) < same[0, 0, 0] - 0.15  # measured 0.75


@needs_model
def test_model_map_equals_the_users_ttsim3d_mrc(
    chain: Path, unfiltered: np.ndarray, tmp_path: Path
) -> None:
    box = unfiltered.shape[0]
    user = fm.read_map(str(_user_mrc(chain, tmp_path, box, apply_dqe=False)))[0]
    # The same simulation, read back from ttsim3d's file and binned by numpy:
    # the same voxels once the Nyquist planes, which bin_map zeroes, are zeroed.
    dft = np.fft.fftn(unfiltered.astype(np.float64))
    nyquist = box // 2
    dft[nyquist], dft[:, nyquist], dft[:, :, nyquist] = 0.0, 0.0, 0.0
    ours = np.fft.ifftn(dft).real
    scale = float(np.abs(user).max())
    assert float(np.abs(ours - user).max()) < 1e-5 * scale
    # ... and the Nyquist planes hold only a few per cent of the map.
    assert 0.005 * scale < float(np.abs(unfiltered - user).max()) < 0.1 * scale


@needs_model
def test_detector_mtf_acts_at_the_template_voxel(unfiltered: np.ndarray) -> None:
    filtered = mt.apply_detector_mtf(torch.from_numpy(unfiltered)).numpy()
    table = starfile.read(Path(SimulatorConfig(mtf_reference="k2_300kv").mtf_reference))
    frequency = table["rlnResolutionInversePixel"].to_numpy(dtype=float)
    amplitude = table["rlnMtfValue"].to_numpy(dtype=float)
    box = unfiltered.shape[0]
    axes = (0, 1, 2)
    ratio = np.abs(np.fft.rfftn(filtered, axes=axes)) / np.abs(
        np.fft.rfftn(unfiltered, axes=axes)
    )
    # Along kx at 0.25 and 0.5 cycles per (3 A) voxel: the K2 MTF there.
    for k in (box // 4, box // 2):
        expected = np.interp(k / box, frequency, amplitude)
        assert ratio[0, 0, k] == pytest.approx(expected, rel=1e-3)
    assert np.interp(0.5, frequency, amplitude) < 0.5


def _particles(rng: np.random.Generator) -> tuple[fm.Particle, ...]:
    """Four particles on grid orientations inside the O asymmetric unit."""
    grid = orientation_grid(STEP, STEP, "O").numpy()
    inside = grid[(grid[:, 1] > 10) & (grid[:, 1] < 45)]
    poses = inside[rng.choice(len(inside), 4, replace=False)]
    placed = fm.random_particles(4, SHAPE, 32, 17, np.full(4, DEFOCUS), rng)
    return tuple(
        fm.Particle(p.x, p.y, float(a[0]), float(a[1]), float(a[2]), DEFOCUS)
        for p, a in zip(placed, poses, strict=True)
    )


def _search(directory: Path, template: Path, micrograph: Path) -> MatchResult:
    config = {
        "micrograph": str(micrograph),
        "template": str(template),
        "optics": {
            "pixel_size": PIXEL_SIZE,
            "defocus_u": DEFOCUS,
            "defocus_v": DEFOCUS,
        },
        "defocus_search": {"enabled": False},
        "orientation_search": {
            "in_plane_step": STEP,
            "out_of_plane_step": STEP,
            "symmetry": "O",
        },
        "compute": {"devices": "cpu"},
        "output": {"directory": str(directory)},
    }
    path = directory.parent / f"{directory.name}.yaml"
    path.write_text(yaml.safe_dump(config))
    outcome = CliRunner().invoke(app, ["match", str(path), "--no-report"])
    assert outcome.exit_code == 0, outcome.output
    return MatchResult.load(directory)


def _at_particles(
    result: MatchResult, particles: tuple[fm.Particle, ...]
) -> list[tuple[int, int, float, list[float]]]:
    """Pixel, MIP and angles of the MIP maximum within 1 px of each particle.

    The MIP, not the z-score: for an object this small and smooth the z-score of
    a true pose is capped near 3 by how alike its projections at other poses are
    (see test_independent_search), while its MIP stands 9 sigma above the noise.
    """
    mip = result.maps["mip"]
    found = []
    for p in particles:
        y0, x0 = round(p.y), round(p.x)
        window = mip[y0 - 1 : y0 + 2, x0 - 1 : x0 + 2]
        dy, dx = np.unravel_index(int(np.argmax(window)), window.shape)
        y, x = y0 - 1 + int(dy), x0 - 1 + int(dx)
        angles = [float(result.maps[n][y, x]) for n in ("phi", "theta", "psi")]
        found.append((x, y, float(mip[y, x]), angles))
    return found


@needs_model
def test_model_and_mrc_templates_give_the_same_poses(
    chain: Path, tmp_path: Path
) -> None:
    box = mt.box_size_for(mt.model_radius(chain), PIXEL_SIZE, 10.0)
    user = _user_mrc(chain, tmp_path, box, apply_dqe=True)
    volume, _ = fm.read_map(str(user))
    particles = _particles(np.random.default_rng(7))
    sim = fm.simulate_micrograph(
        volume,
        PIXEL_SIZE,
        SHAPE,
        particles,
        dose=DOSE,
        microscope=fm.Microscope(),
        seed=3,
    )
    micrograph = tmp_path / "micrograph.mrc"
    write_mrc(micrograph, sim.counts.astype(np.float32), PIXEL_SIZE)
    packed = tmp_path / "apoferritin_chain.pdb.gz"
    packed.write_bytes(gzip.compress(chain.read_bytes()))

    from_mrc = _search(tmp_path / "mrc", user, micrograph)
    from_model = _search(tmp_path / "model", packed, micrograph)

    cached = sorted((tmp_path / "model").glob("template_apoferritin_chain_*.mrc"))
    assert len(cached) == 1
    assert from_model.metadata.config["template"] == str(cached[0])
    assert read_mrc(cached[0]).data.shape == (box,) * 3
    mip_mrc, mip_model = (r.maps["mip"] for r in (from_mrc, from_model))
    # Measured 0.992; a mirrored model gives 0.85 and poses 75-84 deg off.
    assert np.corrcoef(mip_mrc.ravel(), mip_model.ravel())[0, 1] > 0.97
    noise = float(np.median(mip_model)) + 6.0 * float(mip_model.std())
    for p, a, b in zip(
        particles,
        _at_particles(from_mrc, particles),
        _at_particles(from_model, particles),
        strict=True,
    ):
        truth = fm.rotation_matrix(p.phi, p.theta, p.psi)
        for x, y, mip, angles in (a, b):
            assert mip > noise
            assert np.hypot(x - p.x, y - p.y) <= 1.0
            assert fm.geodesic_distance(fm.rotation_matrix(*angles), truth) < 0.1
        assert max(abs(a[0] - b[0]), abs(a[1] - b[1])) <= 1
        assert b[2] == pytest.approx(a[2], rel=0.05)
    # The same model and settings again: the cached map is reused as it is.
    before = cached[0].stat().st_mtime_ns
    config = MatchConfig.model_validate(
        yaml.safe_load((tmp_path / "model.yaml").read_text())
    )
    again = mt.resolve_model_template(config, tmp_path / "model")
    assert again.template == str(cached[0])
    assert cached[0].stat().st_mtime_ns == before
