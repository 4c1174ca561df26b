"""The device-agnostic search engine: projections, image-side filters, statistics.

Per orientation batch the engine samples central slices of the Fourier-padded
template (``central_slices``: torch-fourier-slice's sampler and conventions) at
the frequencies of the smallest box that holds the projections
(``projection_box``, usually the template's own box t rather than the padded
2t: 4x fewer samples and a 4x smaller inverse transform), transforms each
projection once to the image size with a pruned FFT, and then, for every filter
f (defocus x pixel size), multiplies by the image DFT pre-multiplied by that
filter and inverse transforms into buffers reused for every orientation. With
``pair_filters`` (the CPU default) two defocus filters share one complex inverse
FFT, their maps being its real and imaginary parts. The maps of all filters of
one orientation are divided by the filtered projections' norms (exact, from the
projection's autocorrelation: ``lag_kernels``) and folded into the statistics in
one pass (``SearchStatistics.update`` or, for pairs, ``PairedStatistics.update``;
compiled when ``SearchInputs.fused``). Everything runs on the device of the
input tensors.

``SearchInputs.precision == "fp16"`` (CUDA only) runs the inverse FFT in half
precision: the product is pre-scaled by ``1 / (H W norm)`` so that every value of the
transform stays near the unit-variance correlations, far from float16 overflow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

import torch

from twodtm.ctf import Optics, ctf_stack
from twodtm.errors import DeviceError
from twodtm.preprocess import PreparedImage
from twodtm.search.space import SearchSpace
from twodtm.search.statistics import PairedStatistics, SearchStatistics

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


def has_lag_room(shape: tuple[int, int], template_size: int) -> bool:
    """Whether every lag of a t-pixel box's autocorrelation fits in the image once.

    Lags reach ``t - 1`` each way, so ``H`` and ``W`` must be at least ``2t - 1``
    (else lags would wrap around the image and ``lag_kernels`` would be wrong).
    """
    return min(shape) >= 2 * template_size - 1


def lag_kernels(
    filters: torch.Tensor, shape: tuple[int, int], template_size: int
) -> torch.Tensor:
    """Squared filter responses by lag, as spectra on the ``(2t, 2t)`` grid.

    A projection p filtered by F has ``sum((F * p)^2) = sum_x a(x) g(x)``, with a
    the autocorrelation of p and ``g = irfft2(F^2)`` (Parseval). A t-pixel box
    has ``a(x) = 0`` beyond ``|x| < t`` per axis, so g is needed only at those
    lags, where the circular autocorrelation on a ``(2t, 2t)`` grid is the linear
    one. Parseval on that grid turns the sum into ``sum_k |P(k)|^2 G(k)``, with
    P the box's rfft2 at ``(2t, 2t)`` and G the real part of the rfft2 of g there
    (times the rfft weights): norms cost one small transform and a dot product
    instead of a pass over the ``(H, W // 2 + 1)`` grid. At an even width's
    Nyquist column ``irfft2`` keeps the Hermitian part of ``F^2``, as it does of
    the maps there.

    Parameters
    ----------
    filters : torch.Tensor
        ``(D, H, W // 2 + 1)`` real filters on the image's rfft grid.
    shape : tuple[int, int]
        ``(H, W)``.
    template_size : int
        Box size t of the projections.

    Returns
    -------
    torch.Tensor
        ``(D, 2t (t + 1))`` float32: flattened ``(2t, t + 1)`` rfft grid.
        Needs ``has_lag_room(shape, t)``.
    """
    h, w = shape
    t = template_size
    lags = torch.arange(-(t - 1), t, device=filters.device)
    rows, columns = (lags % h)[:, None], (lags % w)[None, :]
    slots = lags % (2 * t)
    kernels = torch.zeros(
        (filters.shape[0], 2 * t, 2 * t), dtype=torch.float64, device=filters.device
    )
    for d, response in enumerate(filters):
        g = torch.fft.irfft2(response.double().square().to(torch.complex128), s=shape)
        kernels[d, slots[:, None], slots[None, :]] = g[rows, columns]
    weights = parseval_weights((2 * t, 2 * t), filters.device)
    spectra = torch.fft.rfft2(kernels).real * weights
    return spectra.flatten(1).to(torch.float32)


def projection_norms(
    inputs: SearchInputs, projection: torch.Tensor, pixel_index: int
) -> torch.Tensor:
    """Real-space norms ``(D,)`` of one ``(t, t)`` projection under every filter.

    Exact (see ``lag_kernels``); needs ``inputs.norm_kernels``. One projection at
    a time, so that no result depends on how orientations are batched.
    """
    assert inputs.norm_kernels is not None
    t2 = 2 * int(projection.shape[-1])
    spectrum = torch.fft.rfft2(projection, s=(t2, t2))
    power = spectrum.real.square() + spectrum.imag.square()
    squared = inputs.norm_kernels[pixel_index] @ power.flatten()
    return squared.clamp_min(1e-30).sqrt()


def mirrored_half(half: torch.Tensor, width: int) -> torch.Tensor:
    """Values ``X[-k]`` for the columns an rfft grid leaves out.

    Parameters
    ----------
    half : torch.Tensor
        ``(..., H, W // 2 + 1)`` rfft2 of real ``(H, W)`` data.
    width : int
        W.

    Returns
    -------
    torch.Tensor
        ``(..., H, W - W // 2 - 1)``: entry ``[r, c]`` holds ``half[-r, W - c']``
        for full-grid column ``c' = W // 2 + 1 + c``; the full DFT there is its
        complex conjugate (Hermitian symmetry).
    """
    rows = _negated_rows(half)
    return half[..., rows, 1 : width - half.shape[-1] + 1].flip(-1)


def _negated_rows(half: torch.Tensor) -> torch.Tensor:
    """Row index of frequency ``-ky`` for every row ``ky`` of a DFT grid."""
    h = half.shape[-2]
    return (-torch.arange(h, device=half.device)) % h


def full_grid(half: torch.Tensor, width: int) -> torch.Tensor:
    """Return the full ``(..., H, W)`` DFT of real data from its rfft2 half."""
    return torch.cat([half, mirrored_half(half, width).conj()], dim=-1)


def hermitian_nyquist(half: torch.Tensor, width: int) -> torch.Tensor:
    """Make the Nyquist column of an rfft grid Hermitian, as ``irfft2`` reads it.

    An astigmatic CTF differs at ``(ky, +1/2)`` and its partner ``(-ky, -1/2)``,
    which the rfft grid stores as ``(-ky, +1/2)``. ``irfft2`` keeps only the
    Hermitian part of that column; a complex transform must be given the same,
    or the non-Hermitian rest leaks into the imaginary part (the other map).

    Returns
    -------
    torch.Tensor
        A copy of ``half`` (``(..., H, W // 2 + 1)``), column W/2 symmetrised
        when W is even.
    """
    half = half.clone()
    if width % 2 == 0:
        column = half[..., width // 2]
        half[..., width // 2] = 0.5 * (column + column[..., _negated_rows(half)].conj())
    return half


def pair_filters(inputs: SearchInputs) -> SearchInputs:
    """Pair defocus filters so that one complex inverse FFT yields two maps.

    For real maps ``a`` and ``b``, ``ifft2(A + iB) = a + ib``; on this project's
    CPU one complex transform of the full grid costs 0.6-0.75x per map what one
    ``irfft2`` each does (1024^2 and 4096^2). Filters ``2j`` and ``2j + 1`` become
    pair j; an odd last filter stays in ``filtered_image`` (real transform).

    Returns
    -------
    SearchInputs
        The same inputs with ``paired_image`` set (unchanged if already paired or
        D < 2).
    """
    filtered = inputs.filtered_image
    n_pixel, n_defocus, h, _ = (int(n) for n in filtered.shape)
    pairs = n_defocus // 2
    if inputs.paired_image is not None or pairs == 0:
        return inputs
    width = inputs.image_shape[1]
    filtered = hermitian_nyquist(filtered, width)
    paired = torch.empty(
        (n_pixel, pairs, h, width), dtype=torch.complex64, device=filtered.device
    )
    for j in range(pairs):
        paired[:, j] = full_grid(filtered[:, 2 * j], width) + 1j * full_grid(
            filtered[:, 2 * j + 1], width
        )
    return replace(
        inputs,
        filtered_image=filtered[:, 2 * pairs :].clone(),
        paired_image=paired,
    )


def planar_template(template_dft: torch.Tensor) -> torch.Tensor:
    """View a complex ``(p, p, q)`` template as ``(2, p, p, q)`` real channels.

    No copy: the two parts of a voxel stay side by side in memory (channel
    stride 1), which the sampler reads 1.2-1.3x faster than two separate
    volumes (measured at t = 256, padding 2). A real ``(2, p, p, q)`` tensor is
    returned as it is.
    """
    if template_dft.is_complex():
        return torch.view_as_real(template_dft).permute(3, 0, 1, 2)
    return template_dft


def slice_frequencies(size: int, device: torch.device) -> torch.Tensor:
    """``(size, size // 2 + 1, 2)`` frequencies ``(ky, kx)`` of a ``size`` box's rfft2.

    Cycles per voxel, unshifted layout (``fftfreq`` rows, ``rfftfreq`` columns).
    """
    ky = torch.fft.fftfreq(size, device=device)[:, None]
    kx = torch.fft.rfftfreq(size, device=device)[None, :]
    return torch.stack(torch.broadcast_tensors(ky, kx), dim=-1)


def _redundant_half(
    x: torch.Tensor, matrices: torch.Tensor, tolerance: float = 1e-8
) -> torch.Tensor:
    """Where a rotated frequency falls in the half the rfft grid leaves out.

    As torch-fourier-slice 0.6.0 decides it: ``kx < -tolerance``, and on the
    plane ``|kx| < tolerance`` by the sign of the matrix element that moves
    points off it (``R[0, 0]``, else ``R[0, 1]``), so that a point and its
    Friedel mate are never both taken from the stored half.

    Parameters
    ----------
    x : torch.Tensor
        ``(B, n)`` rotated x frequencies.
    matrices : torch.Tensor
        ``(B, 3, 3)`` xyz rotation matrices that rotated them.
    """
    r_xx = matrices[:, 0, 0, None]
    r_xy = matrices[:, 0, 1, None]
    edge = torch.where(r_xx.abs() > 10 * tolerance, r_xx < 0, r_xy < 0)
    return (x < -tolerance) | ((x.abs() < tolerance) & edge)


def _trilinear(volume: torch.Tensor, coordinates: torch.Tensor) -> torch.Tensor:
    """Trilinear samples ``(B, n, C)`` of a ``(C, d, h, w)`` volume at ``(B, n, 3)``.

    What ``torch_image_interpolation.sample_image_3d`` computes (the same
    ``grid_sample`` call and conventions: zyx array coordinates, border padding,
    zero outside ``[0, N - 1]``), with one batch element per row of
    ``coordinates`` against a stride-0 view of the volume (no copy): the CPU
    kernel spreads batch elements over threads, where ``sample_image_3d``'s
    single one runs on one thread (1.4x faster on 2 busy cores). Every point is
    computed alone, so no sample depends on the batch.
    """
    shape = torch.tensor(volume.shape[-3:], device=volume.device, dtype=torch.float32)
    grid = (coordinates / (0.5 * shape - 0.5) - 1.0).flip(-1)  # xyz in [-1, 1]
    batch = int(coordinates.shape[0])
    samples = torch.nn.functional.grid_sample(
        volume.expand(batch, *volume.shape),
        grid[:, None, None],
        mode="bilinear",  # trilinear on 5-D input
        padding_mode="border",
        align_corners=True,
    )[:, :, 0, 0]  # (B, C, n)
    inside = ((coordinates >= 0) & (coordinates <= shape - 1)).all(-1)
    return (samples * inside[:, None]).transpose(1, 2).contiguous()


def central_slices(
    template_dft: torch.Tensor, matrices: torch.Tensor, size: int
) -> torch.Tensor:
    """Central slices of the template DFT on the rfft grid of a ``size`` box.

    The slice at frequency k of rotation R is the template DFT at ``R (kx, ky,
    0)``, read by trilinear interpolation (``_trilinear``, torch-fourier-slice's
    sampler) from the padded ``(p, p, q)`` grid. With ``size = p`` this is
    torch-fourier-slice's slice of an even box; ``size = t < p`` samples every
    ``p / t``-th frequency, whose inverse transform is the p-box projection
    folded onto the t box (see ``project``). Frequencies in the half the rfft
    grid leaves out are read at ``-k`` and conjugated. Each frequency is sampled
    on its own (elementwise arithmetic): a slice does not depend on the other
    rotations of the batch.

    Parameters
    ----------
    template_dft : torch.Tensor
        ``prepare_template`` output: complex ``(p, p, q)``, the two full axes
        fftshifted (or its ``planar_template`` view).
    matrices : torch.Tensor
        ``(B, 3, 3)`` float32 xyz rotation matrices, possibly scaled (not
        modified).
    size : int
        Box size of the slices.

    Returns
    -------
    torch.Tensor
        ``(B, size, size // 2 + 1)`` complex64, unshifted rfft2 layout.
    """
    volume = planar_template(template_dft)
    p = int(volume.shape[-3])
    m = torch.where(matrices.abs() < 1e-8, torch.zeros_like(matrices), matrices)
    k = slice_frequencies(size, volume.device).reshape(-1, 2)
    ky, kx = k[:, 0], k[:, 1]
    # rotated (x, y, z) of the slice point (kx, ky, 0), one element at a time
    rotated = [m[:, i, 0, None] * kx + m[:, i, 1, None] * ky for i in range(3)]
    flip = _redundant_half(rotated[0], m)
    sign = torch.where(flip, -1.0, 1.0)
    # array coordinates (z, y, x): DC at p // 2 on the full axes, at 0 on x
    centre = float(p // 2)
    coordinates = torch.stack(
        [
            rotated[2] * sign * p + centre,
            rotated[1] * sign * p + centre,
            rotated[0] * sign * p,
        ],
        dim=-1,
    )
    values = torch.view_as_complex(_trilinear(volume, coordinates))
    values = torch.where(flip, values.conj(), values)
    return values.reshape(-1, size, size // 2 + 1)


# Share of a map's energy (squared deviation from its faces' mean) that may lie
# outside the projection box and fold back in: the correlation changes by about
# half of it (5e-4), below the 0.1-0.4 % the interpolation's folded ghosts cost.
BOX_ENERGY_TOLERANCE = 1e-3


def projection_box(
    volume: torch.Tensor,
    padded_size: int,
    tolerance: float = BOX_ENERGY_TOLERANCE,
) -> int:
    """Smallest box, from t to p, that holds every projection of a map.

    The map's energy (squared deviation from the faces' mean, which
    ``prepare_template`` subtracts) is summed by distance from the centre voxel
    ``t // 2``; r is the radius outside which at most ``tolerance`` of it lies
    (a map's faint ringing or noise reaches every corner, so not every voxel
    can be held). Every projection of what lies inside lies within the disc of
    radius r about the box centre, which an even box of ``2 ceil(r) + 2``
    pixels (offsets ``-m / 2`` to ``m / 2 - 1``) holds. A map inside its
    inscribed sphere gets t.

    Parameters
    ----------
    volume : torch.Tensor
        ``(t, t, t)`` map (not modified).
    padded_size : int
        p of its ``prepare_template`` output (the largest box returned).
    tolerance : float
        Share of the energy allowed outside radius r.

    Returns
    -------
    int
        The box size m, ``t <= m <= p``, even or t itself.
    """
    t = int(volume.shape[-1])
    energy = _radial_energy(volume)
    outside = energy.flip(0).cumsum(0).flip(0)  # energy at radius >= each bin
    total = float(outside[0])
    if total <= 0.0:
        return t
    # smallest integer radius r with the energy beyond it within the tolerance
    radius = int((outside > tolerance * total).nonzero().max())
    needed = 2 * radius + 2
    return t if needed <= t else min(padded_size, needed)


def _radial_energy(volume: torch.Tensor) -> torch.Tensor:
    """Squared deviation from the faces' mean, summed in shells ``ceil(r) = k``.

    One z plane at a time (no t^3 radius array). Returns a float64 ``(K,)``.
    """
    t = int(volume.shape[-1])
    faces = torch.cat(
        [volume[[0, -1]].flatten(), volume[:, [0, -1]].flatten()]
        + [volume[..., [0, -1]].flatten()]
    )
    background = faces.double().mean()
    axis = torch.arange(t, device=volume.device, dtype=torch.float64) - t // 2
    plane = axis[:, None] ** 2 + axis[None, :] ** 2
    n_shells = math.ceil(math.sqrt(3) * (t - t // 2)) + 2
    shells = torch.zeros(n_shells, dtype=torch.float64, device=volume.device)
    for z in range(t):
        shell = (plane + axis[z] ** 2).sqrt().ceil().long().flatten()
        deviation = (volume[z].double() - background).square().flatten()
        shells += torch.bincount(shell, weights=deviation, minlength=n_shells)
    return shells


def project(
    inputs: SearchInputs, rotations: torch.Tensor, scale: float
) -> torch.Tensor:
    """Real-space template projections, centred in a ``t x t`` box.

    Slices are sampled at the frequencies of an m box (``central_slices``, m =
    ``inputs.slice_size``) from the Fourier-padded p-box template, transformed at
    m^2 and cropped to t. With m = p this is torch-fourier-slice's projection
    cropped. With m < p it is the p-box projection folded (periodised) onto the
    m box: where the map's projections fit in it (``projection_box``) only the
    trilinear interpolation's faint ghosts fold in (1.8-4 % of the norm against
    the p crop), for (p / m)^2 fewer samples and a smaller transform. Measured
    z-scores of true particles in ``benchmarks/RESULTS.md``.

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
    t = inputs.template_size
    m = inputs.slice_size or int(planar_template(inputs.template_dft).shape[-3])
    slices = central_slices(inputs.template_dft, matrices, m)
    # One transform per orientation: batched FFTs round differently depending on
    # the batch's size, and the statistics must not depend on how work is batched.
    real = torch.stack([torch.fft.irfft2(s, s=(m, m)) for s in slices])
    real = torch.fft.fftshift(real, dim=(-2, -1))
    start = m // 2 - t // 2
    return real[..., start : start + t, start : start + t]


def padded_dft(
    projections: torch.Tensor,
    shape: tuple[int, int],
    spectrum: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """rfft2 of centred ``(B, t, t)`` boxes placed at the origin of an ``(H, W)`` image.

    Equivalent to wrapping each box around pixel (0, 0) of a zero image and taking
    ``rfft2``, but only the t rows that hold data are transformed along x.

    Parameters
    ----------
    projections : torch.Tensor
        ``(B, t, t)`` real boxes.
    shape : tuple[int, int]
        ``(H, W)``.
    spectrum : torch.Tensor, optional
        ``(B, H, W // 2 + 1)`` complex64 work buffer, zero except in the rows this
        function writes (reuse it: no allocation per call).
    out : torch.Tensor, optional
        ``(B, H, W // 2 + 1)`` complex64 buffer for the result.

    Returns
    -------
    torch.Tensor
        ``(B, H, W // 2 + 1)`` complex64 (``out`` when given).
    """
    b, t = projections.shape[0], projections.shape[-1]
    h, w = shape
    half = t // 2
    rows = projections.new_zeros((b, t, w))
    rows[..., : t - half] = projections[..., half:]
    rows[..., w - half :] = projections[..., :half]
    rows_dft = torch.fft.rfft(rows, dim=-1)
    full = rows_dft.new_zeros((b, h, w // 2 + 1)) if spectrum is None else spectrum
    full[:, : t - half] = rows_dft[:, half:]
    full[:, h - half :] = rows_dft[:, :half]
    return torch.fft.fft(full, dim=-2, out=out)


def filter_norms(
    inputs: SearchInputs, dfts: torch.Tensor, pixel_index: int
) -> torch.Tensor:
    """Real-space norms ``(B, D)`` of every projection under every defocus filter.

    Needs ``inputs.norm_weights``, built where the image is too small for
    ``norm_kernels`` (``orientation_norms`` picks whichever the inputs hold).
    """
    assert inputs.norm_weights is not None
    # |P|^2 as the real part of P conj(P): one pass, no square root (as abs() has).
    power = (dfts * dfts.conj()).real.flatten(1)
    squared = inputs.norm_weights[pixel_index] @ power.T  # (D, K) @ (K, B): a GEMV
    return squared.T.clamp_min(1e-30).sqrt()


def orientation_norms(
    inputs: SearchInputs,
    projection: torch.Tensor,
    dft: torch.Tensor,
    pixel_index: int,
) -> torch.Tensor:
    """Norms ``(D,)`` of one projection: from lag kernels when built, else the DFT.

    Parameters
    ----------
    projection : torch.Tensor
        ``(t, t)`` real projection.
    dft : torch.Tensor
        ``(1, H, W // 2 + 1)`` its image-size DFT.
    """
    if inputs.norm_kernels is not None:
        return projection_norms(inputs, projection, pixel_index)
    return filter_norms(inputs, dft, pixel_index)[0]


def correlate(
    inputs: SearchInputs, dft: torch.Tensor, norms: torch.Tensor, pixel_index: int
) -> torch.Tensor:
    """Normalised cross-correlations ``(D, H, W)`` of one projection with the image.

    Computed exactly as the search computes them (same transforms, same rounding).

    Parameters
    ----------
    dft : torch.Tensor
        ``(H, W // 2 + 1)`` projection DFT from ``padded_dft``.
    norms : torch.Tensor
        ``(D,)`` its filtered norms from ``orientation_norms``.
    """
    space = workspace(inputs)
    transform_orientation(inputs, dft, norms, pixel_index, space)
    h, w = inputs.image_shape
    paired = torch.view_as_real(space.pair_maps).movedim(-1, 1).reshape(-1, h, w)
    maps = torch.cat([paired, space.maps.float()])
    if inputs.precision == "fp16":
        return maps
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


def default_paired(device: torch.device) -> bool:
    """Whether to pair defocus maps into complex transforms (CPU: yes)."""
    return device.type != "cuda"


def default_filters_per_transform(device: torch.device) -> int:
    """Defocus maps per inverse FFT: 1 on the CPU (cache), all (0) on CUDA."""
    return 0 if device.type == "cuda" else 1


def template_bytes(template_size: int, padding: float) -> int:
    """Bytes of ``prepare_template``'s output for a t box padded by ``padding``."""
    p = template_size + 2 * (int(template_size * (padding - 1.0)) // 2)
    return 8 * p * p * (p // 2 + 1)


# Where the template at the requested padding does not fit, this one is tried:
# z-scores of true particles 0.8 % below padding 2 (benchmarks/RESULTS.md), while
# padding 1 loses 16 % and is never chosen for the user.
FALLBACK_PADDING = 1.5


def fitting_template_padding(
    template_size: int, requested: float, free_bytes: int, other_bytes: int
) -> float:
    """Choose the template padding from the memory free on the search device.

    Parameters
    ----------
    template_size : int
        Box t of the template.
    requested : float
        ``preprocessing.template_padding``.
    free_bytes : int
        Memory the device can still give (``search.size.available_bytes``).
    other_bytes : int
        What the rest of the search needs there (images, statistics, buffers).

    Returns
    -------
    float
        ``requested`` if its template fits beside ``other_bytes``, else
        ``FALLBACK_PADDING`` if that one fits, else ``requested`` (the search's
        size check then reports the memory it needs).
    """
    room = free_bytes - other_bytes
    if template_bytes(template_size, requested) <= room:
        return requested
    if requested > FALLBACK_PADDING and (
        template_bytes(template_size, FALLBACK_PADDING) <= room
    ):
        return FALLBACK_PADDING
    return requested


def slice_batch_bytes(slice_size: int) -> int:
    """Bytes ``project`` holds per orientation of a batch, for an m-box slice.

    Per slice point: rotated coordinates (3 float32, twice), the sampler's
    grid and output (3 + 2 float32), the complex slice (twice); per pixel of the
    m box the real projection (float32, twice).
    """
    points = slice_size * (slice_size // 2 + 1)
    return points * (24 + 20 + 16) + slice_size * slice_size * 8


def auto_batch_size(
    device: torch.device,
    image_shape: tuple[int, int],
    n_filters: int = 1,
    slice_size: int = 0,
) -> int:
    """Orientations per engine call that fit in a quarter of the free memory.

    Free memory is what the device can still give (``search.size.
    available_bytes``: CUDA's free memory, the host's MemAvailable). A batch
    holds ``slice_batch_bytes`` per orientation (``slice_size`` 0: unknown, then
    one image-size DFT per orientation is assumed, a generous bound) plus the
    workspace (``n_filters`` products and maps), paid once. Slices are sampled
    one point at a time, so the batch changes no result, and on the CPU it buys
    nothing past a few orientations: at most 32 there, 64 on CUDA.
    """
    # imported here: search.size imports the executors, which import this module
    from twodtm.search.size import available_bytes  # noqa: PLC0415

    h, w = image_shape
    if slice_size:
        per_orientation = slice_batch_bytes(slice_size)
    else:
        per_orientation = h * (w // 2 + 1) * 8
    fixed = n_filters * h * (w // 2 + 1) * 12
    ceiling = 64 if device.type == "cuda" else 32
    free = available_bytes(device)
    return int(max(1, min(ceiling, (0.25 * free - fixed) // per_orientation)))


@dataclass(frozen=True)
class Workspace:
    """Buffers reused for every orientation of a batch (no allocation per map).

    Attributes
    ----------
    product : torch.Tensor
        ``(G, H, W // 2 + 1)`` unpaired filtered images times the projection's
        conjugate DFT, G = ``SearchInputs.transform_group`` filters at a time.
    maps : torch.Tensor
        ``(D - 2 D2, H, W)`` inverse real transforms of the unpaired products.
    template : torch.Tensor
        ``(H, W)`` conjugate projection DFT on the full grid (pairs only).
    pair_product : torch.Tensor
        ``(H, W)`` one pair's filtered image times ``template``.
    pair_maps : torch.Tensor
        ``(D2, H, W)`` complex inverse transforms: pair j's two maps are the real
        and imaginary parts of ``pair_maps[j]``.
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
    pair_product: torch.Tensor
    pair_maps: torch.Tensor
    spectrum: torch.Tensor
    dft: torch.Tensor
    mirror: torch.Tensor
    mirror_index: torch.Tensor


def workspace(inputs: SearchInputs) -> Workspace:
    """Allocate the buffers for ``inputs`` (half precision when it is fp16)."""
    singles, pairs = int(inputs.filtered_image.shape[1]), inputs.n_pairs
    g = min(inputs.transform_group, singles)
    h, w = inputs.image_shape
    half = inputs.precision == "fp16"
    device = inputs.device
    full = (1 if pairs else 0, h, w)
    rfft_grid = (1, h, w // 2 + 1)
    if pairs:
        index = torch.arange(h * (w // 2 + 1), device=device).view(rfft_grid[1:])
        mirror_index = mirrored_half(index, w).flatten()
    else:
        mirror_index = torch.zeros(0, dtype=torch.int64, device=device)
    return Workspace(
        product=torch.empty(
            (g, h, w // 2 + 1),
            dtype=torch.complex32 if half else torch.complex64,
            device=device,
        ),
        maps=torch.empty(
            (singles, h, w),
            dtype=torch.float16 if half else torch.float32,
            device=device,
        ),
        template=torch.empty(full, dtype=torch.complex64, device=device),
        pair_product=torch.empty(full, dtype=torch.complex64, device=device),
        pair_maps=torch.empty((pairs, h, w), dtype=torch.complex64, device=device),
        spectrum=torch.zeros(rfft_grid, dtype=torch.complex64, device=device),
        dft=torch.empty(rfft_grid, dtype=torch.complex64, device=device),
        mirror=torch.empty(mirror_index.shape, dtype=torch.complex64, device=device),
        mirror_index=mirror_index,
    )


def filtered_products(
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


def conjugate_template(dft: torch.Tensor, space: Workspace, width: int) -> torch.Tensor:
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


def pair_product(
    inputs: SearchInputs, pixel_index: int, pair: int, space: Workspace
) -> torch.Tensor:
    """Pair ``pair``'s filtered image times ``space.template`` into the workspace."""
    assert inputs.paired_image is not None
    product = space.pair_product[0]
    return torch.mul(
        inputs.paired_image[pixel_index, pair], space.template[0], out=product
    )


def pair_transform(space: Workspace, pair: int) -> torch.Tensor:
    """Complex ``ifft2`` of ``space.pair_product`` into ``space.pair_maps[pair]``."""
    return torch.fft.ifft2(space.pair_product[0], out=space.pair_maps[pair])


def paired_transforms(
    inputs: SearchInputs, dft: torch.Tensor, pixel_index: int, space: Workspace
) -> None:
    """Fill ``space.pair_maps`` with every pair's two (unnormalised) maps.

    Parameters
    ----------
    dft : torch.Tensor
        ``(H, W // 2 + 1)`` projection DFT.
    """
    if inputs.n_pairs == 0:
        return
    conjugate_template(dft, space, inputs.image_shape[1])
    for j in range(inputs.n_pairs):
        pair_product(inputs, pixel_index, j, space)
        pair_transform(space, j)


def transform_orientation(
    inputs: SearchInputs,
    dft: torch.Tensor,
    norms: torch.Tensor,
    pixel_index: int,
    space: Workspace,
) -> None:
    """Inverse-transform all D correlations of one projection into ``space``.

    Parameters
    ----------
    dft : torch.Tensor
        ``(H, W // 2 + 1)`` projection DFT.
    norms : torch.Tensor
        ``(D,)`` its filtered norms (used only to scale fp16 products).
    """
    paired_transforms(inputs, dft, pixel_index, space)
    singles = int(inputs.filtered_image.shape[1])
    if singles == 0:
        return
    conj = dft.conj().resolve_conj()
    size = int(space.product.shape[0])
    offset = 2 * inputs.n_pairs
    for start in range(0, singles, size):
        group = norms[offset + start : offset + start + size]
        filtered_products(inputs, conj, group, pixel_index, space, start)
        inverse_transforms(inputs, space, int(group.shape[0]), start)


def fold_orientation(
    inputs: SearchInputs,
    space: Workspace,
    norms: torch.Tensor,
    first: int,
    target: SearchStatistics | PairedStatistics,
) -> None:
    """Fold one orientation's D maps (in ``space``) into the running statistics.

    ``first`` is the flat index of the orientation's defocus 0; ``target`` covers
    the top-left crop of the maps (the unpadded micrograph).
    """
    h, w = target.shape
    if inputs.precision == "fp16":  # maps normalised already
        norms = torch.ones_like(norms)
    pairs = 2 * inputs.n_pairs
    indices = first + torch.arange(inputs.n_defocus, device=norms.device)
    if isinstance(target, PairedStatistics):
        extra = None
        if space.maps.shape[0]:
            extra = (space.maps[:, :h, :w], norms[pairs:], indices[pairs:])
        target.update(
            torch.view_as_real(space.pair_maps)[:, :h, :w],
            norms[:pairs].reshape(-1, 2),
            indices[:pairs:2],
            extra,
            fused=inputs.fused,
        )
    else:
        target.update(space.maps[:, :h, :w], indices, norms, fused=inputs.fused)


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
    crop = crop if crop is not None else inputs.image_shape
    n_pixel, n_defocus = int(inputs.filtered_image.shape[0]), inputs.n_defocus
    space = workspace(inputs)
    target: SearchStatistics | PairedStatistics = statistics
    if inputs.n_pairs:
        target = PairedStatistics.empty(crop, inputs.device)
    for pixel_index in range(n_pixel):
        # Slices for the whole batch in one sampler call (fills a GPU), image-size
        # DFTs one orientation at a time (bounded memory).
        projections = project(inputs, rotations, inputs.pixel_scales[pixel_index])
        for b in range(projections.shape[0]):
            dft = padded_dft(
                projections[b : b + 1], inputs.image_shape, space.spectrum, space.dft
            )
            norms = orientation_norms(inputs, projections[b], dft, pixel_index)
            transform_orientation(inputs, dft[0], norms, pixel_index, space)
            first = ((first_orientation + b) * n_pixel + pixel_index) * n_defocus
            fold_orientation(inputs, space, norms, first, target)
    if isinstance(target, PairedStatistics):
        target.fold_into(statistics)
