"""Batch mode: micrograph lists from globs and RELION STAR files, skip what is done."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import starfile
from typer.testing import CliRunner

from _scale_data import small_config, write_inputs
from twodtm.cli import app
from twodtm.config import MatchConfig, dump_yaml, parse_config
from twodtm.errors import ConfigError, InputFileError
from twodtm.io.results import MatchResult
from twodtm.programs.batch import (
    SUMMARY_NAME,
    MicrographEntry,
    list_micrographs,
    micrograph_config,
    read_star_micrographs,
    result_directories,
    run_batch,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _tiny_config(root: Path) -> MatchConfig:
    """88 orientations x 3 defoci on 64 x 64 px."""
    data = small_config(root, out_of_plane_step=45.0).model_dump(mode="json")
    data["orientation_search"]["in_plane_step"] = 90.0
    data["compute"]["chunk_size"] = 44
    return parse_config(MatchConfig, data)


def _write_star(root: Path, names: list[str], pixel_2: float = 1.25) -> Path:
    """A RELION 3.1 micrographs STAR: two optics groups, per-micrograph CTF."""
    optics = pd.DataFrame(
        {
            "rlnOpticsGroup": [1, 2],
            "rlnMicrographPixelSize": [1.0, pixel_2],
            "rlnVoltage": [300.0, 200.0],
            "rlnSphericalAberration": [2.7, 2.0],
            "rlnAmplitudeContrast": [0.1, 0.07],
        }
    )
    micrographs = pd.DataFrame(
        {
            "rlnMicrographName": names,
            "rlnOpticsGroup": [1, 2, 1][: len(names)],
            "rlnDefocusU": [9000.0, 12000.0, 15000.0][: len(names)],
            "rlnDefocusV": [8500.0, 11800.0, 14000.0][: len(names)],
            "rlnDefocusAngle": [10.0, 20.0, 30.0][: len(names)],
        }
    )
    path = root / "micrographs_ctf.star"
    starfile.write({"optics": optics, "micrographs": micrographs}, path)
    return path


def test_star_gives_per_micrograph_ctf_and_optics_group(tmp_path: Path) -> None:
    star = _write_star(tmp_path, ["Mics/a.mrc", "Mics/b.mrc", "/abs/c.mrc"])
    entries = read_star_micrographs(star)
    assert [e.path for e in entries] == [
        tmp_path / "Mics/a.mrc",  # relative names: beside the STAR file if not in cwd
        tmp_path / "Mics/b.mrc",
        Path("/abs/c.mrc"),
    ]
    assert entries[1].optics == {
        "pixel_size": 1.25,
        "voltage": 200.0,
        "spherical_aberration": 2.0,
        "amplitude_contrast": 0.07,
        "defocus_u": 12000.0,
        "defocus_v": 11800.0,
        "astigmatism_angle": 20.0,
    }
    assert entries[2].optics["pixel_size"] == 1.0
    config = micrograph_config(_tiny_config(tmp_path), entries[1])
    assert config.micrograph == str(tmp_path / "Mics/b.mrc")
    assert config.optics.defocus_u == 12000.0
    assert config.optics.voltage == 200.0


def test_relion_30_single_block_star(tmp_path: Path) -> None:
    table = pd.DataFrame(
        {
            "rlnMicrographName": ["x.mrc"],
            "rlnDefocusU": [7000.0],
            "rlnDefocusV": [6900.0],
            "rlnDefocusAngle": [12.0],
        }
    )
    starfile.write(table, tmp_path / "mics.star")
    (entry,) = list_micrographs(str(tmp_path / "mics.star"))
    assert entry.optics == {
        "defocus_u": 7000.0,
        "defocus_v": 6900.0,
        "astigmatism_angle": 12.0,
    }


def test_glob_is_sorted_and_empty_match_is_an_error(tmp_path: Path) -> None:
    for name in ("m2", "m10", "m1"):
        write_inputs(tmp_path, name, size=16)
    found = list_micrographs(str(tmp_path / "m*.mrc"))
    assert [e.path.name for e in found] == ["m1.mrc", "m10.mrc", "m2.mrc"]
    with pytest.raises(InputFileError, match="matches no micrograph"):
        list_micrographs(str(tmp_path / "none*.mrc"))
    with pytest.raises(InputFileError, match="rlnMicrographName"):
        starfile.write(pd.DataFrame({"rlnX": [1.0]}), tmp_path / "bad.star")
        list_micrographs(str(tmp_path / "bad.star"))


def test_repeated_file_names_are_refused(tmp_path: Path) -> None:
    entries = [MicrographEntry(Path("a/x.mrc")), MicrographEntry(Path("b/x.mrc"))]
    with pytest.raises(ConfigError, match="x"):
        result_directories(entries, tmp_path)


def _summary(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_batch_runs_each_micrograph_and_skips_finished(tmp_path: Path) -> None:
    config = _tiny_config(tmp_path)
    names = []
    for k in range(3):
        write_inputs(tmp_path / "Mics", f"mic{k}", seed=k)
        names.append(f"Mics/mic{k}.mrc")
    entries = read_star_micrographs(_write_star(tmp_path, names, pixel_2=1.0))
    out = tmp_path / "results"

    first = run_batch(config, entries[:1], out)
    assert [r["status"] for r in first] == ["searched"]
    stamp = (out / "mic0" / "result.json").stat().st_mtime_ns

    rows = run_batch(config, entries, out)
    assert [r["status"] for r in rows] == ["skipped", "searched", "searched"]
    assert (out / "mic0" / "result.json").stat().st_mtime_ns == stamp
    table = _summary(out / SUMMARY_NAME)
    assert [r["status"] for r in table] == ["skipped", "searched", "searched"]
    assert [float(r["defocus_u"]) for r in table] == [9000.0, 12000.0, 15000.0]

    offsets = np.array(config.defocus_search.offsets())
    for k, entry in enumerate(entries):
        result = MatchResult.load(out / f"mic{k}")
        mean = 0.5 * (entry.optics["defocus_u"] + entry.optics["defocus_v"])
        assert np.isin(
            result.maps["defocus"], (mean + offsets).astype(np.float32)
        ).all()
        assert result.pixel_size == entry.optics["pixel_size"]
        assert float(table[k]["max_zscore"]) == pytest.approx(
            result.maps["zscore"].max()
        )


def test_cli_batch_with_glob_reports_and_skips(tmp_path: Path) -> None:
    config = _tiny_config(tmp_path)
    for k in range(2):
        write_inputs(tmp_path / "Mics", f"g{k}", seed=10 + k)
    (tmp_path / "match.yaml").write_text(dump_yaml(config))
    args = [
        "match",
        str(tmp_path / "match.yaml"),
        "--micrographs",
        str(tmp_path / "Mics" / "g*.mrc"),
        "--output",
        str(tmp_path / "out"),
    ]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "2 searched, 0 skipped" in first.output
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, again.output
    assert "0 searched, 2 skipped" in again.output


def test_unreadable_micrograph_is_reported_and_others_go_on(tmp_path: Path) -> None:
    config = _tiny_config(tmp_path)
    write_inputs(tmp_path / "Mics", "ok", seed=3)
    entries = [
        MicrographEntry(tmp_path / "gone.mrc"),
        MicrographEntry(tmp_path / "Mics/ok.mrc"),
    ]
    rows = run_batch(config, entries, tmp_path / "out")
    assert [r["status"] for r in rows] == ["failed", "searched"]
    assert "gone.mrc" in rows[0]["message"]
    assert (tmp_path / "out" / "ok" / "result.json").exists()
