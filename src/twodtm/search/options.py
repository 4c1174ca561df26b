"""How the engine runs on a device: the one resolution of the run options.

The config's compute settings ("auto" or a value) become a frozen
``RunOptions`` in ``resolve_run_options``, from the device, the sizes of the
search and the memory free there; ``apply_run_options`` sets them on the engine's
inputs. ``twodtm match`` and ``twodtm bench`` both go through these two.
Precision, template padding and slice box change the result's bits; pairing,
fusing and batching only how fast it comes (up to float rounding order, which
the statistics' quantised sums make exact).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import torch

from twodtm.errors import DeviceError
from twodtm.search._filters import pair_filters
from twodtm.search.inputs import Precision, SearchInputs
from twodtm.search.memory import (
    auto_batch_size,
    available_bytes,
    device_bytes,
    fitting_template_padding,
    padded_size,
    template_bytes,
)
from twodtm.search.projection import compact_template, is_compact

__all__ = [
    "FUSED_MIN_WORK",
    "RunOptions",
    "RunRequest",
    "RunSizes",
    "apply_run_options",
    "check_precision",
    "compiles",
    "default_filters_per_transform",
    "default_paired",
    "fit_template_padding",
    "other_engine_bytes",
    "resolve_run_options",
    "use_fused",
]

# Below this many pixel-correlations (n * H * W) the compile time of the fused
# statistics kernel (~20-40 s on 2 CPU cores) costs more than it saves.
FUSED_MIN_WORK = 2e9

_Auto = Literal["auto"]


@dataclass(frozen=True)
class RunRequest:
    """The run settings as the user gave them (``compute`` and preprocessing).

    Attributes
    ----------
    precision : {"fp32", "fp16"}
        Inverse-FFT precision (``compute.precision``).
    fused : bool or "auto"
        Compiled one-pass statistics (``compute.fused_statistics``).
    paired : bool or "auto"
        Two defocus maps per complex FFT (``compute.paired_transforms``).
    batch_size : int or "auto"
        Orientations per engine call (``compute.batch_size``).
    template_padding : float
        Requested real-space oversampling of the template
        (``preprocessing.template_padding``).
    fit_padding : bool
        Lower ``template_padding`` where it does not fit in the device's free
        memory (``fit_template_padding``); False where the search has fixed it
        already for all its devices (``twodtm match`` does, so that no device
        or resumed run searches at another padding).
    """

    precision: str = "fp32"
    fused: bool | _Auto = "auto"
    paired: bool | _Auto = "auto"
    batch_size: int | _Auto = "auto"
    template_padding: float = 2.0
    fit_padding: bool = True


@dataclass(frozen=True)
class RunSizes:
    """The sizes of a search that the run options depend on.

    Attributes
    ----------
    image_shape : tuple[int, int]
        ``(H, W)`` of the micrograph (the statistics' shape).
    padded_shape : tuple[int, int]
        ``(H, W)`` searched (after FFT-friendly padding).
    template_size : int
        Box t of the template.
    n_filters : int
        Filters per orientation (defocus x pixel sizes).
    n_orientations : int
        Orientations of the whole search (decides whether compiling pays).
    slice_box : int
        ``projection.projection_box`` of the map at the requested padding; 0
        samples slices at the padded size.
    """

    image_shape: tuple[int, int]
    padded_shape: tuple[int, int]
    template_size: int
    n_filters: int
    n_orientations: int
    slice_box: int = 0


@dataclass(frozen=True)
class RunOptions:
    """How the engine runs, resolved for one device.

    Attributes
    ----------
    precision : {"fp32", "fp16"}
        ``SearchInputs.precision``.
    fused : bool
        ``SearchInputs.fused`` and ``SearchInputs.compiled_slices``: the two
        compiled kernels pay for their compile time on the same searches.
    paired : bool
        Whether ``pair_filters`` is applied (never in fp16).
    filters_per_transform : int
        ``SearchInputs.filters_per_transform``.
    batch_size : int
        Orientations per engine call.
    template_padding : float
        Padding to give ``prepare_template`` (the request, or
        ``search.memory.FALLBACK_PADDING`` where the request does not fit and
        ``RunRequest.fit_padding`` is set).
    slice_size : int
        ``SearchInputs.slice_size``: the slice box capped at the padded size
        (0: the padded size).
    """

    precision: Precision = "fp32"
    fused: bool = False
    paired: bool = False
    filters_per_transform: int = 0
    batch_size: int = 1
    template_padding: float = 2.0
    slice_size: int = 0

    @property
    def compact_template(self) -> bool:
        """Whether the template is held as ``projection.compact_template``.

        Where the compiled sampler reads it (``fused``): half the memory, the
        same speed, z-scores within 0.01 % (``benchmarks/RESULTS.md``).
        """
        return self.fused


def compiles(
    fused: bool | Literal["auto"], device: torch.device, sizes: RunSizes
) -> bool:
    """Whether a search with ``compute.fused_statistics`` = ``fused`` compiles.

    The one decision behind ``RunOptions.fused`` (and so the compiled sampler
    and the compact template): ``use_fused`` for "auto".
    """
    if fused == "auto":
        n_correlations = sizes.n_orientations * sizes.n_filters
        return use_fused(device, n_correlations, sizes.image_shape)
    return bool(fused)


def use_fused(
    device: torch.device | str, n_correlations: int, shape: tuple[int, int]
) -> bool:
    """Whether the compiled statistics kernel pays for its compile time.

    Always on CUDA; on the CPU from ``FUSED_MIN_WORK`` pixel-correlations on.

    Examples
    --------
    >>> use_fused("cpu", 1000, (1024, 1024)), use_fused("cpu", 2000, (1024, 1024))
    (False, True)
    """
    if torch.device(device).type == "cuda":
        return True
    return n_correlations * shape[0] * shape[1] >= FUSED_MIN_WORK


def check_precision(
    precision: str, device: torch.device, shape: tuple[int, int]
) -> Precision:
    """Return ``precision`` if it can run on ``device`` at ``shape``.

    Raises
    ------
    DeviceError
        Unknown precision, fp16 off CUDA or at sizes that are not powers of two.
    """
    if precision == "fp32":
        return "fp32"
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
    return "fp16"


def default_paired(device: torch.device) -> bool:
    """Whether to pair defocus maps into complex transforms (CPU: yes)."""
    return device.type != "cuda"


def default_filters_per_transform(device: torch.device) -> int:
    """Defocus maps per inverse FFT: 1 on the CPU (cache), all (0) on CUDA."""
    return 0 if device.type == "cuda" else 1


def other_engine_bytes(sizes: RunSizes, padding: float) -> int:
    """Bytes the engine needs on its device besides the template, at ``padding``.

    Images, norms, maps and statistics: ``device_bytes`` of an empty batch less
    ``template_bytes``.
    """
    t = sizes.template_size
    return device_bytes(
        sizes.n_filters, sizes.padded_shape, t, padding, batch_size=0
    ) - template_bytes(t, padding)


def _input_bytes(sizes: RunSizes, padding: float, compact: bool = False) -> int:
    """Bytes the engine's inputs hold: filtered images (twice while pairing), template.

    What ``auto_batch_size`` found allocated when it ran after them.
    """
    h, w = sizes.padded_shape
    filtered = 2 * sizes.n_filters * h * (w // 2 + 1) * 8
    return filtered + template_bytes(sizes.template_size, padding, compact)


def fit_template_padding(
    sizes: RunSizes, requested: float, free_bytes: int, compact: bool = False
) -> float:
    """Choose the template padding that fits beside the engine in ``free_bytes``.

    ``fitting_template_padding`` with what the engine needs besides the
    template at the ``requested`` padding (images, norms, maps, statistics).

    Parameters
    ----------
    sizes : RunSizes
        The search's sizes (``padded_shape``, ``template_size`` and
        ``n_filters`` count here).
    requested : float
        ``preprocessing.template_padding``.
    free_bytes : int
        Free memory of the device (``available_bytes``).
    compact : bool
        The template is held as ``projection.compact_template``.

    Returns
    -------
    float
        ``requested``, or ``FALLBACK_PADDING`` where only that one fits.

    Examples
    --------
    >>> sizes = RunSizes((64, 64), (64, 64), 64, n_filters=1, n_orientations=1)
    >>> fit_template_padding(sizes, 2.0, 10**7)  # the 8.5 MB template fits
    2.0
    >>> fit_template_padding(sizes, 2.0, 5 * 10**6)  # only the 3.6 MB one does
    1.5
    """
    other = other_engine_bytes(sizes, requested)
    return fitting_template_padding(
        sizes.template_size, requested, free_bytes, other, compact
    )


def resolve_run_options(
    request: RunRequest, sizes: RunSizes, device: torch.device
) -> RunOptions:
    """Resolve every "auto" of ``request`` for ``device``: the one place it is done.

    Parameters
    ----------
    request : RunRequest
        The user's settings.
    sizes : RunSizes
        The search's sizes.
    device : torch.device
        Where the engine runs.

    Returns
    -------
    RunOptions
        ``check_precision``'s precision; ``use_fused`` for an "auto" fused;
        ``default_paired`` for an "auto" pairing (fp32 only); the device's
        ``default_filters_per_transform``; a template padding that fits in the
        free memory (``fit_template_padding``; the request as it is when
        ``request.fit_padding`` is False); the slice box capped at that
        padding's box; ``auto_batch_size`` for an "auto" batch.

    Raises
    ------
    DeviceError
        The precision cannot run there (see ``check_precision``).
    """
    precision = check_precision(request.precision, device, sizes.padded_shape)
    fused = compiles(request.fused, device, sizes)
    paired = default_paired(device) if request.paired == "auto" else request.paired
    free = available_bytes(device)
    padding = request.template_padding
    if request.fit_padding:
        padding = fit_template_padding(sizes, padding, free, compact=fused)
    p = padded_size(sizes.template_size, padding)
    slice_size = min(sizes.slice_box, p)
    batch = request.batch_size
    if batch == "auto":
        held = _input_bytes(sizes, padding, compact=fused)
        batch = auto_batch_size(
            device, sizes.padded_shape, sizes.n_filters, slice_size or p, free - held
        )
    return RunOptions(
        precision=precision,
        fused=fused,
        paired=bool(paired) and precision == "fp32",
        filters_per_transform=default_filters_per_transform(device),
        batch_size=int(batch),
        template_padding=padding,
        slice_size=slice_size,
    )


def apply_run_options(inputs: SearchInputs, options: RunOptions) -> SearchInputs:
    """Return ``inputs`` set to run as ``options`` say (pairs built when paired)."""
    if inputs.slice_size != options.slice_size:
        raise ValueError(
            f"inputs built with slice_size {inputs.slice_size}, options resolved "
            f"{options.slice_size}: build them with RunOptions.slice_size"
        )
    template = inputs.template_dft
    if options.compact_template and not is_compact(template):
        template = compact_template(template)
    configured = replace(
        inputs,
        template_dft=template,
        precision=options.precision,
        fused=options.fused,
        compiled_slices=options.fused,
        filters_per_transform=options.filters_per_transform,
    )
    return pair_filters(configured) if options.paired else configured
