"""``twodtm run``: a 3-micrograph dataset from a RELION STAR to one particles STAR.

Micrographs of the shipped apoferritin (64 px at 2.5 A) are simulated in two
optics groups (300 kV and 200 kV) with their own defocus; the third micrograph
is a corrupt file. The run must finish the other two, report the failure, write
the combined STAR with both groups, skip everything when run again, and resume
an interrupted run to the same particles as an uninterrupted one.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import starfile
import yaml
from typer.testing import CliRunner

from twodtm import model_template
from twodtm.cli import app
from twodtm.cli.config_cmd import example_text
from twodtm.config import RunConfig, dump_yaml, parse_config
from twodtm.ctf import Optics
from twodtm.io.mrc import write_mrc
from twodtm.programs import _run_stages
from twodtm.programs import run as run_module
from twodtm.programs.demo import demo_volume
from twodtm.programs.run import run_dataset
from twodtm.simulate import SimulationParams, simulate_micrograph

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PIXEL = 2.5
# (name, optics group, voltage, defocus U, V, angle); mic2 is corrupt
MICROGRAPHS = [
    ("mic0", 1, 300.0, 15200.0, 14800.0, 30.0),
    ("mic1", 2, 200.0, 14000.0, 13700.0, 10.0),
    ("mic2", 1, 300.0, 15000.0, 14600.0, 20.0),
]
GROUPS = {1: (300.0, 2.7, 0.07), 2: (200.0, 2.0, 0.1)}


def _write_dataset(root: Path) -> Path:
    """Two simulated micrographs, a corrupt one, the template and the STAR."""
    volume, _ = demo_volume()
    (root / "Micrographs").mkdir(parents=True)
    for k, (name, group, _kv, du, dv, angle) in enumerate(MICROGRAPHS):
        path = root / "Micrographs" / f"{name}.mrc"
        if name == "mic2":
            path.write_bytes(b"not an MRC file" * 10)
            continue
        kv, cs, amplitude = GROUPS[group]
        optics = Optics(PIXEL, kv, cs, amplitude, du, dv, angle)
        params = SimulationParams(
            (192, 192), 3, dose=60.0, seed=3 - k, min_separation=48
        )
        sim = simulate_micrograph(volume, optics, params)
        write_mrc(path, sim.micrograph, PIXEL)
    write_mrc(root / "template.mrc", volume.numpy(), PIXEL)
    optics_block = pd.DataFrame(
        {
            "rlnOpticsGroupName": ["krios", "talos"],
            "rlnOpticsGroup": [1, 2],
            "rlnMicrographPixelSize": [PIXEL, PIXEL],
            "rlnVoltage": [GROUPS[1][0], GROUPS[2][0]],
            "rlnSphericalAberration": [GROUPS[1][1], GROUPS[2][1]],
            "rlnAmplitudeContrast": [GROUPS[1][2], GROUPS[2][2]],
        }
    )
    micrographs = pd.DataFrame(
        {
            "rlnMicrographName": [f"Micrographs/{m[0]}.mrc" for m in MICROGRAPHS],
            "rlnOpticsGroup": [m[1] for m in MICROGRAPHS],
            "rlnDefocusU": [m[3] for m in MICROGRAPHS],
            "rlnDefocusV": [m[4] for m in MICROGRAPHS],
            "rlnDefocusAngle": [m[5] for m in MICROGRAPHS],
        }
    )
    star = root / "micrographs_ctf.star"
    starfile.write({"optics": optics_block, "micrographs": micrographs}, star)
    return star


def _config(root: Path, output: str = "run") -> RunConfig:
    data = {
        "micrographs": str(root / "micrographs_ctf.star"),
        "template": str(root / "template.mrc"),
        "defocus_search": {"enabled": False},
        "preprocessing": {"bandpass_high_resolution": 10.0},
        "orientation_search": {
            "in_plane_step": 12.0,
            "out_of_plane_step": 12.0,
            "symmetry": "O",
        },
        "compute": {"batch_size": 8, "chunk_size": 48, "executor": "in-process"},
        "refine": {
            "search": {
                "orientation": {
                    "out_of_plane_range": 2.0,
                    "out_of_plane_step": 2.0,
                    "in_plane_range": 2.0,
                    "in_plane_step": 2.0,
                },
                "defocus": {"enabled": False},
                "iterations": 1,
            },
        },
        "output": {"directory": str(root / output)},
    }
    return parse_config(RunConfig, data)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("dataset")
    _write_dataset(root)
    return root


@pytest.fixture(scope="module")
def first_run(dataset: Path):
    return run_dataset(_config(dataset))


def _summary(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_failed_micrograph_is_reported_and_the_others_finish(dataset, first_run):
    out = dataset / "run"
    rows = {r["micrograph"]: r for r in _summary(out / "summary.csv")}
    assert [r["status"] for r in rows.values()] == ["done", "done", "failed"]
    bad = rows["Micrographs/mic2.mrc"]
    assert bad["failed_stage"] == "match"
    assert "mic2.mrc" in bad["message"]
    for name in ("mic0", "mic1"):
        row = rows[f"Micrographs/{name}.mrc"]
        assert (row["match"], row["peaks"], row["refine"]) == ("ran", "ran", "ran")
        refined = pd.read_csv(out / name / "refined" / "particles.csv")
        assert int(row["particles"]) == len(refined) > 0
        assert (out / name / "refined" / f"{name}_twodtm.star").is_file()
    assert float(rows["Micrographs/mic1.mrc"]["defocus_u"]) == 14000.0
    assert len(first_run.failed) == 1


def test_combined_star_holds_both_optics_groups(dataset, first_run):
    out = dataset / "run"
    blocks = starfile.read(out / "particles.star", always_dict=True)
    optics = blocks["optics"].set_index("rlnOpticsGroup")
    assert optics.loc[1, "rlnOpticsGroupName"] == "krios"
    assert optics.loc[2, "rlnOpticsGroupName"] == "talos"
    assert optics.loc[2, "rlnVoltage"] == 200.0
    assert optics.loc[2, "rlnSphericalAberration"] == 2.0
    particles = blocks["particles"]
    per_micrograph = particles.groupby("rlnMicrographName").size().to_dict()
    rows = {r["micrograph"]: r for r in first_run.rows}
    assert per_micrograph == {
        name: int(rows[name]["particles"])
        for name in ("Micrographs/mic0.mrc", "Micrographs/mic1.mrc")
    }
    groups = particles.groupby("rlnMicrographName")["rlnOpticsGroup"].unique()
    assert groups["Micrographs/mic0.mrc"].tolist() == [1]
    assert groups["Micrographs/mic1.mrc"].tolist() == [2]
    refined = pd.read_csv(out / "mic1" / "refined" / "particles.csv")
    mine = particles[particles["rlnMicrographName"] == "Micrographs/mic1.mrc"]
    np.testing.assert_allclose(mine["rlnCoordinateX"], refined["x"])
    np.testing.assert_allclose(mine["rlnDefocusU"], refined["defocus_u"])
    # the astigmatism of the micrograph's STAR row is carried to its particles
    np.testing.assert_allclose(mine["rlnDefocusU"] - mine["rlnDefocusV"], 300.0)
    assert (mine["rlnDefocusAngle"] == 10.0).all()
    for column in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnCoordinateY"):
        assert column in particles


def test_dataset_report_shows_particles_zscores_times_and_failures(dataset, first_run):
    out = dataset / "run"
    page = (out / "report.html").read_text(encoding="utf-8")
    assert page.count("data:image/png;base64,") == 3
    assert "FAILED Micrographs/mic2.mrc at match" in page
    record = json.loads((out / "report.json").read_text(encoding="utf-8"))
    drawn = record["pictures"]
    assert drawn["particles.png"]["particles"] == [
        int(r["particles"]) if r["status"] == "done" else 0 for r in first_run.rows
    ]
    histogram = drawn["zscores.png"]
    # every pixel of both finished micrographs is counted once
    assert sum(histogram["counts"]) == 2 * 192 * 192
    # the noise model over two micrographs sums to their pixels (all inside)
    assert sum(histogram["noise_counts"]) == pytest.approx(2 * 192 * 192, rel=1e-3)
    assert all(t > 4.0 for t in histogram["thresholds"])
    assert drawn["time.png"]["match_s"][0] > 0
    assert record["failed"][0]["failed_stage"] == "match"


def test_rerun_skips_every_stage(dataset, first_run, monkeypatch):
    out = dataset / "run"
    stamps = {
        p: p.stat().st_mtime_ns
        for name in ("mic0", "mic1")
        for p in (
            out / name / "result.json",
            out / name / "peaks.json",
            out / name / "refined" / "particles.csv",
        )
    }
    calls: list[str] = []

    def counting(stage):
        def wrapped(*args, **kwargs):
            calls.append(stage)
            return getattr(_run_stages, stage)(*args, **kwargs)

        return wrapped

    for stage in ("match_stage", "peaks_stage", "refine_stage"):
        monkeypatch.setattr(run_module, stage, counting(stage))
    again = run_dataset(_config(dataset))
    assert calls == ["match_stage"]  # the corrupt micrograph is tried again
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    rows = {r["micrograph"]: r for r in again.rows}
    mic0 = rows["Micrographs/mic0.mrc"]
    assert (mic0["match"], mic0["peaks"], mic0["refine"]) == ("skipped",) * 3
    # times of the run that did the work are kept
    assert mic0["match_s"] == pytest.approx(first_run.rows[0]["match_s"])
    pd.testing.assert_frame_equal(again.particles, first_run.particles)


def test_interrupted_run_resumes_to_the_same_particles(dataset, first_run, monkeypatch):
    real = _run_stages.peaks_stage

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(run_module, "peaks_stage", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_dataset(_config(dataset, "resumed"))
    out = dataset / "resumed"
    assert (out / "mic0" / "result.json").is_file()
    assert not (out / "mic0" / "peaks.json").exists()
    assert not (out / "mic1").exists()
    status = [r["status"] for r in _summary(out / "summary.csv")]
    assert status == ["interrupted", "pending", "pending"]

    monkeypatch.setattr(run_module, "peaks_stage", real)
    resumed = run_dataset(_config(dataset, "resumed"))
    assert resumed.rows[0]["match"] == "skipped"
    assert resumed.rows[0]["peaks"] == "ran"
    columns = [
        "micrograph",
        "optics_group",
        "x",
        "y",
        "phi",
        "theta",
        "psi",
        "defocus_u",
        "zscore",
    ]
    pd.testing.assert_frame_equal(
        resumed.particles[columns], first_run.particles[columns]
    )


def test_stale_picks_are_redone_after_a_new_search(dataset, first_run):
    out = dataset / "run"
    assert _run_stages.is_done(out / "mic0", "peaks")
    (out / "mic0" / "result.json").touch()
    assert not _run_stages.is_done(out / "mic0", "peaks")
    assert _run_stages.is_done(out / "mic0", "match")


def test_cli_run_exits_2_with_a_failure_and_logs_each_stage(dataset, first_run):
    path = dataset / "run.yaml"
    path.write_text(dump_yaml(_config(dataset, "cli")))
    result = CliRunner().invoke(app, ["run", str(path), "--set", "refine=null"])
    assert result.exit_code == 2, result.output
    log = result.output
    assert "run mic0 (1 of 3): match started" in log
    assert "run mic0 (1 of 3): peaks done in" in log
    assert "run mic2 (3 of 3): FAILED at match" in log
    assert "run: 2 of 3 micrographs finished (2 searched now), 1 failed" in log
    assert _summary(dataset / "cli" / "summary.csv")[0]["refine"] == "off"


def test_example_config_is_valid_and_a_glob_needs_optics():
    config = parse_config(RunConfig, yaml.safe_load(example_text("run")))
    assert config.refine is not None
    with pytest.raises(ValueError, match="optics.pixel_size"):
        RunConfig.model_validate({"micrographs": "Mics/*.mrc", "template": "t.mrc"})


@pytest.mark.skipif(
    shutil.which("relion_star_handler") is None,
    reason="RELION is not installed (relion_star_handler); apt-get install relion",
)
def test_relion_reads_the_combined_star(dataset, first_run, tmp_path):
    out = dataset / "run"
    done = subprocess.run(
        [
            "relion_star_handler",
            "--i",
            str(out / "particles.star"),
            "--o",
            str(tmp_path / "copy.star"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    copy = starfile.read(tmp_path / "copy.star", always_dict=True)
    assert len(copy["particles"]) == len(first_run.particles)
    assert sorted(copy["optics"]["rlnOpticsGroup"]) == [1, 2]
    # RELION 3.1's extraction of the whole dataset from the coordinate tree: every
    # particle of each finished micrograph, in its optics group.
    extracted = tmp_path / "extracted.star"
    done = subprocess.run(
        [
            "relion_preprocess",
            "--i",
            "micrographs_ctf.star",
            "--coord_dir",
            str(out / "coordinates") + "/",
            "--coord_suffix",
            "_twodtm.star",
            "--extract",
            "--extract_size",
            "64",
            "--part_star",
            str(extracted),
            "--part_dir",
            str(tmp_path / "Extract") + "/",
        ],
        cwd=dataset,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    blocks = starfile.read(extracted, always_dict=True)
    counts = blocks["particles"].groupby("rlnMicrographName").size().to_dict()
    expected = first_run.particles.groupby("micrograph").size().to_dict()
    assert counts == expected
    groups = blocks["particles"].groupby("rlnMicrographName")["rlnOpticsGroup"]
    assert groups.first().to_dict() == {
        "Micrographs/mic0.mrc": 1,
        "Micrographs/mic1.mrc": 2,
    }


def test_a_model_template_is_simulated_once_per_optics_not_per_micrograph(
    dataset, tmp_path, monkeypatch
):
    pdb = tmp_path / "model.pdb"
    atom = "ATOM  {:5d}  CA  GLY A{:4d}    {:8.3f}{:8.3f}{:8.3f}  1.00  0.00"
    lines = [atom.format(1, 1, 0.0, 0.0, 0.0), atom.format(2, 2, 30.0, 4.0, -5.0)]
    pdb.write_text("\n".join(f"{line}           C" for line in lines) + "\nEND\n")
    volume = demo_volume()[0].numpy()
    calls: list[float] = []

    def fake(path, settings, box):
        calls.append(settings.voltage)
        return volume

    monkeypatch.setattr(model_template, "simulate_model", fake)
    config = _config(dataset, "run_model").model_copy(update={"template": str(pdb)})
    preprocessing = config.preprocessing.model_copy(
        update={
            "model_template": config.preprocessing.model_template.model_copy(
                update={"box_size": 64}
            )
        }
    )
    outcome = run_dataset(config.model_copy(update={"preprocessing": preprocessing}))
    # Three micrographs in two optics groups (300 and 200 kV): two maps, made in
    # the run's folder and shared, where each micrograph simulated its own before.
    assert sorted(calls) == [200.0, 300.0]
    maps = sorted((dataset / "run_model" / "model-templates").glob("*.mrc"))
    assert len(maps) == 2
    assert [r["status"] for r in outcome.rows] == ["done", "done", "failed"]
    for name in ("mic0", "mic1"):
        used = json.loads((dataset / "run_model" / name / "result.json").read_text())
        assert Path(used["config"]["template"]).parent == maps[0].parent
