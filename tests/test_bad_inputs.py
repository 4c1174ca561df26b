"""Every kind of bad input to ``twodtm match`` ends in a typed error, never a crash.

Also: random configs and random MRC headers (hypothesis) raise only typed errors,
the out-of-memory fallback gives bit-identical statistics, and Ctrl-C during a run
leaves no partial result.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from twodtm.config import MatchConfig, parse_config
from twodtm.ctf import Optics
from twodtm.errors import (
    BatchSizeWarning,
    ConfigError,
    DeviceError,
    InputDataError,
    InputFileError,
    OutputExistsError,
)
from twodtm.io.mrc import MrcData, read_mrc, write_mrc
from twodtm.match import load_inputs, match_template, run_match
from twodtm.memory import BatchFallback, is_out_of_memory
from twodtm.preprocess import FilterSettings, prepare_image, prepare_template
from twodtm.search import executors
from twodtm.search.engine import build_search_inputs
from twodtm.search.executors import InProcessExecutor, SearchTask, merge_all
from twodtm.search.space import SearchSpace

RNG = np.random.default_rng(11)
MICROGRAPH = RNG.normal(size=(64, 64)).astype(np.float32)


def _gaussian(size: int, pixel_size: float = 1.0) -> np.ndarray:
    axis = (np.arange(size) - size // 2) * pixel_size
    zz, yy, xx = np.meshgrid(axis, axis, axis, indexing="ij")
    r2 = (xx - 2.0) ** 2 + yy**2 + (zz + 1.0) ** 2
    return np.exp(-r2 / 8.0).astype(np.float32)


def _config(tmp_path: Path, **sections: dict | str) -> dict:
    data: dict = {
        "micrograph": str(tmp_path / "mic.mrc"),
        "template": str(tmp_path / "tmpl.mrc"),
        "optics": {"pixel_size": 1.0, "defocus_u": 10000.0, "defocus_v": 10000.0},
        "defocus_search": {"enabled": False},
        "orientation_search": {"in_plane_step": 90.0, "out_of_plane_step": 90.0},
        "output": {"directory": str(tmp_path / "result")},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return data


def _inputs(tmp_path: Path, micrograph=MICROGRAPH, template=None, px=1.0) -> None:
    write_mrc(tmp_path / "mic.mrc", micrograph, 1.0)
    write_mrc(
        tmp_path / "tmpl.mrc", _gaussian(16) if template is None else template, px
    )


def _load(tmp_path: Path, **sections: dict | str):
    return load_inputs(parse_config(MatchConfig, _config(tmp_path, **sections)))


# --- files and data ------------------------------------------------------------


def test_good_inputs_load(tmp_path):
    _inputs(tmp_path)
    inputs = _load(tmp_path)
    assert inputs.template.shape == (16, 16, 16)
    assert inputs.template_pixel_size == 1.0


def test_missing_micrograph(tmp_path):
    _inputs(tmp_path)
    (tmp_path / "mic.mrc").unlink()
    with pytest.raises(InputFileError, match="mic.mrc: file not found"):
        _load(tmp_path)


def test_truncated_template(tmp_path):
    _inputs(tmp_path)
    raw = (tmp_path / "tmpl.mrc").read_bytes()
    (tmp_path / "tmpl.mrc").write_bytes(raw[: len(raw) - 100])
    with pytest.raises(InputFileError, match="tmpl.mrc: truncated"):
        _load(tmp_path)


def test_bad_header(tmp_path):
    _inputs(tmp_path)
    raw = bytearray((tmp_path / "mic.mrc").read_bytes())
    raw[208:212] = b"JUNK"
    (tmp_path / "mic.mrc").write_bytes(bytes(raw))
    with pytest.raises(InputFileError, match="mic.mrc: not a valid MRC header"):
        _load(tmp_path)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # mrcfile's header statistics
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_nan_or_inf_pixels(tmp_path, value):
    bad = MICROGRAPH.copy()
    bad[5, 6] = value
    _inputs(tmp_path, micrograph=bad)
    with pytest.raises(InputDataError, match="mic.mrc: 1 NaN or Inf"):
        _load(tmp_path)


def test_constant_template(tmp_path):
    _inputs(tmp_path, template=np.zeros((16, 16, 16), dtype=np.float32))
    with pytest.raises(InputDataError, match="tmpl.mrc: every value is 0.0"):
        _load(tmp_path)


def test_non_cubic_template_refused_or_padded(tmp_path):
    _inputs(tmp_path, template=_gaussian(16)[:12])
    with pytest.raises(InputDataError, match="pad_template_to_cube"):
        _load(tmp_path)
    padded = _load(tmp_path, preprocessing={"pad_template_to_cube": True})
    assert padded.template.shape == (16, 16, 16)


def test_odd_template_is_padded_to_even_with_its_centre(tmp_path):
    odd = _gaussian(15)
    _inputs(tmp_path, template=odd)
    loaded = _load(tmp_path).template
    assert loaded.shape == (16, 16, 16)
    np.testing.assert_array_equal(loaded[1:, 1:, 1:], odd)


def test_pixel_size_mismatch_refused_or_resampled(tmp_path):
    _inputs(tmp_path, template=_gaussian(16, 1.5), px=1.5)
    with pytest.raises(InputDataError, match="allow_template_resampling"):
        _load(tmp_path)
    loaded = _load(tmp_path, preprocessing={"allow_template_resampling": True})
    assert loaded.template.shape == (24, 24, 24)
    assert loaded.template_pixel_size == pytest.approx(1.0)


def test_template_larger_than_micrograph(tmp_path):
    _inputs(tmp_path, micrograph=MICROGRAPH[:40, :12], template=_gaussian(16))
    with pytest.raises(InputDataError, match="larger than the micrograph"):
        _load(tmp_path)


def test_swapped_inputs(tmp_path):
    _inputs(tmp_path)
    swapped = {"micrograph": str(tmp_path / "tmpl.mrc")}
    with pytest.raises(InputDataError, match="expected a 2D micrograph"):
        _load(tmp_path, **swapped)


# --- configuration ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("sections", "field"),
    [
        ({"defocus_search": {"enabled": True, "step": -100.0}}, "step must be > 0"),
        ({"defocus_search": {"enabled": True, "step": 0.0}}, "step must be > 0"),
        ({"defocus_search": {"enabled": True, "min": 500.0, "max": -500.0}}, "swap"),
        ({"defocus_search": {"enabled": True, "step": 0.001}}, "coarser step"),
        ({"defocus_search": {"enabled": True, "min": -20000.0}}, "defocus_search.min"),
        ({"optics": {"defocus_u": -9000.0}}, "underfocus positive"),
        ({"orientation_search": {"in_plane_step": 0.0}}, "in_plane_step"),
        ({"orientation_search": {"out_of_plane_step": 0.001}}, "coarser steps"),
        ({"orientation_search": {"symmetry": "X7"}}, "symmetry"),
        ({"optics": {"pixel_size": 0.0}}, "optics.pixel_size"),
        ({"optics": {"pixel_size": 1060.0}}, "in Angstrom"),
        ({"optics": {"voltage": 300000.0}}, "optics.voltage"),
        ({"optics": {"pixel_size": float("nan")}}, "optics.pixel_size"),
        ({"pixel_size_search": {"enabled": True, "min": -2.0}}, "pixel_size_search"),
        (
            {
                "preprocessing": {
                    "bandpass_low_resolution": 5.0,
                    "bandpass_high_resolution": 50.0,
                }
            },
            "swap them",
        ),
        ({"preprocesing": {"whitening": False}}, "preprocesing: unknown key"),
        ({"compute": {"batch_size": 0}}, "compute.batch_size"),
    ],
)
def test_bad_config_values_name_the_field(tmp_path, sections, field):
    with pytest.raises(ConfigError, match=field):
        parse_config(MatchConfig, _config(tmp_path, **sections))


@pytest.mark.parametrize("device", ["cuda:7", "tpu", "gpu0"])
def test_device_that_does_not_exist(tmp_path, device):
    if device == "cuda:7" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has 8 GPUs")
    _inputs(tmp_path)
    config = parse_config(MatchConfig, _config(tmp_path, compute={"devices": device}))
    with pytest.raises(DeviceError, match=repr(device)):
        match_template(config)


def test_existing_result_is_not_overwritten(tmp_path):
    _inputs(tmp_path)
    (tmp_path / "result").mkdir()
    (tmp_path / "result" / "result.json").write_text("{}")
    config = parse_config(MatchConfig, _config(tmp_path))
    with pytest.raises(OutputExistsError, match="--overwrite"):
        run_match(config)
    assert (tmp_path / "result" / "result.json").read_text() == "{}"


# --- out of memory ---------------------------------------------------------------


def test_fallback_halves_until_it_fits_and_warns_once():
    calls, progress = [], []

    def work(size: int, hook) -> int:
        calls.append(size)
        hook(size)  # progress of a partial attempt is taken back on failure
        if size > 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8 GiB")
        return size

    fallback = BatchFallback()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert fallback.run(work, 16, progress.append) == 2
        assert fallback.run(work, 16, progress.append) == 2  # starts at what fitted
    assert calls == [16, 8, 4, 2, 2]
    assert sum(progress) == 4
    assert [w.category for w in caught] == [BatchSizeWarning]
    assert "batch size 16" in str(caught[0].message)


def test_fallback_passes_other_errors_and_gives_up_at_one():
    def broken(size: int, hook) -> None:
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    with pytest.raises(RuntimeError, match="illegal memory access"):
        BatchFallback(warn=lambda m: None).run(broken, 8)

    def never_fits(size: int, hook) -> None:
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory")

    with pytest.raises(DeviceError, match="batch of one"):
        BatchFallback(warn=lambda m: None).run(never_fits, 4)
    assert is_out_of_memory(MemoryError())
    assert not is_out_of_memory(ValueError("out of memory"))


def _tiny_task(batch_size: int) -> SearchTask:
    image = prepare_image(torch.from_numpy(MICROGRAPH), 1.0, FilterSettings(), False)
    angles = torch.tensor(
        [
            [0.0, 0.0, 0.0],
            [30.0, 40.0, 50.0],
            [90.0, 90.0, 10.0],
            [200.0, 120.0, 300.0],
            [10.0, 170.0, 80.0],
        ],
        dtype=torch.float64,
    )
    space = SearchSpace(
        euler_angles=angles,
        defocus_offsets=torch.tensor([-300.0, 0.0], dtype=torch.float64),
        pixel_sizes=torch.tensor([1.0], dtype=torch.float64),
    )
    optics = Optics(pixel_size=1.0, defocus_u=10000.0, defocus_v=10000.0)
    template = prepare_template(torch.from_numpy(_gaussian(16)))
    inputs = build_search_inputs(template, 16, image, optics, space)
    return SearchTask(inputs, angles, image.shape, batch_size)


def test_out_of_memory_mid_chunk_gives_identical_statistics(monkeypatch):
    task = _tiny_task(batch_size=4)
    chunks = SearchSpace(task.euler_angles, torch.zeros(2), torch.ones(1)).chunks(5)
    expected = merge_all(InProcessExecutor().run(task, chunks), task.crop)
    real = executors.search_orientations

    def small_memory(inputs, rotations, first, stats, crop=None):
        real(inputs, rotations, first, stats, crop=crop)  # statistics half updated
        if rotations.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory.")

    monkeypatch.setattr(executors, "search_orientations", small_memory)
    with pytest.warns(BatchSizeWarning, match="continuing with 2"):
        got = merge_all(InProcessExecutor().run(task, chunks), task.crop)
    assert got.count == expected.count
    assert torch.equal(got.mip, expected.mip)
    assert torch.equal(got.best_index, expected.best_index)
    assert torch.equal(got.mean_std()[1], expected.mean_std()[1])


# --- random configs and headers --------------------------------------------------

_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)
_FIELDS = [
    ("micrograph",),
    ("template",),
    ("optics",),
    ("optics", "pixel_size"),
    ("optics", "defocus_u"),
    ("optics", "voltage"),
    ("defocus_search",),
    ("defocus_search", "min"),
    ("defocus_search", "step"),
    ("defocus_search", "enabled"),
    ("pixel_size_search", "min"),
    ("orientation_search", "symmetry"),
    ("orientation_search", "in_plane_step"),
    ("orientation_search", "base_grid"),
    ("preprocessing", "template_padding"),
    ("preprocessing", "bandpass_low_resolution"),
    ("compute", "devices"),
    ("compute", "batch_size"),
    ("output", "overwrite"),
    ("unknown_key",),
    ("optics", "typo"),
]


def _set(data: dict, path: tuple[str, ...], value: object) -> dict:
    if len(path) == 1:
        return {**data, path[0]: value}
    inner = data.get(path[0])
    inner = inner if isinstance(inner, dict) else {}
    return {**data, path[0]: _set(inner, path[1:], value)}


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    changes=st.lists(st.tuples(st.sampled_from(_FIELDS), _VALUES), max_size=4),
    symmetry=st.text(max_size=5),
)
def test_random_configs_raise_only_config_errors(changes, symmetry):
    data = _config(Path("/nonexistent"), orientation_search={"symmetry": symmetry})
    for path, value in changes:
        data = _set(data, path, value)
    try:
        config = parse_config(MatchConfig, data)
    except ConfigError:
        return
    assert len(config.defocus_search.offsets()) <= 10_000
    assert config.optics.pixel_size > 0


@settings(max_examples=50, deadline=None)
@given(data=_VALUES | st.binary(max_size=20))
def test_random_documents_raise_only_config_errors(data):
    with pytest.raises(ConfigError):
        parse_config(MatchConfig, data)


def _mrc_bytes(tmp: Path, mode_dtype: str, shape: tuple[int, ...]) -> bytes:
    array = (np.arange(np.prod(shape)) % 7).astype(mode_dtype).reshape(shape)
    with mrcfile.new(tmp, overwrite=True) as mrc:
        mrc.set_data(array)
        mrc.voxel_size = 1.5
    return tmp.read_bytes()


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    dtype=st.sampled_from(["int8", "int16", "float32", "uint16", "float16"]),
    shape=st.sampled_from([(4, 5), (3, 4, 5), (1, 6, 6)]),
    patches=st.lists(
        st.tuples(st.integers(0, 255), st.integers(-(2**31), 2**31 - 1)), max_size=4
    ),
    cut=st.none() | st.integers(0, 1400),
)
def test_random_mrc_headers_raise_only_input_file_errors(
    tmp_path, dtype, shape, patches, cut
):
    raw = bytearray(_mrc_bytes(tmp_path / "base.mrc", dtype, shape))
    for word, value in patches:
        raw[4 * word : 4 * word + 4] = np.int32(value).tobytes()
    file = tmp_path / "random.mrc"
    file.write_bytes(bytes(raw if cut is None else raw[:cut]))
    try:
        result = read_mrc(file)
    except InputFileError as err:
        assert str(file) in str(err)
        return
    assert isinstance(result, MrcData)
    assert result.data.dtype == np.float32
    assert result.pixel_size >= 0.0


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(blob=st.binary(max_size=2048))
def test_random_bytes_raise_input_file_errors(tmp_path, blob):
    file = tmp_path / "noise.mrc"
    file.write_bytes(blob)
    with pytest.raises(InputFileError):
        read_mrc(file)


# --- Ctrl-C ----------------------------------------------------------------------

_RUNNER = """
import sys
from twodtm.cli import main
print("ready", flush=True)
sys.argv = ["twodtm", "match", sys.argv[1]]
main()
"""


def test_ctrl_c_leaves_no_partial_result(tmp_path):
    rng = np.random.default_rng(5)
    _inputs(tmp_path, micrograph=rng.normal(size=(256, 256)).astype(np.float32))
    slow = {"in_plane_step": 3.0, "out_of_plane_step": 3.0}  # minutes of work
    config = _config(tmp_path, orientation_search=slow)
    (tmp_path / "match.yaml").write_text(yaml.safe_dump(config))
    proc = subprocess.Popen(
        [sys.executable, "-c", _RUNNER, str(tmp_path / "match.yaml")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(3.0)  # config, inputs and preparation; then the search runs
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr
    assert "Traceback" not in stderr
    result = tmp_path / "result"
    left = sorted(p.name for p in result.rglob("*")) if result.exists() else []
    assert "result.json" not in left
    assert not [n for n in left if n.endswith(".tmp")]
    assert not [n for n in left if n.endswith(".mrc") and "checkpoint" not in n]
