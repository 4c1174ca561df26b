"""The engine's inputs: the tensors of one micrograph and template on one device.

``build_search_inputs`` multiplies the whitened image DFT by every template
filter (CTF x whitening x bandpass, per defocus and pixel size) and builds the
filters' norm kernels (``search.norms``); ``SearchInputs`` holds them with the
padded template and the run settings (``search.options.apply_run_options``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from twodtm.ctf import Optics, ctf_stack
from twodtm.preprocess import PreparedImage
from twodtm.search.norms import has_lag_room, lag_kernels, parseval_weights
from twodtm.search.projection import Projector
from twodtm.search.space import SearchSpace

__all__ = ["Precision", "SearchInputs", "build_search_inputs"]

Precision = Literal["fp32", "fp16"]


@dataclass(frozen=True)
class SearchInputs:
    """Tensors the engine needs, all on one device.

    Attributes
    ----------
    template_dft : torch.Tensor
        ``(p, p, p // 2 + 1)`` complex64 template from
        ``preprocess.prepare_template``.
    template_size : int
        Box size t of the projections (before the template's Fourier padding).
    filtered_image : torch.Tensor
        ``(P, D, H, W // 2 + 1)`` complex64: the whitened image DFT times each
        template filter (CTF x whitening x bandpass), which is real.
    norm_weights : torch.Tensor or None
        ``(P, D, K)`` float32 with ``K = H * (W // 2 + 1)``: squared filters times
        the rfft Parseval weights over ``H * W``, so ``norm_weights[p] @ |P|^2``
        is the squared norm of each filtered projection in real space. Built only
        where ``norm_kernels`` cannot be (None otherwise: at 4096^2 and 13 defocus
        values they would hold 437 MB per pixel size).
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
    norm_kernels : torch.Tensor, optional
        ``(P, D, 2t (t + 1))`` float32: each filter's squared response by lag
        as a spectrum on the ``(2t, 2t)`` rfft grid (see ``lag_kernels``);
        None when the image is smaller than ``2t - 1`` in either dimension
        (``has_lag_room``; norms then come from ``norm_weights``).
    paired_image : torch.Tensor, optional
        ``(P, D2, H, W)`` complex64 on the full DFT grid: filtered images
        ``F[2j] + i F[2j + 1]`` of defocus pairs (see ``pair_filters``). When set,
        ``filtered_image`` holds only the filters after the pairs (``D - 2 D2``).
    slice_size : int
        Box m in which projections are formed before the crop to t (see
        ``project``): 0 for the padded size p (exact whatever the map), else
        ``projection_box`` of the map, t for a map inside its inscribed sphere.
    compiled_slices : bool
        Sample the slices with the compiled kernel
        (``projection.compiled_slices``); runs set it with ``fused``, since
        both compile once per process and pay only for long searches.
    """

    template_dft: torch.Tensor
    template_size: int
    filtered_image: torch.Tensor
    norm_weights: torch.Tensor | None
    pixel_scales: tuple[float, ...]
    image_shape: tuple[int, int]
    precision: Precision = "fp32"
    fused: bool = False
    filters_per_transform: int = 0
    norm_kernels: torch.Tensor | None = None
    paired_image: torch.Tensor | None = None
    slice_size: int = 0
    compiled_slices: bool = False

    @property
    def n_pairs(self) -> int:
        """Defocus pairs transformed together (``D2``; 0 without pairing)."""
        return 0 if self.paired_image is None else int(self.paired_image.shape[1])

    @property
    def n_defocus(self) -> int:
        """Defocus values (filters per pixel size) D."""
        return 2 * self.n_pairs + int(self.filtered_image.shape[1])

    @property
    def transform_group(self) -> int:
        """Unpaired defocus maps per inverse real FFT, resolved (1..D - 2 D2)."""
        d = max(int(self.filtered_image.shape[1]), 1)
        group = self.filters_per_transform
        return d if group <= 0 else min(group, d)

    @property
    def n_filters(self) -> int:
        """Filters per orientation, ``P * D``."""
        return int(self.filtered_image.shape[0]) * self.n_defocus

    @property
    def device(self) -> torch.device:
        """Device of all the tensors."""
        return self.filtered_image.device

    @property
    def projector(self) -> Projector:
        """The template and box sizes ``projection.project`` needs."""
        return Projector(
            self.template_dft, self.template_size, self.slice_size, self.compiled_slices
        )


def build_search_inputs(
    template_dft: torch.Tensor,
    template_size: int,
    image: PreparedImage,
    optics: Optics,
    space: SearchSpace,
    template_pixel_size: float | None = None,
    slice_size: int = 0,
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
    slice_size : int
        ``SearchInputs.slice_size``: ``projection_box`` of the map, or 0 for
        the padded size (exact for any map, (p / m)^2 more slice samples).

    Returns
    -------
    SearchInputs
    """
    device = image.whitened_dft.device
    shape = image.padded_shape
    template_px = (
        optics.pixel_size if template_pixel_size is None else template_pixel_size
    )
    by_lag = has_lag_room(shape, template_size)
    filtered, norms, scales = [], [], []
    offsets = space.defocus_offsets.to(device=device, dtype=torch.float32)
    # The CTF stays in pixel units for every trial pixel size (see ctf_stack), so
    # the filters, filtered images and norm kernels are the same for all of them.
    filters = ctf_stack(optics, offsets, shape) * image.template_filter
    filtered_one = image.whitened_dft * filters
    if by_lag:
        norm_one = lag_kernels(filters, shape, template_size)
    else:
        norm_one = (filters.square() * parseval_weights(shape, device)).flatten(1)
    for pixel_size in space.pixel_sizes.tolist():
        filtered.append(filtered_one)
        norms.append(norm_one)
        scales.append(template_px / pixel_size)
    stacked = torch.stack(norms).to(torch.float32)
    return SearchInputs(
        template_dft=template_dft,
        template_size=template_size,
        filtered_image=torch.stack(filtered).to(torch.complex64),
        norm_weights=None if by_lag else stacked,
        pixel_scales=tuple(scales),
        image_shape=shape,
        norm_kernels=stacked if by_lag else None,
        slice_size=slice_size,
    )
