"""Batch size and template padding chosen from the memory a device has free."""

from __future__ import annotations

import pytest
import torch

from twodtm.preprocess import prepare_template
from twodtm.search import memory, options
from twodtm.search.memory import (
    FALLBACK_PADDING,
    auto_batch_size,
    fitting_template_padding,
    slice_batch_bytes,
    template_bytes,
)
from twodtm.search.options import (
    RunRequest,
    RunSizes,
    other_engine_bytes,
    resolve_run_options,
)
from twodtm.search.projection import compact_template, is_compact

CPU = torch.device("cpu")


@pytest.mark.parametrize(("t", "padding"), [(16, 1.0), (16, 2.0), (17, 1.5), (20, 3.0)])
def test_template_bytes_are_prepare_templates(t, padding):
    made = prepare_template(torch.randn(t, t, t), padding)
    assert template_bytes(t, padding) == made.nbytes


def _free(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    monkeypatch.setattr(memory, "available_bytes", lambda device: n)


def test_batch_is_a_quarter_of_the_free_memory(monkeypatch):
    shape, filters, m = (256, 200), 3, 64
    fixed = filters * 256 * 101 * 12
    per = slice_batch_bytes(m)
    assert per == 64 * 33 * 60 + 64 * 64 * 8
    _free(monkeypatch, 4 * (fixed + 10 * per))
    assert auto_batch_size(CPU, shape, filters, m) == 10
    _free(monkeypatch, 4 * (fixed + 10 * per) - 1)
    assert auto_batch_size(CPU, shape, filters, m) == 9
    _free(monkeypatch, 1000)  # nothing fits: one at a time, the size check warns
    assert auto_batch_size(CPU, shape, filters, m) == 1
    _free(monkeypatch, 2**50)
    assert auto_batch_size(CPU, shape, filters, m) == 32
    # without a slice size, one image-size DFT per orientation is assumed
    _free(monkeypatch, 4 * (fixed + 10 * 256 * 101 * 8))
    assert auto_batch_size(CPU, shape, filters) == 10


def test_free_memory_is_what_the_host_can_give():
    """MemAvailable (reclaimable cache included), not MemFree."""
    with open("/proc/meminfo", encoding="ascii") as info:
        fields = dict(line.split(":", 1) for line in info)
    available = int(fields["MemAvailable"].split()[0]) * 1024
    got = memory.available_bytes(CPU)
    assert abs(got - available) < 0.05 * available + 2**28  # the host moves on


def test_padding_falls_back_only_when_memory_is_short():
    t = 64
    full, fallback = template_bytes(t, 2.0), template_bytes(t, FALLBACK_PADDING)
    other = 10**6
    assert fitting_template_padding(t, 2.0, full + other, other) == 2.0
    assert fitting_template_padding(t, 2.0, full + other - 1, other) == FALLBACK_PADDING
    assert fitting_template_padding(t, 2.0, fallback + other, other) == FALLBACK_PADDING
    # nothing fits: the request stands (the size check names what it needs)
    assert fitting_template_padding(t, 2.0, fallback + other - 1, other) == 2.0
    # a request at or below the fallback is never raised or lowered
    assert fitting_template_padding(t, 1.2, 10, 0) == 1.2
    assert fitting_template_padding(t, 1.5, 10, 0) == 1.5


@pytest.mark.parametrize(("t", "padding"), [(16, 2.0), (17, 1.5)])
def test_compact_template_bytes_are_compact_templates(t, padding):
    made = compact_template(prepare_template(torch.randn(t, t, t), padding))
    assert template_bytes(t, padding, compact=True) == made.nbytes


def test_compiled_runs_hold_the_compact_template(monkeypatch):
    """Where the search compiles, the template is compact and fits at padding 2."""
    t = 64
    sizes = RunSizes((128, 128), (128, 128), t, n_filters=1, n_orientations=4)
    other = other_engine_bytes(sizes, 2.0)
    compact = template_bytes(t, 2.0, compact=True)
    monkeypatch.setattr(options, "available_bytes", lambda device: other + compact)
    for fused, expected in ((True, True), (False, False), ("auto", False)):
        run = resolve_run_options(RunRequest(fused=fused), sizes, CPU)
        assert run.compact_template is expected
        # only the compact template fits at padding 2; fp32 falls back to 1.5
        assert run.template_padding == (2.0 if expected else FALLBACK_PADDING)
        template = prepare_template(
            torch.randn(t, t, t), run.template_padding, expected
        )
        assert is_compact(template) is expected
