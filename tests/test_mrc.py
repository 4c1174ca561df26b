"""MRC reading: real FEI files, round trips, and every kind of broken file."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from twodtm.errors import InputFileError
from twodtm.io.atomic import atomic_path
from twodtm.io.mrc import read_mrc, write_mrc

# The project's shared data sit beside the checkout (../shared/data); CI clones too.
DATA = Path(
    os.environ.get(
        "TWODTM_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"
    )
)
FEI_FILES = [
    # name, (rows, cols), pixel size in A, FEI extended-header bytes
    ("real_micrograph_epu2.9_falcon_0.667A.mrc", (4096, 4096), 0.66655, 909_312),
    ("real_micrograph_fei_eftem_0.854A.mrc", (3838, 3710), 0.85378, 786_432),
]


def _raw_uint16(file: Path, offset: int, shape: tuple[int, int]) -> np.ndarray:
    """Independent reference: the data block read with numpy alone (little endian)."""
    count = shape[0] * shape[1]
    return np.fromfile(file, dtype="<u2", count=count, offset=offset).reshape(shape)


@pytest.mark.parametrize(("name", "shape", "pixel_size", "extended"), FEI_FILES)
def test_real_fei_micrographs_read_as_float32(name, shape, pixel_size, extended):
    file = DATA / name
    if not file.is_file():
        pytest.skip(f"{file} not present")
    mrc = read_mrc(file)
    assert mrc.data.shape == shape
    assert mrc.data.dtype == np.float32
    # cella z = 0 in these headers: the x voxel size is used, not 0.
    assert mrc.pixel_size == pytest.approx(pixel_size, abs=1e-4)
    reference = _raw_uint16(file, 1024 + extended, shape)
    np.testing.assert_array_equal(mrc.data, reference.astype(np.float32))


def test_round_trip_keeps_data_and_pixel_size(tmp_path):
    rng = np.random.default_rng(0)
    volume = rng.normal(size=(6, 8, 10)).astype(np.float32)
    write_mrc(tmp_path / "v.mrc", volume, 1.25)
    back = read_mrc(tmp_path / "v.mrc")
    np.testing.assert_array_equal(back.data, volume)
    assert back.pixel_size == pytest.approx(1.25)


def test_single_section_becomes_2d_and_uint16_is_exact(tmp_path):
    counts = np.arange(12, dtype=np.uint16).reshape(1, 3, 4) * 5000
    with mrcfile.new(tmp_path / "c.mrc") as mrc:
        mrc.set_data(counts)
        mrc.voxel_size = (0.5, 0.5, 0.0)  # z voxel size 0, as EPU writes
    back = read_mrc(tmp_path / "c.mrc")
    assert back.data.shape == (3, 4)
    np.testing.assert_array_equal(back.data, counts[0].astype(np.float32))
    assert back.pixel_size == pytest.approx(0.5)


def test_header_without_pixel_size_reads_zero(tmp_path):
    with mrcfile.new(tmp_path / "z.mrc") as mrc:
        mrc.set_data(np.ones((4, 4), dtype=np.float32))
        mrc.voxel_size = 0.0
    assert read_mrc(tmp_path / "z.mrc").pixel_size == 0.0


def _valid_bytes(tmp_path: Path) -> bytes:
    write_mrc(tmp_path / "ok.mrc", np.arange(64, dtype=np.float32).reshape(8, 8), 1.0)
    return (tmp_path / "ok.mrc").read_bytes()


def _patched(raw: bytes, offset: int, value: int) -> bytes:
    return raw[:offset] + np.int32(value).tobytes() + raw[offset + 4 :]


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda raw: raw[:1200], "truncated"),
        (lambda raw: raw[:100], "shorter than an MRC header"),
        (lambda raw: b"", "shorter than an MRC header"),
        (lambda raw: raw[:208] + b"XXXX" + raw[212:], "not a valid MRC header"),
        (lambda raw: _patched(raw, 12, 4), "mode 4"),
        (lambda raw: _patched(raw, 12, 3), "mode 3"),
        (lambda raw: _patched(raw, 12, 77), "mode 77"),
        (lambda raw: _patched(raw, 0, 0), "corrupt"),
        (lambda raw: _patched(raw, 4, -8), "corrupt"),
        (lambda raw: _patched(raw, 92, 10_000_000), "not a valid MRC header"),
    ],
    ids=[
        "truncated-data",
        "short",
        "empty",
        "no-map-id",
        "complex-mode",
        "mode-3",
        "unknown-mode",
        "nx-0",
        "ny-negative",
        "huge-extended-header",
    ],
)
def test_broken_files_raise_input_file_error(tmp_path, make, expected):
    bad = tmp_path / "bad.mrc"
    bad.write_bytes(make(_valid_bytes(tmp_path)))
    with pytest.raises(InputFileError, match=expected) as info:
        read_mrc(bad)
    assert str(bad) in str(info.value)


def test_missing_path_and_directory_are_named(tmp_path):
    with pytest.raises(InputFileError, match="file not found"):
        read_mrc(tmp_path / "absent.mrc")
    with pytest.raises(InputFileError, match="is a directory"):
        read_mrc(tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file_is_named(tmp_path):
    file = tmp_path / "locked.mrc"
    file.write_bytes(_valid_bytes(tmp_path))
    file.chmod(0)
    with pytest.raises(InputFileError, match="permission denied"):
        read_mrc(file)


def test_failed_write_leaves_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "map.mrc"
    write_mrc(target, np.ones((4, 4)), 1.0)
    before = target.read_bytes()
    with pytest.raises(RuntimeError, match="disk gone"), atomic_path(target) as tmp:
        tmp.write_bytes(b"half a map")
        raise RuntimeError("disk gone")
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["map.mrc"]


# Axis order: a header's mapc, mapr, maps name the axis (1 = x, 2 = y, 3 = z) along
# the file's columns, rows and sections; the reader must always return [z, y, x].
ALL_ORDERS = list(itertools.permutations((1, 2, 3)))


def _stored_as(volume: np.ndarray, order: tuple[int, int, int]) -> np.ndarray:
    """Independent reference: lay ``volume[z, y, x]`` out element by element.

    ``order`` is (mapc, mapr, maps); element [s, r, c] of the file holds the voxel
    whose coordinate along axis ``mapc`` is c, along ``mapr`` r, along ``maps`` s.
    """
    extent = {1: volume.shape[2], 2: volume.shape[1], 3: volume.shape[0]}
    mapc, mapr, maps = order
    stored = np.empty((extent[maps], extent[mapr], extent[mapc]), volume.dtype)
    for s, r, c in np.ndindex(*stored.shape):
        position = {mapc: c, mapr: r, maps: s}
        stored[s, r, c] = volume[position[3], position[2], position[1]]
    return stored


def _write_with_order(
    file: Path, stored: np.ndarray, order: tuple[int, int, int], extents, voxel: float
) -> None:
    """Write ``stored`` with the given axis order; ``extents`` are (x, y, z) sizes."""
    with mrcfile.new(file) as mrc:
        mrc.set_data(stored)
        header = mrc.header
        header.mapc, header.mapr, header.maps = order
        # mx, my, mz and cella are per axis x, y, z (not per column, row, section)
        header.mx, header.my, header.mz = extents
        header.cella = tuple(voxel * n for n in extents)


@pytest.mark.parametrize("order", ALL_ORDERS, ids=lambda o: "".join(map(str, o)))
def test_permuted_volume_reads_as_the_standard_one(tmp_path, order):
    rng = np.random.default_rng(1)
    volume = rng.normal(size=(3, 4, 5)).astype(np.float32)  # (z, y, x), all distinct
    write_mrc(tmp_path / "standard.mrc", volume, 1.5)
    _write_with_order(
        tmp_path / "permuted.mrc", _stored_as(volume, order), order, (5, 4, 3), 1.5
    )
    standard = read_mrc(tmp_path / "standard.mrc")
    permuted = read_mrc(tmp_path / "permuted.mrc")
    np.testing.assert_array_equal(standard.data, volume)
    np.testing.assert_array_equal(permuted.data, volume)
    assert permuted.pixel_size == pytest.approx(1.5)


def test_image_stored_with_swapped_rows_and_columns(tmp_path):
    image = np.arange(12, dtype=np.float32).reshape(3, 4)  # (y, x)
    stored = _stored_as(image[None], (2, 1, 3))
    assert stored.shape == (1, 4, 3)
    _write_with_order(tmp_path / "swapped.mrc", stored, (2, 1, 3), (4, 3, 1), 0.8)
    back = read_mrc(tmp_path / "swapped.mrc")
    np.testing.assert_array_equal(back.data, image)
    assert back.pixel_size == pytest.approx(0.8)


def test_axis_order_zero_from_old_writers_reads_as_standard(tmp_path):
    volume = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    _write_with_order(tmp_path / "zero.mrc", volume, (0, 0, 0), (4, 3, 2), 1.0)
    np.testing.assert_array_equal(read_mrc(tmp_path / "zero.mrc").data, volume)


@pytest.mark.parametrize("order", [(1, 1, 3), (1, 2, 4), (0, 2, 3)])
def test_axis_order_that_is_not_a_permutation_is_refused(tmp_path, order):
    file = tmp_path / "odd.mrc"
    _write_with_order(file, np.ones((2, 3, 4), np.float32), order, (4, 3, 2), 1.0)
    with pytest.raises(InputFileError, match="mapc, mapr, maps") as info:
        read_mrc(file)
    assert str(file) in str(info.value)


def test_single_section_outside_the_xy_plane_is_refused(tmp_path):
    file = tmp_path / "xz.mrc"
    # one section along y: an x-z image, not a micrograph's x-y plane
    _write_with_order(file, np.ones((1, 3, 4), np.float32), (1, 3, 2), (4, 1, 3), 1.0)
    with pytest.raises(InputFileError, match="maps") as info:
        read_mrc(file)
    assert str(file) in str(info.value)
