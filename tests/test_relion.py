"""RELION as a client of twodtm's particle tables, run end to end.

A raw micrograph (protein dark) of apoferritin from the independent forward model
(``forward_model.py``, no twodtm code) is searched with ``twodtm match`` (coarse
grid, symmetry O), picked with ``twodtm peaks`` (CLI) and refined with
``twodtm refine``. RELION 3.1's ``relion_preprocess`` then extracts the particles
from the coordinate files twodtm wrote, and ``relion_reconstruct --ctf`` builds a
map from the extracted stack with twodtm's angles and defocus. This checks
twodtm's coordinates (RELION's 0-based pixel index, box centre at ``box // 2``),
its Euler angles (RELION's rot/tilt/psi) and its CTF parameters with the field's
reference program.

Contrast: the micrograph is raw, protein dark at underfocus (cisTEM's
``CTF = -sin(chi)``). RELION's CTF model has the opposite sign (``+sin(chi)``,
protein bright), so its particles must be contrast-inverted: extraction runs with
``--invert_contrast``, as RELION's own pipeline does for raw micrographs. Without
it the reconstruction is the negative of the map (correlation of the opposite
sign), which the positive correlation asserted below excludes.

Figures when written (RELION 3.1.3; 384 x 384 px at 3 A, 8 particles, 25,000 A
underfocus, 8 deg grid): 8 of 8 picked, 8 boxes extracted from the peaks' and the
refined coordinate files, particle centres 0.46 px or less from the box centre
(within 0.11 px of where the rounded coordinate puts them); map vs template at
10 A (spherical average removed): 0.91 with twodtm's poses and CTF, 0.18 with
the angles shuffled, 0.10 with the defocus 5,000 A off.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile
from typer.testing import CliRunner

import forward_model as fm
from twodtm.cli import app
from twodtm.config import MatchConfig, RefineConfig, parse_config
from twodtm.io.tables import COORDINATE_LIST, coordinate_file_name, read_particles
from twodtm.programs.match import run_match
from twodtm.programs.refine import run_refine

pytestmark = [
    pytest.mark.skipif(
        shutil.which("relion_preprocess") is None
        or shutil.which("relion_reconstruct") is None,
        reason="RELION is not installed (relion_preprocess, relion_reconstruct); "
        "install the Debian package: apt-get install -y relion",
    ),
    pytest.mark.usefixtures("one_torch_thread"),
]

# The project's shared data sit beside the checkout (../shared/data).
MAP = (
    Path(
        os.environ.get(
            "TWODTM_SHARED_DATA",
            Path(__file__).resolve().parents[2] / "shared" / "data",
        )
    )
    / "sim_6z6u_apoferritin_1.0A_192.mrc"
)
BOX = 64  # template and extraction box, pixels
SHAPE = (384, 384)
N_PARTICLES = 8
DOSE = 60.0  # e/A^2
DEFOCUS = 25000.0  # A; several CTF zeros below 10 A, so the defocus matters
MICROSCOPE = fm.Microscope(astigmatism=400.0, astigmatism_angle=30.0)
STEP = 8.0  # global search grid, degrees
SEARCH_RESOLUTION = 8.0  # A, low-pass of the coarse global search (refine: all)
MICROGRAPH = "micrograph.mrc"  # as RELION's micrographs STAR names it
SUFFIX = "_twodtm.star"
RESOLUTION = 10.0  # A, low-pass of the map comparison (3.3 pixels)


def _optics(pixel: float) -> dict[str, float]:
    half = 0.5 * MICROSCOPE.astigmatism
    return {
        "pixel_size": pixel,
        "voltage": MICROSCOPE.voltage,
        "spherical_aberration": MICROSCOPE.cs_mm,
        "amplitude_contrast": MICROSCOPE.amplitude_contrast,
        "defocus_u": DEFOCUS + half,
        "defocus_v": DEFOCUS - half,
        "astigmatism_angle": MICROSCOPE.astigmatism_angle,
    }


def _micrographs_star(path: Path, pixel: float) -> None:
    optics = pd.DataFrame(
        {
            "rlnOpticsGroupName": ["opticsGroup1"],
            "rlnOpticsGroup": [1],
            "rlnMicrographPixelSize": [pixel],
            "rlnVoltage": [MICROSCOPE.voltage],
            "rlnSphericalAberration": [MICROSCOPE.cs_mm],
            "rlnAmplitudeContrast": [MICROSCOPE.amplitude_contrast],
        }
    )
    micrographs = pd.DataFrame(
        {"rlnMicrographName": [MICROGRAPH], "rlnOpticsGroup": [1]}
    )
    starfile.write({"optics": optics, "micrographs": micrographs}, path, overwrite=True)


def _run(command: list[str], cwd: Path) -> None:
    done = subprocess.run(
        command, check=False, cwd=cwd, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, f"{command[0]} failed:\n{done.stdout}\n{done.stderr}"


def _extract(work: Path, coord_dir: Path, name: str) -> dict[str, pd.DataFrame]:
    """Run relion_preprocess on twodtm's coordinate files; return its STAR blocks."""
    _run(
        [
            "relion_preprocess",
            "--i",
            "micrographs.star",
            "--coord_dir",
            str(coord_dir),
            "--coord_suffix",
            SUFFIX,
            "--extract",
            "--extract_size",
            str(BOX),
            "--norm",
            "--bg_radius",
            str(BOX // 2 - 4),
            "--invert_contrast",  # raw micrograph -> RELION's bright particles
            "--part_dir",
            f"{name}/",
            "--part_star",
            f"{name}.star",
        ],
        work,
    )
    return starfile.read(work / f"{name}.star", always_dict=True)


def _stack(work: Path, images: pd.Series) -> np.ndarray:
    boxes = []
    for name in images:
        index, stack = name.split("@")
        boxes.append(mrcfile.read(work / stack)[int(index) - 1])
    return np.asarray(boxes, dtype=np.float64)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory, one_torch_thread: None) -> dict:
    if not MAP.is_file():
        pytest.skip(f"shared test map {MAP} absent (set TWODTM_SHARED_DATA)")
    work = tmp_path_factory.mktemp("relion")
    volume, voxel = fm.read_map(str(MAP))
    template, pixel = fm.bin_map(volume, voxel, volume.shape[0], BOX)
    rng = np.random.default_rng(5)
    defoci = DEFOCUS + rng.normal(0.0, 150.0, N_PARTICLES)
    particles = fm.random_particles(
        N_PARTICLES, SHAPE, 1.1 * BOX, BOX / 2 + 2, defoci, rng
    )
    sim = fm.simulate_micrograph(
        template, pixel, SHAPE, particles, dose=DOSE, microscope=MICROSCOPE, seed=3
    )
    fm.write_mrc(str(work / MICROGRAPH), sim.counts, pixel)
    fm.write_mrc(str(work / "template.mrc"), template, pixel)

    inputs = {
        "micrograph": str(work / MICROGRAPH),
        "template": str(work / "template.mrc"),
        "optics": _optics(pixel),
    }
    match = parse_config(
        MatchConfig,
        inputs
        | {
            "defocus_search": {"enabled": False},
            "preprocessing": {"bandpass_high_resolution": SEARCH_RESOLUTION},
            "orientation_search": {
                "in_plane_step": STEP,
                "out_of_plane_step": STEP,
                "symmetry": "O",
            },
        },
    )
    run_match(match, output=work / "result")
    picked = CliRunner().invoke(
        app, ["peaks", str(work / "result"), "--micrograph-name", MICROGRAPH]
    )
    assert picked.exit_code == 0, picked.output
    refine = parse_config(
        RefineConfig,
        inputs
        | {
            "particles": str(work / "result" / "particles.star"),
            "search": {
                "orientation": {
                    "out_of_plane_range": STEP / 2,
                    "out_of_plane_step": STEP / 4,
                    "in_plane_range": STEP / 2,
                    "in_plane_step": STEP / 4,
                },
                "defocus": {"min": -600.0, "max": 600.0, "step": 200.0},
                "iterations": 2,
            },
        },
    )
    run_refine(refine, output=work / "refined")
    _micrographs_star(work / "micrographs.star", pixel)
    return {
        "work": work,
        "template": template,
        "pixel": pixel,
        "truth": particles,
    }


def _expected_box(template: np.ndarray, pixel: float, p: fm.Particle) -> np.ndarray:
    """The particle centred at pixel ``BOX // 2``, CTF-filtered, contrast-inverted."""
    projection = fm.project_map(template, p.phi, p.theta, p.psi)
    origin = np.roll(projection, (-(BOX // 2), -(BOX // 2)), axis=(0, 1))
    ctf = MICROSCOPE.ctf((BOX, BOX), pixel, p.defocus)
    filtered = np.fft.irfft2(np.fft.rfft2(origin) * ctf, s=(BOX, BOX))
    return -np.roll(filtered, (BOX // 2, BOX // 2), axis=(0, 1))


def _offset(box: np.ndarray, reference: np.ndarray, reach: int = 4) -> np.ndarray:
    """``(dx, dy)`` pixels by which ``box`` holds ``reference`` moved (sub-pixel)."""
    xc = np.fft.irfft2(
        np.fft.rfft2(box) * np.conj(np.fft.rfft2(reference)), s=box.shape
    )
    xc = np.fft.fftshift(xc)
    c = BOX // 2
    window = xc[c - reach : c + reach + 1, c - reach : c + reach + 1]
    iy, ix = np.unravel_index(int(window.argmax()), window.shape)
    iy, ix = iy + c - reach, ix + c - reach

    def vertex(m: float, z: float, p: float) -> float:
        return 0.5 * (m - p) / (m - 2.0 * z + p)

    dy = vertex(xc[iy - 1, ix], xc[iy, ix], xc[iy + 1, ix])
    dx = vertex(xc[iy, ix - 1], xc[iy, ix], xc[iy, ix + 1])
    return np.array([ix - c + dx, iy - c + dy])


def _nearest(truth: tuple[fm.Particle, ...], x: float, y: float) -> fm.Particle:
    return min(truth, key=lambda p: np.hypot(p.x - x, p.y - y))


@pytest.mark.parametrize("step", ["result", "refined"])
def test_extraction_gives_one_centred_box_per_pick(pipeline, step):
    work, truth = pipeline["work"], pipeline["truth"]
    table = read_particles(work / step / "particles.star")
    coordinates = work / step / coordinate_file_name(MICROGRAPH)
    assert coordinates.name == "micrograph" + SUFFIX
    blocks = _extract(work, work / step, f"Extract_{step}")
    extracted = blocks["particles"]

    assert len(table) >= N_PARTICLES - 2  # the search found the particles
    assert len(extracted) == len(table)  # one box per pick, no bogus optics row
    rounded = np.floor(table[["x", "y"]].to_numpy() + 0.5)
    np.testing.assert_array_equal(
        extracted[["rlnCoordinateX", "rlnCoordinateY"]].to_numpy(), rounded
    )
    # The angles travel through RELION's extraction with the coordinates.
    np.testing.assert_allclose(
        extracted[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy(),
        table[["phi", "theta", "psi"]].to_numpy(),
        atol=1e-4,
    )
    boxes = _stack(work, extracted["rlnImageName"])
    assert boxes.shape == (len(table), BOX, BOX)
    measured, expected = [], []
    for box, (x, y) in zip(boxes, rounded, strict=True):
        p = _nearest(truth, x, y)
        assert np.hypot(p.x - x, p.y - y) < 1.5  # every pick is a particle
        reference = _expected_box(pipeline["template"], pipeline["pixel"], p)
        measured.append(_offset(box, reference))
        expected.append([p.x - x, p.y - y])
    measured, expected = np.asarray(measured), np.asarray(expected)
    print(f"{step}: {len(boxes)} boxes, particle offsets from the box centre (px):")
    print(np.round(measured, 2).tolist(), "max", float(np.abs(measured).max()))
    print("max deviation from the rounded coordinate's prediction (px):", end=" ")
    print(float(np.abs(measured - expected).max()))
    assert float(np.abs(measured).max()) < 1.0  # centred within 1 px
    # RELION's convention, to a fraction of a pixel: the rounded coordinate is
    # box pixel BOX // 2 (a 1-based reading would put every particle 1 px off).
    np.testing.assert_allclose(measured, expected, atol=0.3)


def _reconstruct(
    work: Path, optics: pd.DataFrame, particles: pd.DataFrame, name: str
) -> np.ndarray:
    starfile.write(
        {"optics": optics, "particles": particles},
        work / f"{name}.star",
        overwrite=True,
    )
    _run(
        [
            "relion_reconstruct",
            "--i",
            f"{name}.star",
            "--o",
            f"{name}.mrc",
            "--ctf",
            "--sym",
            "O",
        ],
        work,
    )
    return mrcfile.read(work / f"{name}.mrc").astype(np.float64)


def _angle_dependent_part(volume: np.ndarray, pixel: float) -> np.ndarray:
    """Low-pass to RESOLUTION, minus the spherical average, inside a sphere.

    Apoferritin is a near-spherical shell that any reconstruction of centred
    particles reproduces whatever their angles; what is left after removing the
    average over each spherical shell depends on the angles.
    """
    k = np.sqrt(sum(f**2 for f in np.meshgrid(*[np.fft.fftfreq(BOX, pixel)] * 3)))
    smooth = np.fft.ifftn(np.fft.fftn(volume) * (k <= 1.0 / RESOLUTION)).real
    z, y, x = np.indices(volume.shape) - BOX // 2
    radius = np.rint(np.sqrt(x**2 + y**2 + z**2)).astype(np.int64)
    profile = np.bincount(radius.ravel(), smooth.ravel()) / np.bincount(radius.ravel())
    return np.where(radius <= 24, smooth - profile[radius], 0.0)


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sum(a * b) / np.sqrt(np.sum(a * a) * np.sum(b * b)))


def test_reconstruction_with_twodtm_poses_matches_the_template(pipeline):
    work, pixel = pipeline["work"], pipeline["pixel"]
    refined = starfile.read(work / "refined" / "particles.star", always_dict=True)
    blocks = _extract(work, work / "refined", "Extract_reconstruct")
    particles = blocks["particles"].copy()
    # twodtm's CTF: its per-particle defocus, astigmatism and angle. The angles
    # are twodtm's too, carried through the extraction by the coordinate files.
    for column in ("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle"):
        particles[column] = refined["particles"][column].to_numpy()
    shuffled = particles.copy()
    for column in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"):
        shuffled[column] = np.roll(particles[column].to_numpy(), 1)
    # Control: the comparison sees the CTF (5000 A off: phases wrong below 10 A).
    defocus_off = particles.assign(
        rlnDefocusU=particles["rlnDefocusU"] - 5000.0,
        rlnDefocusV=particles["rlnDefocusV"] - 5000.0,
    )

    reference = _angle_dependent_part(pipeline["template"], pixel)
    scores = {
        name: _correlation(
            _angle_dependent_part(
                _reconstruct(work, blocks["optics"], table, name), pixel
            ),
            reference,
        )
        for name, table in (
            ("twodtm", particles),
            ("shuffled", shuffled),
            ("defocus_off", defocus_off),
        )
    }
    print(f"{len(particles)} particles; map vs template at {RESOLUTION} A:", scores)
    # Positive: twodtm's poses and CTF, RELION's sign convention, inverted contrast.
    assert scores["twodtm"] > 0.6
    assert scores["shuffled"] < 0.35
    assert scores["twodtm"] - scores["shuffled"] > 0.4
    assert scores["twodtm"] - scores["defocus_off"] > 0.3


def test_coordinate_list_names_the_coordinate_file(pipeline):
    # RELION 4/5 (--coord_list) read the first block and map each
    # rlnMicrographName, exactly as in the micrographs STAR, to its coordinates.
    work = pipeline["work"]
    for step in ("result", "refined"):
        listing = next(
            iter(
                starfile.read(work / step / COORDINATE_LIST, always_dict=True).values()
            )
        )
        names = dict(
            zip(
                listing["rlnMicrographName"],
                listing["rlnMicrographCoordinates"],
                strict=True,
            )
        )
        micrographs = starfile.read(work / "micrographs.star", always_dict=True)
        [name] = micrographs["micrographs"]["rlnMicrographName"]
        assert Path(names[name]) == work / step / ("micrograph" + SUFFIX)
        assert Path(names[name]).is_file()
