"""The device-agnostic search engine: projections, image-side filters, statistics.

Per orientation batch the engine extracts Fourier slices of the template
(torch-fourier-slice), transforms each projection once to the image size with a
pruned FFT, and then, for every filter f (defocus x pixel size), multiplies by the
image DFT pre-multiplied by that filter and inverse transforms into a buffer reused
for every orientation. The maps of all filters of one orientation are then divided by
the filtered projections' norms (Parseval, exact, as one matrix product) and folded
into the statistics in one pass (``SearchStatistics.update``, fused when
``SearchInputs.fused``). Everything runs on the device of the input tensors.

``SearchInputs.precision == "fp16"`` (CUDA only) runs the inverse FFT in half
precision: the product is pre-scaled by ``1 / (H W norm)`` so that every value of the
transform stays near the unit-variance correlations, far from float16 overflow.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

import torch
from torch_fourier_slice import extract_central_slices_rfft_3d

from twodtm.ctf import Optics, ctf_stack
from twodtm.errors import DeviceError
from twodtm.preprocess import PreparedImage
from twodtm.search.space import SearchSpace
from twodtm.search.statistics import SearchStatistics

Precision = Literal["fp32", "fp16"]
# Below this many pixel-correlations (n * H * W) the compile time of the fused
# statistics kernel (~20-40 s on 2 CPU cores) costs more than it saves.
FUSED_MIN_WORK = 2e9


@dataclass(frozen=True)
class SearchInputs:
    """Tensors the engine needs, all on one device.

    Attributes
    ----------
    template_dft : torch.Tensor
        ``(p, p, p // 2 + 1)`` template from ``preprocess.prepare_template``.
    template_size : int
        Box size t of the projections (before the template's Fourier padding).
    filtered_image : torch.Tensor
        ``(P, D, H, W // 2 + 1)`` complex64: the whitened image DFT times each
        template filter (CTF x whitening x bandpass), which is real.
    norm_weights : torch.Tensor
        ``(P, D, K)`` float32 with ``K = H * (W // 2 + 1)``: squared filters times
        the rfft Parseval weights over ``H * W``, so ``norm_weights[p] @ |P|^2``
        is the squared norm of each filtered projection in real space.
    pixel_scales : tuple[float, ...]
        Per pixel size, the factor on slice frequencies (template / micrograph px).
    image_shape : tuple[int, int]
        ``(H, W)`` of the searched (padded) image.
    precision : {"fp32", "fp16"}
        Precision of the inverse FFTs; "fp16" needs CUDA and power-of-two sizes.
    fused : bool
        Fold each orientation's maps into the statistics with the compiled
        one-pass kernel (``statistics.fused_accumulate``).
    filters_per_transform : int
        Defocus maps per inverse-FFT call (0: all D at once). On the CPU one map
        at a time stays in cache and measured 2.6x faster per map than 13 batched;
        on CUDA a batch of all D fills the device.
    """

    template_dft: torch.Tensor
    template_size: int
    filtered_image: torch.Tensor
    norm_weights: torch.Tensor
    pixel_scales: tuple[float, ...]
    image_shape: tuple[int, int]
    precision: Precision = "fp32"
    fused: bool = False
    filters_per_transform: int = 0

    @property
    def transform_group(self) -> int:
        """Defocus maps per inverse FFT, resolved (1..D)."""
        d = int(self.filtered_image.shape[1])
        group = self.filters_per_transform
        return d if group <= 0 else min(group, d)

    @property
    def n_filters(self) -> int:
        """Filters per orientation, ``P * D``."""
        return int(self.filtered_image.shape[0] * self.filtered_image.shape[1])

    @property
    def device(self) -> torch.device:
        """Device of all the tensors."""
        return self.filtered_image.device


def parseval_weights(
    shape: tuple[int, int], device: torch.device | str
) -> torch.Tensor:
    """``(H, W // 2 + 1)`` weights turning an rfft2 power sum into a real-space sum.

    ``sum(x**2) == (weights * |rfft2(x)|**2).sum()`` for a real ``(H, W)`` array.
    """
    h, w = shape
    weights = torch.full((h, w // 2 + 1), 2.0, device=device)
    weights[:, 0] = 1.0
    if w % 2 == 0:
        weights[:, -1] = 1.0
    return weights / (h * w)


def build_search_inputs(
    template_dft: torch.Tensor,
    template_size: int,
    image: PreparedImage,
    optics: Optics,
    space: SearchSpace,
    template_pixel_size: float | None = None,
) -> SearchInputs:
    """Assemble the engine's tensors for one micrograph and template.

    Parameters
    ----------
    template_dft : torch.Tensor
        Output of ``preprocess.prepare_template`` on the target device.
    template_size : int
        Box size of the template map.
    image : PreparedImage
        Output of ``preprocess.prepare_image`` on the same device.
    optics : Optics
        Micrograph optics; the CTF of each filter uses them.
    space : SearchSpace
        Defocus offsets and pixel sizes searched.
    template_pixel_size : float, optional
        Template voxel size; defaults to the micrograph pixel size.

    Returns
    -------
    SearchInputs
    """
    device = image.whitened_dft.device
    shape = image.padded_shape
    template_px = (
        optics.pixel_size if template_pixel_size is None else template_pixel_size
    )
    filtered, weights, scales = [], [], []
    offsets = space.defocus_offsets.to(device=device, dtype=torch.float32)
    parseval = parseval_weights(shape, device)
    for pixel_size in space.pixel_sizes.tolist():
        filters = ctf_stack(optics, offsets, shape, pixel_size) * image.template_filter
        filtered.append(image.whitened_dft * filters)
        weights.append((filters.square() * parseval).flatten(1))
        scales.append(template_px / pixel_size)
    return SearchInputs(
        template_dft=template_dft,
        template_size=template_size,
        filtered_image=torch.stack(filtered).to(torch.complex64),
        norm_weights=torch.stack(weights).to(torch.float32),
        pixel_scales=tuple(scales),
        image_shape=shape,
    )


def project(
    inputs: SearchInputs, rotations: torch.Tensor, scale: float
) -> torch.Tensor:
    """Real-space template projections, centred in a ``t x t`` box.

    Parameters
    ----------
    inputs : SearchInputs
        Engine tensors.
    rotations : torch.Tensor
        ``(B, 3, 3)`` rotation matrices (not modified).
    scale : float
        Magnification of the slice frequencies (pixel-size search).

    Returns
    -------
    torch.Tensor
        ``(B, t, t)`` float32, projection centre at index ``t // 2``.
    """
    matrices = rotations.to(device=inputs.device, dtype=torch.float32) * scale
    slices = extract_central_slices_rfft_3d(inputs.template_dft, matrices.clone())
    slices = torch.fft.ifftshift(slices, dim=-2)
    p = inputs.template_dft.shape[0]
    # One transform per orientation: batched FFTs round differently depending on
    # the batch's size, and the statistics must not depend on how work is batched.
    real = torch.stack(
        [torch.fft.irfft2(s, s=(p, p)) for s in slices.reshape(-1, *slices.shape[-2:])]
    )
    real = torch.fft.fftshift(real.reshape(*slices.shape[:-2], p, p), dim=(-2, -1))
    t = inputs.template_size
    start = p // 2 - t // 2
    return real[..., start : start + t, start : start + t]


def padded_dft(projections: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """rfft2 of centred ``(B, t, t)`` boxes placed at the origin of an ``(H, W)`` image.

    Equivalent to wrapping each box around pixel (0, 0) of a zero image and taking
    ``rfft2``, but only the t rows that hold data are transformed along x.

    Returns
    -------
    torch.Tensor
        ``(B, H, W // 2 + 1)`` complex64.
    """
    b, t = projections.shape[0], projections.shape[-1]
    h, w = shape
    half = t // 2
    rows = projections.new_zeros((b, t, w))
    rows[..., : t - half] = projections[..., half:]
    rows[..., w - half :] = projections[..., :half]
    rows_dft = torch.fft.rfft(rows, dim=-1)
    full = rows_dft.new_zeros((b, h, w // 2 + 1))
    full[:, : t - half] = rows_dft[:, half:]
    full[:, h - half :] = rows_dft[:, :half]
    return torch.fft.fft(full, dim=-2)


def projection_dfts(
    inputs: SearchInputs, rotations: torch.Tensor, pixel_index: int
) -> torch.Tensor:
    """Image-size DFTs ``(B, H, W // 2 + 1)`` of the projections at one pixel size."""
    return padded_dft(
        project(inputs, rotations, inputs.pixel_scales[pixel_index]), inputs.image_shape
    )


def filter_norms(
    inputs: SearchInputs, dfts: torch.Tensor, pixel_index: int
) -> torch.Tensor:
    """Real-space norms ``(B, D)`` of every projection under every defocus filter."""
    # |P|^2 as the real part of P conj(P): one pass, no square root (as abs() has).
    power = (dfts * dfts.conj()).real.flatten(1)
    squared = inputs.norm_weights[pixel_index] @ power.T  # (D, K) @ (K, B): a GEMV
    return squared.T.clamp_min(1e-30).sqrt()


def correlate(
    inputs: SearchInputs, dft: torch.Tensor, norms: torch.Tensor, pixel_index: int
) -> torch.Tensor:
    """Normalised cross-correlations ``(D, H, W)`` of one projection with the image.

    Parameters
    ----------
    dft : torch.Tensor
        ``(H, W // 2 + 1)`` projection DFT from ``projection_dfts``.
    norms : torch.Tensor
        ``(D,)`` its filtered norms from ``filter_norms``.
    """
    product = inputs.filtered_image[pixel_index] * dft.conj()
    maps = torch.fft.irfft2(product, s=inputs.image_shape)
    return maps / norms[:, None, None]


def use_fused(
    device: torch.device | str, n_correlations: int, shape: tuple[int, int]
) -> bool:
    """Whether the compiled statistics kernel pays for its compile time.

    Always on CUDA; on the CPU from ``FUSED_MIN_WORK`` pixel-correlations on.
    """
    if torch.device(device).type == "cuda":
        return True
    return n_correlations * shape[0] * shape[1] >= FUSED_MIN_WORK


def check_precision(
    precision: str, device: torch.device, shape: tuple[int, int]
) -> None:
    """Raise ``DeviceError`` if ``precision`` cannot run on ``device`` at ``shape``."""
    if precision == "fp32":
        return
    if precision != "fp16":
        raise DeviceError(
            f"compute.precision: unknown value {precision!r}; use fp32 or fp16"
        )
    if device.type != "cuda":
        raise DeviceError(
            "compute.precision: fp16 FFTs need a CUDA device; use fp32 on the CPU"
        )
    if any(n & (n - 1) for n in shape):
        raise DeviceError(
            f"compute.precision: fp16 FFTs need power-of-two sizes, the padded image "
            f"is {shape[0]}x{shape[1]}; crop or pad the micrograph, or use fp32"
        )


def default_filters_per_transform(device: torch.device) -> int:
    """Defocus maps per inverse FFT: 1 on the CPU (cache), all (0) on CUDA."""
    return 0 if device.type == "cuda" else 1


def auto_batch_size(
    device: torch.device, image_shape: tuple[int, int], n_filters: int = 1
) -> int:
    """Orientations per engine call that fit in a quarter of the free memory.

    Memory is bounded by one ``(H, W // 2 + 1)`` complex64 DFT per orientation
    (generous: the engine holds one at a time) plus the workspace (``n_filters``
    products and maps), paid once. On the CPU, where larger batches only amortise
    the slicer's copy of the template volume, the result is at most 32.
    """
    h, w = image_shape
    per_orientation = h * (w // 2 + 1) * 8
    fixed = n_filters * h * (w // 2 + 1) * 12
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        ceiling = 64
    else:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        ceiling = 32
    return int(max(1, min(ceiling, (0.25 * free - fixed) // per_orientation)))


@dataclass(frozen=True)
class Workspace:
    """Buffers reused for every orientation of a batch (no allocation per map).

    Attributes
    ----------
    product : torch.Tensor
        ``(G, H, W // 2 + 1)`` filtered images times the projection's conjugate
        DFT, G = ``SearchInputs.transform_group`` filters at a time.
    maps : torch.Tensor
        ``(D, H, W)`` inverse transforms of all D filters' products, folded into
        the statistics once per orientation.
    """

    product: torch.Tensor
    maps: torch.Tensor


def workspace(inputs: SearchInputs) -> Workspace:
    """Allocate the buffers for ``inputs`` (half precision when it is fp16)."""
    g, d = inputs.transform_group, int(inputs.filtered_image.shape[1])
    h, w = inputs.image_shape
    half = inputs.precision == "fp16"
    return Workspace(
        product=torch.empty(
            (g, h, w // 2 + 1),
            dtype=torch.complex32 if half else torch.complex64,
            device=inputs.device,
        ),
        maps=torch.empty(
            (d, h, w),
            dtype=torch.float16 if half else torch.float32,
            device=inputs.device,
        ),
    )


def filtered_products(
    inputs: SearchInputs,
    dft: torch.Tensor,
    norms: torch.Tensor,
    pixel_index: int,
    space: Workspace,
    first_filter: int = 0,
    conjugated: bool = False,
) -> torch.Tensor:
    """Multiply filtered images by ``conj(dft)`` into ``space.product``.

    Filters ``first_filter`` to ``first_filter + G`` (G = the workspace's size) of
    pixel size ``pixel_index``; ``norms`` holds those G filters' norms. In fp16 the
    product is also scaled by ``1 / (H W norms)`` (see the module notes). Pass
    ``conjugated=True`` when ``dft`` already holds the conjugate (saves a copy).

    Returns
    -------
    torch.Tensor
        ``space.product``, ``(G, H, W // 2 + 1)``.
    """
    group = int(space.product.shape[0])
    filtered = inputs.filtered_image[pixel_index, first_filter : first_filter + group]
    product = space.product[: filtered.shape[0]]
    other = dft if conjugated else dft.conj().resolve_conj()
    if inputs.precision == "fp16":
        h, w = inputs.image_shape
        scale = (1.0 / (norms * (h * w)))[:, None, None]
        return product.copy_(filtered * other * scale)
    return torch.mul(filtered, other, out=product)


def inverse_transforms(
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


def search_orientations(
    inputs: SearchInputs,
    rotations: torch.Tensor,
    first_orientation: int,
    statistics: SearchStatistics,
    crop: tuple[int, int] | None = None,
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
    statistics : SearchStatistics
        Accumulator on the engine's device, updated in place.
    crop : tuple[int, int], optional
        Accumulate only the top-left region (the unpadded micrograph).
    """
    h, w = crop if crop is not None else inputs.image_shape
    n_pixel, n_defocus = (int(n) for n in inputs.filtered_image.shape[:2])
    space = workspace(inputs)
    for pixel_index in range(n_pixel):
        # Slices for the whole batch at once (the slicer copies the template volume
        # once per call), image-size DFTs one orientation at a time (bounded memory).
        projections = project(inputs, rotations, inputs.pixel_scales[pixel_index])
        for b in range(projections.shape[0]):
            dft = padded_dft(projections[b : b + 1], inputs.image_shape)
            norms = filter_norms(inputs, dft, pixel_index)[0]
            conj = dft[0].conj().resolve_conj()
            size = int(space.product.shape[0])
            for start in range(0, n_defocus, size):
                group = norms[start : start + size]
                filtered_products(inputs, conj, group, pixel_index, space, start, True)
                inverse_transforms(inputs, space, int(group.shape[0]), start)
            first = ((first_orientation + b) * n_pixel + pixel_index) * n_defocus
            divisors = None if inputs.precision == "fp16" else norms
            statistics.update(
                space.maps[:, :h, :w], first, divisors, fused=inputs.fused
            )
