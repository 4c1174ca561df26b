"""The CLI turns every bad input into one red line and a non-zero exit status."""

from __future__ import annotations

import errno
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from pydantic import BaseModel

import twodtm.cli.match_cmd
import twodtm.programs.match
from twodtm.cli import main
from twodtm.cli.app import BAD_INPUT, FAILED, INTERRUPTED
from twodtm.errors import BatchSizeWarning
from twodtm.io.mrc import write_mrc


def _run(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["twodtm", *args])
    with pytest.raises(SystemExit) as info:
        main()
    code = info.value.code
    return (code if isinstance(code, int) else 1), capsys.readouterr().err


def _write_inputs(tmp_path: Path, template: np.ndarray | None = None) -> None:
    rng = np.random.default_rng(3)
    write_mrc(tmp_path / "mic.mrc", rng.normal(size=(48, 48)).astype(np.float32), 1.0)
    volume = rng.normal(size=(16, 16, 16)) if template is None else template
    write_mrc(tmp_path / "tmpl.mrc", volume.astype(np.float32), 1.0)


def _write_config(tmp_path: Path, **extra: object) -> Path:
    data = {
        "micrograph": "mic.mrc",
        "template": "tmpl.mrc",
        "optics": {"pixel_size": 1.0, "defocus_u": 9000.0, "defocus_v": 9000.0},
        "defocus_search": {"enabled": False},
        "orientation_search": {"in_plane_step": 90.0, "out_of_plane_step": 90.0},
        "output": {"directory": str(tmp_path / "out")},
        **extra,
    }
    file = tmp_path / "match.yaml"
    file.write_text(yaml.safe_dump(data))
    return file


def _one_error_line(stderr: str) -> str:
    """The error message; config errors add one indented line per field.

    The progress bar of ``twodtm match`` may have drawn its first frame already.
    """
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, stderr
    others = [line for line in lines if line not in errors]
    assert all(line.startswith(("  ", "match ")) for line in others), stderr
    return stderr[stderr.index("error: ") :]


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        (lambda p: p / "absent.yaml", "cannot read the config"),
        (lambda p: _write_config(p, colour="red"), "unknown key"),
        (
            lambda p: _write_config(p, template="absent.mrc"),
            "absent.mrc: file not found",
        ),
        (
            lambda p: _write_config(p, compute={"devices": "cuda:9"}),
            "device 'cuda:9' does not exist",
        ),
    ],
    ids=["missing-config", "unknown-key", "missing-template", "no-such-device"],
)
def test_bad_input_is_one_red_line_exit_2(
    tmp_path, monkeypatch, capsys, setup, expected
):
    _write_inputs(tmp_path)
    code, stderr = _run(monkeypatch, capsys, "match", str(setup(tmp_path)))
    assert code == BAD_INPUT
    assert expected in _one_error_line(stderr)


def test_invalid_yaml_value_names_the_field(tmp_path, monkeypatch, capsys):
    config = _write_config(tmp_path, orientation_search={"symmetry": "Q3"})
    code, stderr = _run(monkeypatch, capsys, "match", str(config))
    assert code == BAD_INPUT
    assert "orientation_search.symmetry" in stderr
    assert "Traceback" not in stderr


def test_non_cubic_template_names_the_flag(tmp_path, monkeypatch, capsys):
    _write_inputs(tmp_path, template=np.random.default_rng(4).normal(size=(12, 16, 16)))
    code, stderr = _run(monkeypatch, capsys, "match", str(_write_config(tmp_path)))
    assert code == BAD_INPUT
    assert "preprocessing.pad_template_to_cube: true" in _one_error_line(stderr)


def _patch_run_match(monkeypatch, replacement) -> None:
    """Replace ``run_match`` wherever the match command may look it up."""
    monkeypatch.setattr(twodtm.programs.match, "run_match", replacement)
    monkeypatch.setattr(twodtm.cli.match_cmd, "run_match", replacement, raising=False)


def _raising(error: BaseException):
    def run_match(*args: object, **kwargs: object) -> None:
        raise error

    return run_match


class _Model(BaseModel):
    count: int


def _validation_error() -> BaseException:
    try:
        _Model.model_validate({"count": "many"})
    except ValueError as err:
        return err
    raise AssertionError("pydantic accepted a bad value")


@pytest.mark.parametrize(
    ("error", "code", "expected"),
    [
        (KeyboardInterrupt(), INTERRUPTED, "interrupted (Ctrl-C)"),
        (
            OSError(errno.ENOSPC, "No space left on device", "/out/mip.mrc"),
            FAILED,
            "/out/mip.mrc: No space left on device",
        ),
        (
            torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9 GiB\nmore"),
            FAILED,
            "compute.batch_size",
        ),
        (_validation_error(), BAD_INPUT, "invalid value: count"),
    ],
    ids=["ctrl-c", "disk-full", "out-of-memory", "pydantic"],
)
def test_runtime_failures_end_cleanly(
    tmp_path, monkeypatch, capsys, error, code, expected
):
    _write_inputs(tmp_path)
    _patch_run_match(monkeypatch, _raising(error))
    got, stderr = _run(monkeypatch, capsys, "match", str(_write_config(tmp_path)))
    assert got == code
    assert expected in _one_error_line(stderr)


def test_a_bug_is_not_hidden(tmp_path, monkeypatch, capsys):
    _write_inputs(tmp_path)
    _patch_run_match(monkeypatch, _raising(ZeroDivisionError("bug")))
    monkeypatch.setattr(sys, "argv", ["twodtm", "match", str(_write_config(tmp_path))])
    with pytest.raises(ZeroDivisionError):
        main()


def test_warnings_print_as_one_yellow_line(tmp_path, monkeypatch, capsys):
    def run_match(*args: object, **kwargs: object) -> None:
        warnings.warn("batch size 64 does not fit", BatchSizeWarning, stacklevel=1)

    _write_inputs(tmp_path)
    _patch_run_match(monkeypatch, run_match)
    config = str(_write_config(tmp_path))
    # no search ran (run_match is replaced), so there is nothing to report on
    code, stderr = _run(monkeypatch, capsys, "match", config, "--no-report")
    assert code == 0
    assert stderr.strip() == "warning: batch size 64 does not fit"


def test_usage_errors_keep_clicks_message(monkeypatch, capsys):
    code, stderr = _run(monkeypatch, capsys, "match")
    assert code == 2
    assert "Missing argument" in stderr
    assert "Traceback" not in stderr
