"""The compiled one-pass statistics kernel against the eager update, bit for bit."""

import torch

from twodtm.search.statistics import QUANTUM_SCALE, PairedStatistics, SearchStatistics


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


def _paired_layout(maps: torch.Tensor) -> torch.Tensor:
    """``(2n, H, W)`` real maps as ``view_as_real`` of n complex maps (cropped view)."""
    n2, h, w = maps.shape
    big = torch.zeros(n2 // 2, h + 3, w + 5, dtype=torch.complex64)
    big[:, :h, :w] = torch.complex(maps[0::2], maps[1::2])
    return torch.view_as_real(big)[:, :h, :w]


def test_paired_statistics_equal_plain_ones_including_ties():
    """Two orientations of 5 defocus maps each (2 pairs + 1 real), folded together."""
    g = torch.Generator().manual_seed(7)
    maps = torch.randn((10, 20, 24), generator=g) * 3.0  # index o * 5 + d
    divisors = torch.tensor([0.5, 1.0, 2.0, 0.5, 0.25, 1.0, 2.0, 0.5, 1.0, 0.5])
    maps[3, :4] = maps[0, :4] * 0.25  # ties across parts: index 0 wins over 3
    maps[4, 6:9] = maps[1, 6:9] / 4.0  # the extra map ties map 1: index 1 wins
    maps[5, 14:16] = maps[4, 14:16] * 4.0  # orientation 1's pair ties extra 4: 4 wins
    maps[:, 12, :] = 0.75 * divisors[:, None]  # all equal: index 0
    planes = torch.cat([_paired_layout(maps[0:4]), _paired_layout(maps[5:9])])
    plain = SearchStatistics.empty((20, 24))
    results = []
    for fused in (False, True):
        paired = PairedStatistics.empty((20, 24))
        folded = SearchStatistics.empty((20, 24))
        for first in (20, 0, 10):
            paired.update(
                planes,
                torch.cat([divisors[0:4], divisors[5:9]]).reshape(4, 2),
                first + torch.tensor([0, 2, 5, 7]),
                (maps[[4, 9]], divisors[[4, 9]], first + torch.tensor([4, 9])),
                fused=fused,
            )
            if not fused:
                plain.update(maps, first, divisors)
        paired.fold_into(folded, fused=fused)  # the parts combined compiled too
        results.append(folded)
    for folded in results:
        assert folded.count == plain.count == 30
        for name in ("mip", "best_index", "sum", "sum_sq"):
            assert torch.equal(getattr(folded, name), getattr(plain, name)), name
    assert torch.equal(plain.best_index[12], torch.zeros(24, dtype=torch.int64))
    scaled = maps / divisors[:, None, None]
    best = scaled.max(0).values
    for rows, index in ((slice(6, 9), 1), (slice(14, 16), 4)):
        tied = scaled[index, rows] == best[rows]
        assert tied.any() and bool((plain.best_index[rows][tied] == index).all())
