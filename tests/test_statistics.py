import itertools
import random

import pytest
import torch

from twodtm.ctf import Optics
from twodtm.orientations import euler_to_matrix, orientation_grid
from twodtm.preprocess import FilterSettings, prepare_image, prepare_template
from twodtm.search._filters import pair_filters
from twodtm.search.engine import batch_workspace, search_orientations
from twodtm.search.executors import SearchTask, merge_all, run_chunk
from twodtm.search.inputs import build_search_inputs
from twodtm.search.memory import fold_group
from twodtm.search.space import SearchSpace
from twodtm.search.statistics import QUANTUM_SCALE, SearchStatistics, keep_max


def _task(blob, n_orientations=21, batch_size=4, offsets=(-300.0, 0.0, 300.0)):
    space = SearchSpace(
        euler_angles=orientation_grid(40.0, 40.0)[:n_orientations],
        defocus_offsets=torch.tensor(offsets, dtype=torch.float64),
        pixel_sizes=torch.tensor([1.0], dtype=torch.float64),
    )
    g = torch.Generator().manual_seed(5)
    image = prepare_image(torch.randn(72, 88, generator=g), 1.0, FilterSettings())
    optics = Optics(pixel_size=1.0, defocus_u=7000.0, defocus_v=7000.0)
    inputs = build_search_inputs(prepare_template(blob), 32, image, optics, space)
    return SearchTask(inputs, space.euler_angles, image.shape, batch_size), space


def _assert_identical(a: SearchStatistics, b: SearchStatistics) -> None:
    assert torch.equal(a.mip, b.mip)
    assert torch.equal(a.best_index, b.best_index)
    assert torch.equal(a.sum, b.sum)
    assert torch.equal(a.sum_sq, b.sum_sq)
    assert a.count == b.count


def test_any_chunk_split_in_any_order_gives_identical_maps(blob):
    task, space = _task(blob)
    whole = run_chunk(task, space.chunks(space.n_orientations)[0])
    rng = random.Random(0)
    for n_chunks in (3, 7):
        size = -(-space.n_orientations // n_chunks)
        parts = [run_chunk(task, c) for c in space.chunks(size)]
        assert len(parts) == n_chunks
        for _ in range(3):
            rng.shuffle(parts)
            _assert_identical(merge_all(parts, task.crop), whole)


def test_batch_size_does_not_change_results(blob):
    task, space = _task(blob, batch_size=1)
    other, _ = _task(blob, batch_size=5)
    chunk = space.chunks(space.n_orientations)[0]
    _assert_identical(run_chunk(task, chunk), run_chunk(other, chunk))


@pytest.mark.parametrize("offsets", [(0.0,), (-300.0, 300.0)])
def test_fold_groups_do_not_change_results(blob, offsets):
    # batch 1 folds every orientation alone; batch 11 folds groups of
    # fold_group(D) orientations (8 at one plane, 4 at two) and then the rest
    one, space = _task(blob, batch_size=1, offsets=offsets)
    eleven, _ = _task(blob, batch_size=11, offsets=offsets)
    assert fold_group(len(offsets), one.inputs.image_shape) == 8 // len(offsets)
    chunk = space.chunks(space.n_orientations)[0]
    _assert_identical(run_chunk(one, chunk), run_chunk(eleven, chunk))


@pytest.mark.parametrize("batch_size", [1, 4])
def test_paired_statistics_kept_across_batches_change_no_result(blob, batch_size):
    # run_chunk keeps one paired accumulator for the chunk and combines it once;
    # plain statistics handed to the engine are combined after every batch
    task, space = _task(blob, batch_size=batch_size)
    paired = SearchTask(
        pair_filters(task.inputs), task.euler_angles, task.crop, batch_size
    )
    assert paired.inputs.n_pairs == 1
    per_batch = SearchStatistics.empty(task.crop)
    with torch.inference_mode():
        for start in range(0, space.n_orientations, batch_size):
            stop = min(start + batch_size, space.n_orientations)
            rotations = euler_to_matrix(space.euler_angles[start:stop])
            search_orientations(
                paired.inputs, rotations, start, per_batch, crop=task.crop
            )
    kept = run_chunk(paired, space.chunks(space.n_orientations)[0])
    _assert_identical(kept, per_batch)
    assert kept.count == space.n_orientations * 3
    # and the pairs change the maps by float32 rounding only
    unpaired = run_chunk(task, space.chunks(space.n_orientations)[0])
    torch.testing.assert_close(kept.mip, unpaired.mip, rtol=1e-5, atol=1e-5)


def test_a_workspace_reused_across_batches_changes_no_result(blob):
    # run_chunk hands one workspace to every batch (the last one shorter);
    # a fresh one per batch must give the same bits, a too small one is refused
    task, space = _task(blob, batch_size=4, offsets=(-300.0, 0.0, 300.0))
    inputs = pair_filters(task.inputs)
    reused, fresh = (SearchStatistics.empty(task.crop) for _ in range(2))
    shared = batch_workspace(inputs, 4)
    with torch.inference_mode():
        for start in range(0, space.n_orientations, 4):
            stop = min(start + 4, space.n_orientations)
            rotations = euler_to_matrix(space.euler_angles[start:stop])
            search_orientations(
                inputs, rotations, start, reused, crop=task.crop, space=shared
            )
            search_orientations(inputs, rotations, start, fresh, crop=task.crop)
        assert space.n_orientations % 4  # the last batch is shorter
        _assert_identical(reused, fresh)
        with pytest.raises(ValueError, match="batch_workspace"):
            search_orientations(
                inputs,
                euler_to_matrix(space.euler_angles[:4]),
                0,
                fresh,
                crop=task.crop,
                space=batch_workspace(inputs, 1),
            )


def test_merge_is_associative_and_commutative_on_random_parts():
    g = torch.Generator().manual_seed(1)
    parts = []
    for k in range(4):
        s = SearchStatistics.empty((5, 6))
        s.update(torch.randn(3, 5, 6, generator=g) * 50, first_index=3 * k)
        parts.append(s)
    a, b, c, d = parts
    left = ((a.merge(b)).merge(c)).merge(d)
    right = a.merge(b.merge(c.merge(d)))
    for order in itertools.permutations(parts):
        _assert_identical(merge_all(order, (5, 6)), left)
    _assert_identical(left, right)


def test_ties_keep_the_lowest_index():
    values = torch.ones(4, 2, 2)
    first = SearchStatistics.empty((2, 2))
    first.update(values[:2], first_index=10)
    second = SearchStatistics.empty((2, 2))
    second.update(values[2:], first_index=2)
    assert torch.all(first.merge(second).best_index == 2)
    assert torch.all(second.merge(first).best_index == 2)


def test_mean_std_match_float64_reference():
    g = torch.Generator().manual_seed(2)
    values = torch.randn(50, 4, 4, generator=g) * 3 + 1
    s = SearchStatistics.empty((4, 4))
    s.update(values, 0)
    mean, std = s.mean_std()
    torch.testing.assert_close(
        mean, values.double().mean(0).float(), atol=1.0 / QUANTUM_SCALE, rtol=0
    )
    torch.testing.assert_close(
        std, values.double().std(0, unbiased=False).float(), rtol=1e-4, atol=1e-4
    )
    expected_z = (
        values.max(0).values - values.double().mean(0).float()
    ) / values.double().std(0, unbiased=False).float()
    torch.testing.assert_close(s.zscore(), expected_z, rtol=1e-4, atol=1e-4)


def test_best_index_decodes_to_orientation_pixel_defocus():
    space = SearchSpace(
        euler_angles=torch.zeros(5, 3, dtype=torch.float64),
        defocus_offsets=torch.zeros(3, dtype=torch.float64),
        pixel_sizes=torch.zeros(2, dtype=torch.float64),
    )
    index = torch.tensor([0, 5, 6, 29])
    o, p, d = space.decode(index)
    assert o.tolist() == [0, 0, 1, 4]
    assert p.tolist() == [0, 1, 0, 1]
    assert d.tolist() == [0, 2, 0, 2]


def test_keep_max_gives_the_same_winner_in_any_order():
    # Values drawn from a few levels, so that most pixels see ties.
    g = torch.Generator().manual_seed(9)
    values = torch.randint(0, 3, (5, 40), generator=g).float()
    index = torch.stack([torch.randperm(40, generator=g) * 5 + k for k in range(5)])
    # Reference: the largest value at each pixel, then its lowest index.
    best = values.max(0).values
    lowest = torch.where(values == best, index, index.max() + 1).min(0).values
    for order in itertools.permutations(range(5)):
        kept, kept_index = values[order[0]], index[order[0]]
        for k in order[1:]:
            kept, kept_index = keep_max(kept, kept_index, values[k], index[k])
        assert torch.equal(kept, best)
        assert torch.equal(kept_index, lowest)
    before = values.clone(), index.clone()
    keep_max(values[0], index[0], values[1], index[1])
    assert torch.equal(values, before[0]) and torch.equal(index, before[1])
