"""The outliers a search replaced are counted once, said in the log and recorded."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from twodtm.config import MatchConfig, parse_config
from twodtm.config.run import RefineStage
from twodtm.io.mrc import write_mrc
from twodtm.preprocess import outlier_note
from twodtm.programs._particles import read_micrograph
from twodtm.programs._run_stages import refine_stage
from twodtm.programs.match import load_inputs
from twodtm.progress import ProgressReporter


@pytest.fixture
def hot_config(tmp_path, sharp_blob):
    rng = np.random.default_rng(3)
    image = rng.normal(100.0, 5.0, (96, 112)).astype(np.float32)
    hot = rng.choice(image.size, 12, replace=False)
    image.flat[hot] = 5000.0  # hot pixels, ~1000 sigma
    write_mrc(tmp_path / "micrograph.mrc", image, 1.0)
    write_mrc(tmp_path / "template.mrc", sharp_blob.numpy(), 1.0)
    return (
        {
            "micrograph": str(tmp_path / "micrograph.mrc"),
            "template": str(tmp_path / "template.mrc"),
            "optics": {"pixel_size": 1.0, "defocus_u": 9000.0, "defocus_v": 9000.0},
            "output": {"directory": str(tmp_path / "result")},
        },
        image,
        hot,
    )


def test_match_inputs_hold_the_cleaned_micrograph_and_the_count(hot_config):
    raw, image, hot = hot_config
    inputs = load_inputs(parse_config(MatchConfig, raw))
    assert inputs.replaced_pixels == 12
    assert inputs.micrograph.max() < 200.0  # every hot pixel gone ...
    others = np.setdiff1d(np.arange(image.size), hot)
    np.testing.assert_array_equal(inputs.micrograph.flat[others], image.flat[others])
    kept = parse_config(MatchConfig, raw | {"preprocessing": {"outlier_sigma": None}})
    assert load_inputs(kept).replaced_pixels == 0
    assert load_inputs(kept).micrograph.max() == 5000.0


def test_outlier_note_names_count_share_and_threshold():
    line = outlier_note("match", 12, 10752, 5.0)
    assert line == (
        "match: replaced 12 of 10,752 pixels (0.11%) beyond 5 sigma (hot pixels, "
        "gold, ice) with the mean before whitening"
    )


def test_particle_programs_say_the_outliers_once_and_twodtm_run_not_again(
    hot_config,
):
    """refine/constrained/optimize warn of the replaced pixels; ``twodtm run``'s
    refine stage does not, its search having said it already."""
    raw, image, _ = hot_config
    config = parse_config(MatchConfig, raw)
    args = (
        raw["micrograph"],
        config.optics.to_optics(),
        config.preprocessing,
        config.masking,
        16,
        torch.device("cpu"),
    )
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        micrograph = read_micrograph(*args)
    assert [str(w.message) for w in said] == [
        outlier_note("micrograph.mrc", 12, image.size, 5.0)
    ]
    assert micrograph.replaced_pixels == 12
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        quiet = read_micrograph(*args, say_outliers=False)
    assert said == [] and quiet.replaced_pixels == 12
    torch.testing.assert_close(quiet.whitened, micrograph.whitened, rtol=0, atol=0)
    # twodtm run's refine stage: the search said it, the stage says nothing
    directory = Path(raw["output"]["directory"])
    directory.mkdir()
    pd.DataFrame(
        {"x": [56.0], "y": [48.0], "phi": [0.0], "theta": [0.0], "psi": [0.0]}
    ).to_csv(directory / "particles.csv", index=False)
    stage = RefineStage.model_validate(
        {"search": {"orientation": {"out_of_plane_range": 0, "in_plane_range": 0}}}
    )
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        refine_stage(config, directory, stage, "mic", ProgressReporter(), "mic")
    assert not [w for w in said if "replaced" in str(w.message)]
    assert (directory / "refined" / "particles.csv").is_file()
