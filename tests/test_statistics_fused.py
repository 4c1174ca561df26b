"""The compiled one-pass statistics kernel against the eager update, bit for bit."""

import torch

from twodtm.search.statistics import QUANTUM_SCALE, SearchStatistics


def _maps_with_ties(shape=(3, 20, 24)):
    g = torch.Generator().manual_seed(3)
    maps = torch.randn(shape, generator=g) * 3.0
    maps[2, :5] = maps[0, :5]  # equal values in maps 0 and 2: index 0 must win
    maps[:, 7, :] = 1.25  # all equal along the batch: first index wins
    return maps


def test_fused_update_is_bit_identical_to_eager_including_ties():
    big = torch.zeros(3, 26, 30)
    big[:, 3:23, 4:28] = _maps_with_ties()
    maps = big[:, 3:23, 4:28]  # a strided view, as the engine passes
    divisors = torch.tensor([0.5, 1.0, 0.5])
    eager, fused = SearchStatistics.empty((20, 24)), SearchStatistics.empty((20, 24))
    for first in (6, 0, 3):  # later batches tie the first: the lower index wins
        eager.update(maps, first, divisors)
        fused.update(maps, first, divisors, fused=True)
    for name in ("mip", "best_index", "sum", "sum_sq"):
        assert torch.equal(getattr(eager, name), getattr(fused, name)), name
    assert eager.count == fused.count == 9
    # the eager path itself against a direct computation
    scaled = maps / divisors[:, None, None]
    assert torch.equal(eager.mip, scaled.max(0).values)
    assert torch.equal(eager.best_index[7], torch.zeros(24, dtype=torch.int64))
    tied = scaled[0, :5] >= scaled[1, :5]
    assert torch.equal(
        eager.best_index[:5][tied], torch.zeros(int(tied.sum()), dtype=torch.int64)
    )
    q = torch.round(scaled * QUANTUM_SCALE).double()
    assert torch.equal(eager.sum, 3 * q.sum(0))
    assert torch.equal(eager.sum_sq, 3 * (q * q).sum(0))


def test_update_leaves_its_inputs_unchanged():
    maps = _maps_with_ties()
    divisors = torch.tensor([2.0, 1.0, 4.0])
    before, div_before = maps.clone(), divisors.clone()
    SearchStatistics.empty((20, 24)).update(maps, 0, divisors)
    assert torch.equal(maps, before) and torch.equal(divisors, div_before)


def test_copies_do_not_follow_later_in_place_updates():
    stats = SearchStatistics.empty((20, 24))
    stats.update(_maps_with_ties(), 0)
    copy = stats.to("cpu")
    stats.update(_maps_with_ties() + 10.0, 3)
    assert float(copy.mip.max()) < float(stats.mip.max())
    assert copy.count == 3
