"""Local searches of a batch of particles at once, on one device.

N particles whose boxes share one size b are searched together with the global
search's primitives: their ``SearchInputs`` run the filter axis P over (particle,
pixel size) pairs, so pair ``(n, s)`` holds box n's DFT times the CTFs of
particle n's defocus values at pixel size s times the micrograph's whitening
filter, their norm weights, and its own slice magnification. A chunk of
orientations (m per particle, each particle's own rotations around its start) is
sliced in one call (``search.projection``), normalised by the exact filtered
norms (``search.norms``), multiplied with each particle's filtered box and
inverse transformed by two GEMMs that compute only the ``(2r + 1)^2`` window of
shifts (``search._window``). The best correlation at each window pixel and its
trial are carried across chunks with the engine's rule
(``search.statistics.keep_max``: the lowest index wins ties), so the result does
not depend on how the work is chunked.

The trial index of a particle is the engine's flat index over its own local
space: ``(orientation * S + pixel_size) * D + defocus``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from twodtm.ctf import Optics, ctf_stack
from twodtm.local._boxes import window_mask
from twodtm.search._window import window_bases, window_inverse
from twodtm.search.inputs import SearchInputs
from twodtm.search.memory import available_bytes
from twodtm.search.norms import filtered_norms, parseval_weights
from twodtm.search.projection import padded_dft, project
from twodtm.search.statistics import keep_max

__all__ = [
    "BestPose",
    "ParticleBoxes",
    "Template",
    "batch_inputs",
    "best_in_disk",
    "best_maps",
    "orientations_per_chunk",
    "particle_ctfs",
    "search_windows",
]

# Chunk memory on the CPU: larger chunks only add cache misses to the batched FFTs.
_CPU_CHUNK_BYTES = 64 * 2**20


@dataclass(frozen=True)
class Template:
    """A template ready for the engine.

    Attributes
    ----------
    dft : torch.Tensor
        Output of ``preprocess.prepare_template`` on the search device.
    size : int
        Box size of the map, voxels.
    pixel_size : float
        Voxel size the map is taken to have, Angstrom; changing it rescales the
        map in Fourier space (the slices are sampled at scaled frequencies).
    """

    dft: torch.Tensor
    size: int
    pixel_size: float


@dataclass(frozen=True)
class ParticleBoxes:
    """What the local search of N particles visits, besides the orientations.

    Attributes
    ----------
    dfts : torch.Tensor
        ``(N, b, b // 2 + 1)`` complex64 box DFTs (``local.box_dfts``), each start
        position at pixel ``(r, r)``.
    defocus : torch.Tensor
        ``(N, D)`` float64 absolute defocus values searched per particle, Angstrom.
    pixel_sizes : torch.Tensor
        ``(N, S)`` float64 micrograph pixel sizes searched per particle, Angstrom.
    """

    dfts: torch.Tensor
    defocus: torch.Tensor
    pixel_sizes: torch.Tensor


def particle_ctfs(
    optics: Optics,
    defocus: torch.Tensor,
    n_pixel_sizes: int,
    shape: tuple[int, int],
) -> torch.Tensor:
    """CTFs of every particle's defocus values, repeated for each pixel size.

    The CTF does not change with the trial pixel size: it stays in the pixel
    units where CTFFIND fitted it (see ``ctf.ctf_stack``).

    Parameters
    ----------
    optics : Optics
        Micrograph optics (astigmatism, voltage...); the defocus mean is replaced
        by each value of ``defocus``.
    defocus : torch.Tensor
        ``(N, D)`` absolute defocus, Angstrom (on the result's device).
    n_pixel_sizes : int
        S, the pixel sizes tried per particle.
    shape : tuple[int, int]
        ``(h, w)`` of the boxes.

    Returns
    -------
    torch.Tensor
        ``(N, S, D, h, w // 2 + 1)`` float32, unshifted rfft layout.
    """
    n, d = defocus.shape
    offsets = defocus - optics.defocus_mean
    stack = ctf_stack(optics, offsets.flatten(), shape).unflatten(0, (n, d))
    return stack[:, None].expand(n, n_pixel_sizes, *stack.shape[1:])


def batch_inputs(
    template: Template,
    boxes: ParticleBoxes,
    box_filter: torch.Tensor,
    optics: Optics,
) -> SearchInputs:
    """Build the engine's tensors of a batch, P over (particle, pixel size) pairs.

    Parameters
    ----------
    template : Template
        On the device of the boxes.
    boxes : ParticleBoxes
        The particles' boxes and defocus and pixel-size values.
    box_filter : torch.Tensor
        ``(b, b // 2 + 1)`` whitening x bandpass resampled onto the box.
    optics : Optics
        Micrograph optics.

    Returns
    -------
    SearchInputs
        ``filtered_image`` ``(N * S, D, b, b // 2 + 1)``, pair ``n * S + s``;
        ``pixel_scales`` template over micrograph pixel size, in the same order.
    """
    size = int(boxes.dfts.shape[-2])
    shape = (size, size)
    device = boxes.dfts.device
    filters = particle_ctfs(
        optics, boxes.defocus.to(device), int(boxes.pixel_sizes.shape[1]), shape
    )
    filters = filters * box_filter
    weights = filters.square() * parseval_weights(shape, device)
    scales = template.pixel_size / boxes.pixel_sizes.flatten()
    return SearchInputs(
        template_dft=template.dft,
        template_size=template.size,
        filtered_image=(boxes.dfts[:, None, None] * filters).flatten(0, 1),
        norm_weights=weights.flatten(-2).flatten(0, 1).to(torch.float32),
        pixel_scales=tuple(scales.tolist()),
        image_shape=shape,
    )


def _window_correlations(
    inputs: SearchInputs, rotations: torch.Tensor, size: int
) -> torch.Tensor:
    """Normalised correlations of each particle's rotations in its shift window.

    Parameters
    ----------
    inputs : SearchInputs
        From ``batch_inputs`` (N particles).
    rotations : torch.Tensor
        ``(N, m, 3, 3)`` rotation matrices, m per particle (not modified).
    size : int
        Window edge ``2r + 1``.

    Returns
    -------
    torch.Tensor
        ``(N, m, S, D, size, size)`` float32; window pixel ``(r, r)`` is the
        particle's start position.
    """
    if inputs.norm_weights is None:
        raise ValueError("inputs: no norm_weights; build the inputs with batch_inputs")
    n, m = int(rotations.shape[0]), int(rotations.shape[1])
    n_pixel = int(inputs.filtered_image.shape[0]) // n
    scales = torch.tensor(
        inputs.pixel_scales, dtype=torch.float64, device=rotations.device
    ).view(n, n_pixel)
    bases = window_bases(inputs.image_shape, size, inputs.device)
    maps = []
    for s in range(n_pixel):
        # The magnification goes into the matrices: one slicer call for the chunk.
        matrices = rotations.to(torch.float64) * scales[:, s, None, None, None]
        projections = project(inputs.projector, matrices.flatten(0, 1), 1.0)
        dfts = padded_dft(projections, inputs.image_shape).unflatten(0, (n, m))
        norms = filtered_norms(inputs.norm_weights[s::n_pixel], dfts)
        # Products laid out (H, n, m, D, K), frequency rows first, for the GEMM.
        filtered = inputs.filtered_image[s::n_pixel].movedim(-2, 0)[:, :, None]
        products = filtered * dfts.conj().movedim(-2, 0)[:, :, :, None]
        window = window_inverse(products, bases)
        maps.append(window / norms[..., None, None])
    return torch.stack(maps, 2)


@dataclass(frozen=True)
class _WindowBest:
    """Per particle and window pixel, the best correlation so far and its trial.

    Attributes
    ----------
    values : torch.Tensor
        ``(N, w, w)`` float32 maximum correlation.
    trials : torch.Tensor
        ``(N, w, w)`` int64 trial index of the maximum.
    """

    values: torch.Tensor
    trials: torch.Tensor


def _fold_best(
    best: _WindowBest | None, correlations: torch.Tensor, first_trial: int
) -> _WindowBest:
    """Fold a chunk ``(N, m, S, D, w, w)`` into the running maxima.

    ``first_trial`` is the trial index of the chunk's first correlation; the
    lowest trial wins ties (``keep_max``), within a chunk and across chunks.
    """
    values, offsets = correlations.flatten(1, 3).max(dim=1)  # first maximum on ties
    trials = offsets + first_trial
    if best is None:
        return _WindowBest(values, trials)
    return _WindowBest(*keep_max(best.values, best.trials, values, trials))


def search_windows(
    inputs: SearchInputs, rotations: torch.Tensor, size: int, chunk: int
) -> _WindowBest:
    """Best correlation and trial at each window pixel over all local poses.

    Parameters
    ----------
    inputs : SearchInputs
        From ``batch_inputs``.
    rotations : torch.Tensor
        ``(N, M, 3, 3)`` every particle's local rotations.
    size : int
        Window edge ``2r + 1``.
    chunk : int
        Orientations per particle correlated at once (bounds the memory).
    """
    n_filters = int(inputs.filtered_image.shape[1]) * (
        int(inputs.filtered_image.shape[0]) // int(rotations.shape[0])
    )
    best = None
    for first in range(0, int(rotations.shape[1]), chunk):
        maps = _window_correlations(inputs, rotations[:, first : first + chunk], size)
        best = _fold_best(best, maps, first * n_filters)
    if best is None:
        raise ValueError("rotations: no orientations to search; pass at least one")
    return best


@dataclass(frozen=True)
class BestPose:
    """Per particle, the best pixel within the shift disk and its trial.

    Attributes
    ----------
    correlation : torch.Tensor
        ``(N,)`` float32 best correlation.
    rows, columns : torch.Tensor
        ``(N,)`` int64 window pixel (the start is at ``(r, r)``).
    orientation, pixel_size, defocus : torch.Tensor
        ``(N,)`` int64 indices of the trial.
    """

    correlation: torch.Tensor
    rows: torch.Tensor
    columns: torch.Tensor
    orientation: torch.Tensor
    pixel_size: torch.Tensor
    defocus: torch.Tensor


def best_in_disk(
    best: _WindowBest, max_shift: float, n_pixel: int, n_defocus: int
) -> BestPose:
    """Pick each particle's best pixel within ``max_shift`` of the window centre.

    The first pixel in row-major order wins ties, as the trial does within a pixel.
    """
    n, w = int(best.values.shape[0]), int(best.values.shape[-1])
    inside = window_mask(w, max_shift, best.values.device)
    masked = torch.where(inside, best.values, -torch.inf).flatten(1)
    pixel = torch.argmax(masked, dim=1)
    particles = torch.arange(n, device=pixel.device)
    trial = best.trials.flatten(1)[particles, pixel]
    orientation, rest = trial // (n_pixel * n_defocus), trial % (n_pixel * n_defocus)
    return BestPose(
        correlation=masked[particles, pixel],
        rows=pixel // w,
        columns=pixel % w,
        orientation=orientation,
        pixel_size=rest // n_defocus,
        defocus=rest % n_defocus,
    )


def best_maps(
    inputs: SearchInputs, rotations: torch.Tensor, pose: BestPose, size: int
) -> torch.Tensor:
    """``(N, size, size)`` window maps of each particle's best trial (for sub-pixel).

    ``rotations`` is ``(N, M, 3, 3)`` as for ``search_windows``.
    """
    particles = torch.arange(int(rotations.shape[0]), device=rotations.device)
    chosen = rotations[particles, pose.orientation.to(rotations.device)][:, None]
    maps = _window_correlations(inputs, chosen, size)[:, 0]
    index = particles.to(maps.device)
    return maps[index, pose.pixel_size.to(maps.device), pose.defocus.to(maps.device)]


def orientations_per_chunk(
    n_particles: int, n_defocus: int, box_size: int, device: torch.device
) -> int:
    """Orientations per particle and chunk that fit the memory budget.

    A (particle, orientation) pair holds its projection DFT and, for one pixel
    size at a time, D products: ``(D + 1) b (b // 2 + 1)`` complex64 values (its
    windows are far smaller). The budget is a quarter of the free memory on CUDA
    and at most ``_CPU_CHUNK_BYTES`` on the CPU, where larger chunks only thrash
    the cache (free memory from ``search.memory.available_bytes``).
    """
    per_pair = (n_defocus + 1) * box_size * (box_size // 2 + 1) * 8
    budget = 0.25 * available_bytes(device)
    if device.type != "cuda":
        budget = min(_CPU_CHUNK_BYTES, budget)
    return int(max(1, budget // (n_particles * per_pair)))
