"""Input checks and template repairs: padding, odd boxes, Fourier resampling."""

from __future__ import annotations

import os

import numpy as np
import pytest

from twodtm.config import Preprocessing
from twodtm.errors import InputDataError, OutputExistsError, OutputWriteError
from twodtm.io.mrc import MrcData, write_mrc
from twodtm.programs._repair import pad_to_cube, pad_to_even, resample_volume
from twodtm.programs.inputs import (
    TemplatePolicy,
    check_micrograph,
    check_output_writable,
    check_signal,
    check_template,
    claim_output,
    read_micrograph,
    read_template,
    template_policy,
)

SIGMA = 2.5  # A


def gaussian(size: int, pixel_size: float, sigma: float = SIGMA) -> np.ndarray:
    """Analytic Gaussian centred at voxel size // 2, sampled at ``pixel_size``."""
    axis = (np.arange(size) - size // 2) * pixel_size
    zz, yy, xx = np.meshgrid(axis, axis, axis, indexing="ij")
    return np.exp(-(xx**2 + yy**2 + zz**2) / (2 * sigma**2)).astype(np.float32)


@pytest.mark.parametrize(
    ("value", "message"), [(np.nan, "1 NaN or Inf"), (np.inf, "1 NaN or Inf")]
)
def test_non_finite_values_are_counted(value, message):
    data = np.ones((8, 8), dtype=np.float32)
    data[3, 4] = value
    with pytest.raises(InputDataError, match=message):
        check_signal(data, "mic.mrc")


def test_constant_image_is_refused_and_noise_accepted():
    with pytest.raises(InputDataError, match="mic.mrc: every value is 7.0"):
        check_signal(np.full((8, 8), 7.0, dtype=np.float32), "mic.mrc")
    check_signal(np.random.default_rng(0).normal(size=(8, 8)), "mic.mrc")


def test_micrograph_must_be_2d():
    with pytest.raises(InputDataError, match="expected a 2D micrograph"):
        check_micrograph(np.ones((3, 8, 8)), "movie.mrc")


def test_pad_to_cube_keeps_centre_values_and_input():
    rng = np.random.default_rng(1)
    volume = rng.normal(size=(10, 16, 13)).astype(np.float32)
    original = volume.copy()
    cube = pad_to_cube(volume)
    assert cube.shape == (16, 16, 16)
    # Centre voxel s // 2 of each axis lands on 16 // 2 = 8: offsets 8-5, 8-8, 8-6.
    np.testing.assert_array_equal(cube[3:13, 0:16, 2:15], volume)
    faces = np.concatenate(
        [
            volume[[0, -1]].ravel(),
            volume[:, [0, -1]].ravel(),
            volume[..., [0, -1]].ravel(),
        ]
    )
    assert cube[0, 0, 0] == pytest.approx(faces.mean(), rel=1e-6)
    np.testing.assert_array_equal(volume, original)


def test_odd_box_is_padded_on_the_low_side_keeping_the_centre():
    volume = np.zeros((15, 15, 15), dtype=np.float32)
    volume[7, 7, 7] = 1.0  # centre voxel 15 // 2
    even = pad_to_even(volume)
    assert even.shape == (16, 16, 16)
    assert np.unravel_index(np.argmax(even), even.shape) == (8, 8, 8)  # 16 // 2
    assert even.sum() == pytest.approx(1.0)
    same = pad_to_even(np.ones((4, 6, 8), dtype=np.float32))
    assert same.shape == (4, 6, 8)


@pytest.mark.parametrize(
    ("size", "pixel_size", "target", "new_size"),
    [(32, 1.5, 1.0, 48), (48, 1.0, 1.5, 32), (30, 1.2, 0.9, 40), (33, 1.0, 1.1, 30)],
)
def test_fourier_resampling_matches_the_analytic_map(
    size, pixel_size, target, new_size
):
    volume = gaussian(size, pixel_size)
    resampled, new_pixel = resample_volume(volume, pixel_size, target)
    assert resampled.shape == (new_size,) * 3
    assert new_pixel == pytest.approx(pixel_size * size / new_size)
    expected = gaussian(new_size, new_pixel)
    assert np.abs(resampled - expected).max() < 1e-4
    assert resampled.mean() * new_size**3 * new_pixel**3 == pytest.approx(
        volume.mean() * size**3 * pixel_size**3, rel=1e-4
    )


def _template(size: int, pixel_size: float) -> MrcData:
    return MrcData(data=gaussian(size, pixel_size), pixel_size=pixel_size)


def test_other_pixel_size_is_refused_naming_the_flag():
    with pytest.raises(InputDataError, match="allow_template_resampling: true"):
        check_template(_template(32, 1.5), "t.mrc", 1.0, TemplatePolicy())


def test_other_pixel_size_is_resampled_when_allowed():
    policy = TemplatePolicy(allow_resampling=True)
    volume, pixel_size = check_template(_template(32, 1.5), "t.mrc", 1.0, policy)
    assert volume.shape == (48, 48, 48)
    assert pixel_size == pytest.approx(1.0)
    assert np.abs(volume - gaussian(48, 1.0)).max() < 1e-4


def test_small_mismatch_is_left_to_the_engine_and_unknown_header_matches():
    volume, pixel_size = check_template(
        _template(32, 1.005), "t.mrc", 1.0, TemplatePolicy()
    )
    assert volume.shape == (32, 32, 32)
    assert pixel_size == pytest.approx(1.005)
    unknown = MrcData(data=gaussian(32, 1.0), pixel_size=0.0)
    assert check_template(unknown, "t.mrc", 1.3, TemplatePolicy())[1] == 1.3
    override = TemplatePolicy(pixel_size=1.3)
    assert check_template(_template(32, 1.0), "t.mrc", 1.3, override)[1] == 1.3


def test_non_cubic_template_is_refused_or_padded():
    box = MrcData(
        data=np.random.default_rng(2).normal(size=(20, 24, 24)), pixel_size=1.0
    )
    with pytest.raises(InputDataError, match="pad_template_to_cube: true"):
        check_template(box, "t.mrc", 1.0, TemplatePolicy())
    volume, _ = check_template(box, "t.mrc", 1.0, TemplatePolicy(pad_to_cube=True))
    assert volume.shape == (24, 24, 24)


def test_2d_template_and_tiny_template_are_refused():
    flat = MrcData(data=np.random.default_rng(3).normal(size=(32, 32)), pixel_size=1.0)
    with pytest.raises(InputDataError, match="must be a 3D map"):
        check_template(flat, "t.mrc", 1.0, TemplatePolicy())
    with pytest.raises(InputDataError, match="at least 8"):
        check_template(_template(6, 1.0), "t.mrc", 1.0, TemplatePolicy())


def test_output_location_checks(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputWriteError, match="is a file"):
        check_output_writable(tmp_path / "file")
    assert (
        check_output_writable(tmp_path / "new" / "deeper")
        == tmp_path / "new" / "deeper"
    )
    assert not (tmp_path / "new").exists()  # nothing is created by the check


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_read_only_parent_is_refused(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    with pytest.raises(OutputWriteError, match="not writable"):
        check_output_writable(locked / "results")


def test_particle_programs_keep_the_template_voxel_size(tmp_path):
    # No micrograph pixel size: the template's own voxel size is kept (the local
    # searches scale their projections to it), so a header without one is refused.
    kept = check_template(_template(32, 1.5), "t.mrc", None, TemplatePolicy())
    assert kept[0].shape == (32, 32, 32)
    assert kept[1] == 1.5
    unknown = MrcData(data=gaussian(32, 1.0), pixel_size=0.0)
    with pytest.raises(InputDataError, match="t.mrc: the MRC header holds no pixel"):
        check_template(unknown, "t.mrc", None, TemplatePolicy())
    assert check_template(unknown, "t.mrc", None, TemplatePolicy(pixel_size=1.2))[
        1
    ] == pytest.approx(1.2)


def test_files_are_read_through_the_one_policy(tmp_path):
    image = np.random.default_rng(4).normal(size=(40, 48)).astype(np.float32)
    write_mrc(tmp_path / "mic.mrc", image, 1.5)
    write_mrc(tmp_path / "odd.mrc", gaussian(33, 1.5), 1.5)
    read = read_micrograph(tmp_path / "mic.mrc")
    assert read.pixel_size == pytest.approx(1.5)
    np.testing.assert_array_equal(read.data, image)
    with pytest.raises(InputDataError, match="odd.mrc: expected a 2D micrograph"):
        read_micrograph(tmp_path / "odd.mrc")
    template = read_template(tmp_path / "odd.mrc", TemplatePolicy(), 1.5)
    assert template.data.shape == (34, 34, 34)  # odd box padded to even
    assert template.data[17, 17, 17] == pytest.approx(1.0)  # centre kept
    with pytest.raises(InputDataError, match="allow_template_resampling"):
        read_template(tmp_path / "odd.mrc", TemplatePolicy(), 1.0)


def test_template_policy_follows_the_preprocessing_section():
    fields = Preprocessing(allow_template_resampling=True, template_pixel_size=1.1)
    policy = template_policy(fields)
    assert policy == TemplatePolicy(
        pixel_size=1.1, allow_resampling=True, pad_to_cube=False
    )
    assert template_policy(fields, pixel_size=0.9).pixel_size == 0.9


def test_existing_result_is_claimed_only_with_overwrite(tmp_path):
    assert claim_output(tmp_path / "new", "particles.star", False) == tmp_path / "new"
    assert not (tmp_path / "new").exists()  # nothing is created by the claim
    (tmp_path / "particles.star").write_text("data_")
    with pytest.raises(
        OutputExistsError, match=r"\(particles.star\); pass --overwrite"
    ):
        claim_output(tmp_path, "particles.star", False)
    assert claim_output(tmp_path, "particles.star", True) == tmp_path
    assert claim_output(tmp_path, "result.json", False) == tmp_path
    assert (tmp_path / "particles.star").read_text() == "data_"
