"""Per-orientation products and inverse transforms into reused buffers.

For one projection DFT P and every filter f of one pixel size the engine
multiplies the filtered image by ``conj(P)`` and inverse transforms into a
``Workspace`` allocated once per batch: unpaired filters with ``irfft2`` in
groups of ``SearchInputs.transform_group``, pairs (``search._filters``) with one
complex ``ifft2`` each. In fp16 (CUDA only) the product is pre-scaled by
``1 / (H W norm)`` so that every value of the transform stays near the
unit-variance correlations, far from float16 overflow.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from twodtm.search._filters import mirrored_half
from twodtm.search.clock import StageClock, timed
from twodtm.search.inputs import SearchInputs

__all__ = ["Workspace", "slot", "transform_orientation", "workspace"]


@dataclass(frozen=True)
class Workspace:
    """Buffers reused for every orientation of a batch (no allocation per map).

    Attributes
    ----------
    product : torch.Tensor
        ``(G, H, W // 2 + 1)`` unpaired filtered images times the projection's
        conjugate DFT, G = ``SearchInputs.transform_group`` filters at a time.
    maps : torch.Tensor
        ``(G (D - 2 D2), H, W)`` inverse real transforms of the unpaired
        products of G orientations (``slot`` g holds orientation g's).
    template : torch.Tensor
        ``(H, W)`` conjugate projection DFT on the full grid (pairs only).
    pair_maps : torch.Tensor
        ``(G D2, H, W)`` complex inverse transforms: pair j of slot g has its two
        maps as the real and imaginary parts of ``pair_maps[g D2 + j]``. Each
        pair's product is written there and transformed in place (the same
        bits as into another buffer, and 128 MiB less at 4096^2).
    spectrum, dft : torch.Tensor
        ``(1, H, W // 2 + 1)`` buffers of ``padded_dft`` (spectrum zero outside
        the projection's rows).
    mirror : torch.Tensor
        ``(H * (W - W // 2 - 1),)`` buffer of ``mirrored_half`` (pairs only).
    mirror_index : torch.Tensor
        Flat rfft-grid index of every ``mirror`` entry (see ``mirrored_half``).
    """

    product: torch.Tensor
    maps: torch.Tensor
    template: torch.Tensor
    pair_maps: torch.Tensor
    spectrum: torch.Tensor
    dft: torch.Tensor
    mirror: torch.Tensor
    mirror_index: torch.Tensor


def workspace(inputs: SearchInputs, orientations: int = 1) -> Workspace:
    """Allocate the buffers for ``inputs`` (half precision when it is fp16).

    ``orientations`` is the number G of orientations whose maps the workspace
    holds at once (``slot`` selects one), so that they are folded into the
    statistics together.
    """
    singles, pairs = int(inputs.filtered_image.shape[1]), inputs.n_pairs
    g = min(inputs.transform_group, singles)
    h, w = inputs.image_shape
    half = inputs.precision == "fp16"
    device = inputs.device
    full = (1 if pairs else 0, h, w)
    rfft_grid = (1, h, w // 2 + 1)
    if pairs:
        # int32: as fast a gather as int64 (9.7-9.9 against 10.9-11.1 ms at
        # 4096^2, 2 cores) in half the memory (64 MiB less at 4096^2)
        grid = h * (w // 2 + 1)
        index = torch.arange(grid, dtype=torch.int32, device=device)
        index = index.view(rfft_grid[1:])
        mirror_index = mirrored_half(index, w).flatten()
    else:
        mirror_index = torch.zeros(0, dtype=torch.int32, device=device)
    return Workspace(
        product=torch.empty(
            (g, h, w // 2 + 1),
            dtype=torch.complex32 if half else torch.complex64,
            device=device,
        ),
        maps=torch.empty(
            (orientations * singles, h, w),
            dtype=torch.float16 if half else torch.float32,
            device=device,
        ),
        template=torch.empty(full, dtype=torch.complex64, device=device),
        pair_maps=torch.empty(
            (orientations * pairs, h, w), dtype=torch.complex64, device=device
        ),
        spectrum=torch.zeros(rfft_grid, dtype=torch.complex64, device=device),
        dft=torch.empty(rfft_grid, dtype=torch.complex64, device=device),
        mirror=torch.empty(mirror_index.shape, dtype=torch.complex64, device=device),
        mirror_index=mirror_index,
    )


def slot(space: Workspace, inputs: SearchInputs, index: int) -> Workspace:
    """Return the workspace of orientation ``index`` of a group (shared scratch)."""
    singles, pairs = int(inputs.filtered_image.shape[1]), inputs.n_pairs
    return replace(
        space,
        maps=space.maps[index * singles : (index + 1) * singles],
        pair_maps=space.pair_maps[index * pairs : (index + 1) * pairs],
    )


def _filtered_products(
    inputs: SearchInputs,
    conj: torch.Tensor,
    norms: torch.Tensor,
    pixel_index: int,
    space: Workspace,
    first_filter: int = 0,
) -> torch.Tensor:
    """Multiply unpaired filtered images by ``conj`` into ``space.product``.

    Unpaired filters ``first_filter`` to ``first_filter + G`` (G = the workspace's
    size) of pixel size ``pixel_index``; ``conj`` is the projection DFT's
    conjugate (materialised once per orientation), ``norms`` those G filters'
    norms. In fp16 the product is also scaled by ``1 / (H W norms)`` (see the
    module notes).

    Returns
    -------
    torch.Tensor
        ``space.product``, ``(G, H, W // 2 + 1)``.
    """
    group = int(space.product.shape[0])
    filtered = inputs.filtered_image[pixel_index, first_filter : first_filter + group]
    product = space.product[: filtered.shape[0]]
    if inputs.precision == "fp16":
        h, w = inputs.image_shape
        scale = (1.0 / (norms * (h * w)))[:, None, None]
        return product.copy_(filtered * conj * scale)
    return torch.mul(filtered, conj, out=product)


def _inverse_transforms(
    inputs: SearchInputs, space: Workspace, count: int | None = None, first: int = 0
) -> torch.Tensor:
    """``irfft2`` of the first ``count`` products into ``space.maps[first:]``.

    In fp32 the maps still need dividing by the norms (the statistics update does
    it); in fp16 they are already normalised.

    Returns
    -------
    torch.Tensor
        The ``(count, H, W)`` maps written.
    """
    n = int(space.product.shape[0]) if count is None else count
    norm = "forward" if inputs.precision == "fp16" else "backward"
    return torch.fft.irfft2(
        space.product[:n],
        s=inputs.image_shape,
        norm=norm,
        out=space.maps[first : first + n],
    )


def _conjugate_template(
    dft: torch.Tensor, space: Workspace, width: int
) -> torch.Tensor:
    """Write ``conj(P)`` on the full grid into ``space.template[0]`` and return it.

    The rfft half is conjugated; on the other columns ``conj(P[k]) = P[-k]``.
    """
    split = int(dft.shape[-1])
    template = space.template[0]
    template[:, :split].copy_(dft.conj())
    # mirrored_half(dft) as one gather into a reused buffer (no allocation)
    mirror = torch.index_select(dft.flatten(), 0, space.mirror_index, out=space.mirror)
    template[:, split:].copy_(mirror.view(template.shape[0], width - split))
    return template


def _pair_product(
    inputs: SearchInputs, pixel_index: int, pair: int, space: Workspace
) -> torch.Tensor:
    """Pair ``pair``'s filtered image times ``space.template`` into its map's place."""
    assert inputs.paired_image is not None
    product = space.pair_maps[pair]
    return torch.mul(
        inputs.paired_image[pixel_index, pair], space.template[0], out=product
    )


def _pair_transform(space: Workspace, pair: int) -> torch.Tensor:
    """Complex ``ifft2`` of ``space.pair_maps[pair]`` (its product), in place."""
    product = space.pair_maps[pair]
    return torch.fft.ifft2(product, out=product)


def _paired_transforms(
    inputs: SearchInputs,
    dft: torch.Tensor,
    pixel_index: int,
    space: Workspace,
    clock: StageClock | None = None,
) -> None:
    """Fill ``space.pair_maps`` with every pair's two (unnormalised) maps.

    Parameters
    ----------
    dft : torch.Tensor
        ``(H, W // 2 + 1)`` projection DFT.
    clock : StageClock, optional
        Charged with the products ("multiply") and transforms ("inverse_fft").
    """
    if inputs.n_pairs == 0:
        return
    with timed(clock, "multiply"):
        _conjugate_template(dft, space, inputs.image_shape[1])
    for j in range(inputs.n_pairs):
        with timed(clock, "multiply"):
            _pair_product(inputs, pixel_index, j, space)
        with timed(clock, "inverse_fft"):
            _pair_transform(space, j)


def transform_orientation(
    inputs: SearchInputs,
    dft: torch.Tensor,
    norms: torch.Tensor,
    pixel_index: int,
    space: Workspace,
    clock: StageClock | None = None,
) -> None:
    """Inverse-transform all D correlations of one projection into ``space``.

    Parameters
    ----------
    inputs : SearchInputs
        Engine tensors.
    dft : torch.Tensor
        ``(H, W // 2 + 1)`` projection DFT.
    norms : torch.Tensor
        ``(D,)`` its filtered norms (used only to scale fp16 products).
    pixel_index : int
        Pixel size whose filtered images are multiplied.
    space : Workspace
        Buffers of ``workspace(inputs)``; the maps are left there.
    clock : StageClock, optional
        Charged with the products ("multiply") and transforms ("inverse_fft").
    """
    _paired_transforms(inputs, dft, pixel_index, space, clock)
    singles = int(inputs.filtered_image.shape[1])
    if singles == 0:
        return
    with timed(clock, "multiply"):
        conj = dft.conj().resolve_conj()
    size = int(space.product.shape[0])
    offset = 2 * inputs.n_pairs
    for start in range(0, singles, size):
        group = norms[offset + start : offset + start + size]
        with timed(clock, "multiply"):
            _filtered_products(inputs, conj, group, pixel_index, space, start)
        with timed(clock, "inverse_fft"):
            _inverse_transforms(inputs, space, int(group.shape[0]), start)
