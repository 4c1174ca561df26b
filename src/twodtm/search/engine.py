"""The global search's hot path: correlate orientations, fold into statistics.

Per orientation batch and pixel size the engine samples the projections of the
template in one sampler call (``projection.project``), transforms each to the
image size with a pruned FFT (``projection.padded_dft``), computes its exact
filtered norms (``norms.orientation_norms``), forms and inverse transforms the D
correlation maps of the defocus filters into reused buffers
(``_transforms.transform_orientation``; two maps per complex FFT with
``_filters.pair_filters``), and folds them into the statistics in one pass
(``SearchStatistics.update`` or, for pairs, ``PairedStatistics.update``;
compiled when ``SearchInputs.fused``). The normalised cross-correlation is that
of Rickgauer et al. 2017 (eq. 2) and cisTEM's ``match_template``. Everything runs
on the device of the input tensors; a ``clock.StageClock`` times the stages.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from twodtm.search._transforms import (
    Workspace,
    slot,
    transform_orientation,
    workspace,
)
from twodtm.search.clock import StageClock, timed
from twodtm.search.inputs import SearchInputs
from twodtm.search.memory import fold_group
from twodtm.search.norms import orientation_norms
from twodtm.search.projection import padded_dft, project
from twodtm.search.statistics import PairedStatistics, SearchStatistics

__all__ = [
    "batch_workspace",
    "correlate",
    "empty_statistics",
    "search_batches",
    "search_orientations",
    "settled",
]


def correlate(
    inputs: SearchInputs, dft: torch.Tensor, norms: torch.Tensor, pixel_index: int
) -> torch.Tensor:
    """Normalised cross-correlations ``(D, H, W)`` of one projection with the image.

    Computed exactly as the search computes them (same transforms, same rounding).

    Parameters
    ----------
    inputs : SearchInputs
        Engine tensors.
    dft : torch.Tensor
        ``(H, W // 2 + 1)`` projection DFT from ``padded_dft``.
    norms : torch.Tensor
        ``(D,)`` its filtered norms from ``orientation_norms``.
    pixel_index : int
        Pixel size whose filters apply.

    Returns
    -------
    torch.Tensor
        ``(D, H, W)`` float32, in defocus order.
    """
    space = workspace(inputs)
    transform_orientation(inputs, dft, norms, pixel_index, space)
    h, w = inputs.image_shape
    paired = torch.view_as_real(space.pair_maps).movedim(-1, 1).reshape(-1, h, w)
    maps = torch.cat([paired, space.maps.float()])
    if inputs.precision == "fp16":
        return maps
    return maps / norms[:, None, None]


def empty_statistics(
    inputs: SearchInputs, crop: tuple[int, int]
) -> SearchStatistics | PairedStatistics:
    """Statistics ``search_orientations`` folds into without a per-batch pass.

    Paired statistics where the inputs pair their filters, kept across the
    batches of a chunk and combined once by ``settled``: combining them after
    every batch cost 0.4-0.8 s at 4096^2 (2 cores), about as much as searching
    one orientation at 13 planes.
    """
    if inputs.n_pairs:
        return PairedStatistics.empty(crop, inputs.device)
    return SearchStatistics.empty(crop, inputs.device)


def settled(
    statistics: SearchStatistics | PairedStatistics, fused: bool = False
) -> SearchStatistics:
    """Plain statistics of what ``empty_statistics``' accumulator has folded.

    ``fused``: combine the parts with the compiled kernel (``SearchInputs.fused``).
    """
    if isinstance(statistics, SearchStatistics):
        return statistics
    plain = SearchStatistics.empty(statistics.shape, statistics.interleaved.mip.device)
    statistics.fold_into(plain, fused)
    return plain


def batch_workspace(inputs: SearchInputs, batch_size: int) -> Workspace:
    """Buffers for batches of up to ``batch_size`` orientations, to reuse.

    Pass it to every ``search_orientations`` call of a chunk, and drop it
    before the chunk's statistics are combined: at 4096^2 and 13 planes it
    holds 1.25 GiB. Allocated afresh for every batch, it left the retained heap
    (``twodtm._hostmemory``) 0.56 GiB larger (RSS 5.75 against 5.19 GiB after
    three searches with a 256^3 template).
    """
    group = fold_group(inputs.n_defocus, inputs.image_shape)
    return workspace(inputs, min(group, batch_size))


def _slots(space: Workspace, inputs: SearchInputs) -> int:
    """Return how many orientations' maps ``space`` holds at once."""
    singles = int(inputs.filtered_image.shape[1])
    if singles:
        return int(space.maps.shape[0]) // singles
    return int(space.pair_maps.shape[0]) // inputs.n_pairs


def _fold_group(
    inputs: SearchInputs,
    space: Workspace,
    norms: list[torch.Tensor],
    firsts: list[int],
    target: SearchStatistics | PairedStatistics,
) -> None:
    """Fold the maps of a group of orientations (in ``space``) into the statistics.

    ``norms[g]`` are orientation g's D norms and ``firsts[g]`` the flat index of
    its defocus 0, increasing with g; slot g of ``space`` holds its maps.
    ``target`` covers the top-left crop of the maps (the unpadded micrograph).
    """
    h, w = target.shape
    count, n_defocus = len(firsts), inputs.n_defocus
    divisors = torch.stack(norms)
    if inputs.precision == "fp16":  # maps normalised already
        divisors = torch.ones_like(divisors)
    offsets = torch.arange(n_defocus, device=divisors.device)
    indices = torch.tensor(firsts, device=divisors.device)[:, None] + offsets
    pairs = 2 * inputs.n_pairs
    singles = n_defocus - pairs
    maps = space.maps[: count * singles, :h, :w]
    if isinstance(target, PairedStatistics):
        extra = None
        if singles:
            extra = (maps, divisors[:, pairs:].flatten(), indices[:, pairs:].flatten())
        target.update(
            torch.view_as_real(space.pair_maps[: count * inputs.n_pairs])[:, :h, :w],
            divisors[:, :pairs].reshape(-1, 2),
            indices[:, :pairs:2].flatten(),
            extra,
            fused=inputs.fused,
        )
    else:
        target.update(maps, indices.flatten(), divisors.flatten(), fused=inputs.fused)


def search_orientations(
    inputs: SearchInputs,
    rotations: torch.Tensor,
    first_orientation: int,
    statistics: SearchStatistics | PairedStatistics,
    crop: tuple[int, int] | None = None,
    clock: StageClock | None = None,
    space: Workspace | None = None,
) -> None:
    """Correlate a batch of orientations and fold the maps into ``statistics``.

    Parameters
    ----------
    inputs : SearchInputs
        Engine tensors.
    rotations : torch.Tensor
        ``(B, 3, 3)`` rotations of orientations ``first_orientation + b``.
    first_orientation : int
        Search-space index of the first rotation.
    statistics : SearchStatistics or PairedStatistics
        Accumulator on the engine's device, updated in place: for a chunk of
        several batches ``empty_statistics`` (combined by ``settled``); plain
        statistics are served too, paired maps then being combined per batch.
    crop : tuple[int, int], optional
        Accumulate only the top-left region (the unpadded micrograph).
    clock : StageClock, optional
        Charged with the seconds of every stage (``clock.STAGES``); None runs
        the search unmeasured (no synchronisation).
    space : Workspace, optional
        ``batch_workspace(inputs, n)`` with n at least this batch's size, reused
        across the batches of a chunk; None allocates one for this batch.
    """
    crop = crop if crop is not None else inputs.image_shape
    n_pixel, n_defocus = int(inputs.filtered_image.shape[0]), inputs.n_defocus
    batch = int(rotations.shape[0])
    group = fold_group(n_defocus, inputs.image_shape)
    # Full groups, then the rest of the batch one orientation at a time: every
    # fold holds ``group`` orientations or one, so the compiled kernel is built
    # for two map counts whatever the batch sizes.
    rest = batch - batch % group
    if space is None:
        space = batch_workspace(inputs, batch)
    elif _slots(space, inputs) < min(group, batch):
        raise ValueError(
            f"the workspace holds {_slots(space, inputs)} orientations, the batch "
            f"folds {min(group, batch)} at a time: make it with batch_workspace"
        )
    target = statistics
    if inputs.n_pairs and isinstance(statistics, SearchStatistics):
        target = PairedStatistics.empty(crop, inputs.device)
    for pixel_index in range(n_pixel):
        # Slices for the whole batch in one sampler call (fills a GPU), image-size
        # DFTs one orientation at a time (bounded memory).
        with timed(clock, "slice_extraction"):
            scale = inputs.pixel_scales[pixel_index]
            projections = project(inputs.projector, rotations, scale)
        norms_of: list[torch.Tensor] = []
        firsts: list[int] = []
        for b in range(batch):
            with timed(clock, "forward_fft"):
                dft = padded_dft(
                    projections[b : b + 1],
                    inputs.image_shape,
                    space.spectrum,
                    space.dft,
                )
            with timed(clock, "norms"):
                norms = orientation_norms(inputs, projections[b], dft, pixel_index)
            into = slot(space, inputs, len(firsts))
            transform_orientation(inputs, dft[0], norms, pixel_index, into, clock)
            norms_of.append(norms)
            firsts.append(((first_orientation + b) * n_pixel + pixel_index) * n_defocus)
            if len(firsts) == group or b >= rest:
                with timed(clock, "reduction"):
                    _fold_group(inputs, space, norms_of, firsts, target)
                norms_of, firsts = [], []
    if target is not statistics:
        assert isinstance(target, PairedStatistics)
        assert isinstance(statistics, SearchStatistics)
        with timed(clock, "reduction"):
            target.fold_into(statistics, inputs.fused)


def search_batches(
    inputs: SearchInputs,
    batches: Iterable[tuple[int, torch.Tensor]],
    batch_size: int,
    crop: tuple[int, int],
    clock: StageClock | None = None,
    progress: Callable[[int], None] | None = None,
) -> SearchStatistics:
    """Search a chunk's batches from empty statistics and return them combined.

    What ``executors.run_chunk`` and ``twodtm bench`` run: one accumulator
    (``empty_statistics``) and one workspace (``batch_workspace``) for every
    batch; the workspace is dropped before the statistics are combined
    (``settled``), so the two are never held together.

    Parameters
    ----------
    batches : iterable of (int, torch.Tensor)
        ``(first orientation index, (B, 3, 3) rotations)`` of each batch, B at
        most ``batch_size``; read lazily, one batch at a time.
    crop : tuple[int, int]
        The region the statistics cover (the unpadded micrograph).
    clock : StageClock, optional
        Charged with every stage, the combination as "reduction".
    progress : callable, optional
        Called with each batch's number of orientations once it is folded.
    """
    statistics = empty_statistics(inputs, crop)
    space = batch_workspace(inputs, batch_size)
    for first, rotations in batches:
        search_orientations(
            inputs, rotations, first, statistics, crop=crop, clock=clock, space=space
        )
        if progress is not None:
            progress(int(rotations.shape[0]))
    del space  # before the combined statistics are allocated
    with timed(clock, "reduction"):
        return settled(statistics, inputs.fused)
