"""Real-space norms of filtered projections, computed in Fourier space.

A correlation map is normalised by the norm of the filtered projection, ``||F * p||``
(Rickgauer et al. 2017, eq. 2; cisTEM's ``match_template`` divides by the same
standard deviation of the filtered, zero-mean projection). Two exact routes:

* Parseval on the image grid (``parseval_weights``, ``filtered_norms``): one dot
  product per filter over the ``(H, W // 2 + 1)`` rfft grid of the projection's
  image-size DFT; used by the local search and where the image is small.
* Lag kernels (``lag_kernels``, ``projection_norms``): the projection's
  autocorrelation lies within ``|x| < t`` per axis, so the same sum needs only a
  ``(2t, 2t)`` transform of the ``t x t`` box (the global search's route).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from twodtm.search.inputs import SearchInputs

__all__ = [
    "filtered_norms",
    "has_lag_room",
    "lag_kernels",
    "orientation_norms",
    "parseval_weights",
    "projection_norms",
]


def parseval_weights(
    shape: tuple[int, int], device: torch.device | str
) -> torch.Tensor:
    """``(H, W // 2 + 1)`` weights turning an rfft2 power sum into a real-space sum.

    ``sum(x**2) == (weights * |rfft2(x)|**2).sum()`` for a real ``(H, W)`` array:
    the columns an rfft grid leaves out are the mirror images of columns 1 to
    ``(W - 1) // 2``, which count twice; DC (and Nyquist for even W) once.

    Examples
    --------
    >>> x = torch.arange(30.0).reshape(5, 6).sin()
    >>> power = torch.fft.rfft2(x).abs().square()
    >>> weights = parseval_weights((5, 6), "cpu")
    >>> bool(torch.isclose((weights * power).sum(), x.square().sum()))
    True
    """
    h, w = shape
    weights = torch.full((h, w // 2 + 1), 2.0, device=device)
    weights[:, 0] = 1.0
    if w % 2 == 0:
        weights[:, -1] = 1.0
    return weights / (h * w)


def filtered_norms(weights: torch.Tensor, dfts: torch.Tensor) -> torch.Tensor:
    """Real-space norms of DFTs under every filter, by Parseval.

    Parameters
    ----------
    weights : torch.Tensor
        ``(..., D, K)`` float32, ``K = H * (W // 2 + 1)``: each filter squared
        times ``parseval_weights``, flattened.
    dfts : torch.Tensor
        ``(..., m, H, W // 2 + 1)`` complex rfft2 of real ``(H, W)`` images.

    Returns
    -------
    torch.Tensor
        ``(..., m, D)``: ``||irfft2(F_d * X_m)||`` (clamped to at least 1e-15).

    Examples
    --------
    >>> x = torch.arange(24.0).reshape(1, 4, 6).cos()
    >>> weights = parseval_weights((4, 6), "cpu").flatten()[None]  # F = 1
    >>> norm = filtered_norms(weights, torch.fft.rfft2(x))
    >>> bool(torch.isclose(norm[0, 0], x.square().sum().sqrt()))
    True
    """
    # |P|^2 as the real part of P conj(P): one pass, no square root (as abs() has).
    power = (dfts * dfts.conj()).real.flatten(-2)
    squared = weights @ power.transpose(-1, -2)  # (..., D, K) @ (..., K, m)
    return squared.transpose(-1, -2).clamp_min(1e-30).sqrt()


def has_lag_room(shape: tuple[int, int], template_size: int) -> bool:
    """Whether every lag of a t-pixel box's autocorrelation fits in the image once.

    Lags reach ``t - 1`` each way, so ``H`` and ``W`` must be at least ``2t - 1``
    (else lags would wrap around the image and ``lag_kernels`` would be wrong).

    Examples
    --------
    >>> has_lag_room((39, 64), 20), has_lag_room((38, 64), 20)
    (True, False)
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
    if inputs.norm_kernels is None:
        raise ValueError("projection_norms needs inputs.norm_kernels (has_lag_room)")
    t2 = 2 * int(projection.shape[-1])
    spectrum = torch.fft.rfft2(projection, s=(t2, t2))
    power = spectrum.real.square() + spectrum.imag.square()
    squared = inputs.norm_kernels[pixel_index] @ power.flatten()
    return squared.clamp_min(1e-30).sqrt()


def _filter_norms(
    inputs: SearchInputs, dfts: torch.Tensor, pixel_index: int
) -> torch.Tensor:
    """Norms ``(B, D)`` of ``(B, H, W // 2 + 1)`` DFTs from ``inputs.norm_weights``."""
    if inputs.norm_weights is None:
        raise ValueError("filter norms need inputs.norm_weights (no lag room)")
    return filtered_norms(inputs.norm_weights[pixel_index], dfts)


def orientation_norms(
    inputs: SearchInputs,
    projection: torch.Tensor,
    dft: torch.Tensor,
    pixel_index: int,
) -> torch.Tensor:
    """Norms ``(D,)`` of one projection: from lag kernels when built, else the DFT.

    Parameters
    ----------
    inputs : SearchInputs
        Engine tensors (``norm_kernels`` or ``norm_weights`` set).
    projection : torch.Tensor
        ``(t, t)`` real projection.
    dft : torch.Tensor
        ``(1, H, W // 2 + 1)`` its image-size DFT.
    pixel_index : int
        Pixel size whose filters apply.
    """
    if inputs.norm_kernels is not None:
        return projection_norms(inputs, projection, pixel_index)
    return _filter_norms(inputs, dft, pixel_index)[0]
