"""Throughput of the search engine alone, on synthetic inputs.

``time_engine`` builds a random micrograph and template, resolves the run
options as ``twodtm match`` does (``search.options``), warms the engine up (which
also compiles the fused statistics kernel), times a full search of the requested
orientations, splits the time per correlation into its stages with the engine's
own ``StageClock``, and times the FFT-only floor: the batched inverse real FFT
of the image size that every 2DTM engine must run once per correlation.
``twodtm bench`` and ``benchmarks/throughput.py`` print what it returns
(``format_report``, from ``programs._bench_report``).
"""

from __future__ import annotations

import math
import platform
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from twodtm._hostmemory import retain_freed_memory
from twodtm.ctf import Optics
from twodtm.orientations import euler_to_matrix
from twodtm.preprocess import (
    FilterSettings,
    PreparedImage,
    prepare_image,
    prepare_template,
)
from twodtm.programs._bench_report import format_report
from twodtm.search.clock import STAGES, StageClock
from twodtm.search.engine import search_batches
from twodtm.search.inputs import Precision, SearchInputs, build_search_inputs
from twodtm.search.memory import padded_size
from twodtm.search.options import (
    RunOptions,
    RunRequest,
    RunSizes,
    apply_run_options,
    resolve_run_options,
)
from twodtm.search.projection import projection_box
from twodtm.search.space import SearchSpace
from twodtm.search.statistics import SearchStatistics

__all__ = [
    "EngineOptions",
    "format_report",
    "precision_error",
    "random_rotations",
    "run_search",
    "synthetic_inputs",
    "time_engine",
]

_DEFOCUS_STEP = 200.0  # Angstrom between defocus filters
_PIXEL_SIZE = 1.0  # Angstrom


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best_time(
    work: Callable[[], object], device: torch.device, repeats: int = 3
) -> float:
    """Shortest wall time in seconds of ``repeats`` runs of ``work`` (synchronised)."""
    times = []
    for _ in range(max(repeats, 1)):
        _synchronize(device)
        start = time.perf_counter()
        work()
        _synchronize(device)
        times.append(time.perf_counter() - start)
    return min(times)


def _synthetic_volume(size: int, generator: torch.Generator) -> torch.Tensor:
    """``(t, t, t)`` white noise inside the box's inscribed sphere (radius t/2 - 1).

    A template boxed with a margin, as maps for 2DTM are: its projections fit
    in the t box (``projection.projection_box`` gives t).
    """
    axis = torch.arange(size, dtype=torch.float32) - size // 2
    r2 = axis[:, None, None] ** 2 + axis[None, :, None] ** 2 + axis**2
    noise = torch.randn((size,) * 3, generator=generator)
    return noise * (r2 <= (size / 2 - 1) ** 2)


@dataclass(frozen=True)
class _Synthetic:
    """A white-noise micrograph and a random template, prepared on a device."""

    image: PreparedImage
    volume: torch.Tensor
    n_defocus: int
    n_pixel_sizes: int

    @classmethod
    def make(
        cls,
        image_shape: tuple[int, int],
        template_size: int,
        filters: tuple[int, int],
        device: torch.device,
        seed: int,
    ) -> _Synthetic:
        """Draw the data (``filters``: defocus values, pixel sizes)."""
        generator = torch.Generator().manual_seed(seed)
        image = torch.randn(image_shape, generator=generator).to(device)
        volume = _synthetic_volume(template_size, generator).to(device)
        prepared = prepare_image(
            image, _PIXEL_SIZE, FilterSettings(), pad_to_fft_friendly=True
        )
        return cls(prepared, volume, *filters)

    def build(
        self, template_padding: float, slice_size: int, compact: bool = False
    ) -> SearchInputs:
        """Engine tensors at this padding and slice box (``compact``: template)."""
        n_defocus, n_pixel = self.n_defocus, self.n_pixel_sizes
        offsets = _DEFOCUS_STEP * (
            torch.arange(n_defocus, dtype=torch.float64) - n_defocus // 2
        )
        pixel_offsets = 0.01 * (
            torch.arange(n_pixel, dtype=torch.float64) - n_pixel // 2
        )
        space = SearchSpace(
            euler_angles=torch.zeros((1, 3), dtype=torch.float64),
            defocus_offsets=offsets,
            pixel_sizes=_PIXEL_SIZE + pixel_offsets,
        )
        optics = Optics(pixel_size=_PIXEL_SIZE, defocus_u=12000.0, defocus_v=11800.0)
        template = prepare_template(self.volume, template_padding, compact)
        size = int(self.volume.shape[-1])
        return build_search_inputs(
            template, size, self.image, optics, space, slice_size=slice_size
        )

    def slice_box(self, template_padding: float, slice_size: int | None) -> int:
        """``slice_size``, or for None the map's ``projection_box`` (t)."""
        if slice_size is not None:
            return slice_size
        size = int(self.volume.shape[-1])
        return projection_box(self.volume, padded_size(size, template_padding))

    def resolve(
        self, request: RunRequest, slice_size: int | None, n_orientations: int
    ) -> tuple[SearchInputs, RunOptions]:
        """Resolve ``request`` as ``twodtm match`` does, and build the inputs."""
        sizes = RunSizes(
            image_shape=self.image.shape,
            padded_shape=self.image.padded_shape,
            template_size=int(self.volume.shape[-1]),
            n_filters=self.n_defocus * self.n_pixel_sizes,
            n_orientations=n_orientations,
            slice_box=self.slice_box(request.template_padding, slice_size),
        )
        run = resolve_run_options(request, sizes, self.volume.device)
        inputs = self.build(run.template_padding, run.slice_size, run.compact_template)
        return apply_run_options(inputs, run), run


def synthetic_inputs(
    image_shape: tuple[int, int],
    template_size: int,
    n_defocus: int,
    n_pixel_sizes: int,
    device: torch.device,
    seed: int,
    template_padding: float = 2.0,
    slice_size: int | None = None,
) -> SearchInputs:
    """Engine tensors for a white-noise micrograph and a random template.

    The contents do not change the work done, only the shapes do.
    ``slice_size`` None takes the map's ``projection.projection_box`` (t), 0 the
    padded size.
    """
    data = _Synthetic.make(
        image_shape, template_size, (n_defocus, n_pixel_sizes), device, seed
    )
    return data.build(template_padding, data.slice_box(template_padding, slice_size))


def random_rotations(n: int, seed: int) -> torch.Tensor:
    """``(n, 3, 3)`` rotations from uniformly drawn ZYZ Euler angles."""
    generator = torch.Generator().manual_seed(seed + 1)
    angles = torch.rand((n, 3), generator=generator, dtype=torch.float64)
    return euler_to_matrix(
        angles * torch.tensor([360.0, 180.0, 360.0], dtype=torch.float64)
    )


def run_search(
    inputs: SearchInputs,
    rotations: torch.Tensor,
    batch_size: int,
    crop: tuple[int, int],
    clock: StageClock | None = None,
) -> SearchStatistics:
    """Search every rotation in batches, as ``search.executors.run_chunk`` does.

    ``clock`` (optional) is charged with the seconds of every engine stage.
    """
    n = int(rotations.shape[0])
    starts = range(0, n, batch_size)
    batches = ((start, rotations[start : start + batch_size]) for start in starts)
    with torch.inference_mode():
        return search_batches(inputs, batches, min(batch_size, n), crop, clock)


def _stage_times(
    inputs: SearchInputs,
    rotations: torch.Tensor,
    crop: tuple[int, int],
    repeats: int = 3,
) -> dict[str, float]:
    """Seconds per correlation of each engine stage, from the engine's own clock.

    The batch ``rotations`` is searched ``repeats`` times with a ``StageClock``
    (which synchronises CUDA around every stage); each stage's shortest total
    is divided by the batch's ``B * P * D`` correlations.
    """
    best = dict.fromkeys(STAGES, math.inf)
    for _ in range(max(repeats, 1)):
        clock = StageClock(inputs.device)
        run_search(inputs, rotations, int(rotations.shape[0]), crop, clock)
        for name, seconds in clock.seconds.items():
            best[name] = min(best[name], seconds)
    correlations = int(rotations.shape[0]) * inputs.n_filters
    return {name: seconds / correlations for name, seconds in best.items()}


def _fft_floor(
    image_shape: tuple[int, int], n_maps: int, device: torch.device, repeats: int = 3
) -> float:
    """Inverse real FFTs per second of the image size, the faster of two ways.

    One ``irfft2`` per map and one batched ``irfft2`` of ``n_maps`` maps are both
    timed (on this CPU a single 1024^2 transform is ~2.6x faster per map than 13
    batched; on GPUs batching wins). This is the least work any FFT-based engine
    does per correlation, so the faster rate bounds every engine from above.
    """
    h, w = image_shape
    spectrum = torch.randn(
        (n_maps, h, w // 2 + 1), dtype=torch.complex64, device=device
    )
    out = torch.empty((n_maps, h, w), device=device)

    def one_at_a_time() -> None:
        for k in range(n_maps):
            torch.fft.irfft2(spectrum[k], s=image_shape, out=out[k])

    with torch.inference_mode():
        torch.fft.irfft2(spectrum, s=image_shape, out=out)
        batched = _best_time(
            lambda: torch.fft.irfft2(spectrum, s=image_shape, out=out), device, repeats
        )
        single = _best_time(one_at_a_time, device, repeats)
    return n_maps / min(batched, single)


def _paired_fft_floor(
    image_shape: tuple[int, int], device: torch.device, repeats: int = 3
) -> float:
    """Real maps per second from complex inverse FFTs that each yield two maps.

    ``ifft2(A + iB) = a + ib`` for real a, b (``search._filters.pair_filters``):
    the floor of an engine that pairs its maps, timed the same way as
    ``_fft_floor``.
    """
    spectrum = torch.randn(image_shape, dtype=torch.complex64, device=device)
    out = torch.empty_like(spectrum)
    with torch.inference_mode():
        torch.fft.ifft2(spectrum, out=out)
        seconds = _best_time(
            lambda: torch.fft.ifft2(spectrum, out=out), device, repeats
        )
    return 2.0 / seconds


def _peak_memory(device: torch.device) -> tuple[int, str]:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda max_memory_allocated"
    # ru_maxrss is in KiB on Linux (bytes on macOS).
    scale = 1 if platform.system() == "Darwin" else 1024
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
    return int(rss), "process peak resident set size"


@dataclass(frozen=True)
class EngineOptions:
    """How the engine runs in a benchmark.

    Attributes
    ----------
    batch_size : int or None
        Orientations per engine call (None: ``search.memory.auto_batch_size``).
    fused : bool
        Use the compiled one-pass statistics kernel; its compile time falls in
        the warm-up (``warmup_seconds``), not in the timed search.
    precision : {"fp32", "fp16"}
        Inverse-FFT precision (fp16 needs CUDA and power-of-two sizes).
    paired : bool or None
        Two defocus maps per complex inverse FFT (None: the device's default,
        ``search.options.default_paired``; never in fp16).
    template_padding : float
        Requested real-space oversampling of the template before its transform
        (lowered to ``search.memory.FALLBACK_PADDING`` where it does not fit in
        the device's memory; ``twodtm match`` decides it once per search).
    slice_size : int or None
        Box of the sampled slices (``SearchInputs.slice_size``): None for the
        synthetic map's ``projection.projection_box`` (t), 0 for the padded size.
    """

    batch_size: int | None = None
    fused: bool = True
    precision: Precision = "fp32"
    paired: bool | None = None
    template_padding: float = 2.0
    slice_size: int | None = None


def time_engine(
    image_shape: tuple[int, int] = (1024, 1024),
    template_size: int = 128,
    n_orientations: int = 32,
    n_defocus: int = 13,
    device: str = "cpu",
    seed: int = 0,
    n_pixel_sizes: int = 1,
    options: EngineOptions | None = None,
) -> dict[str, Any]:
    """Time the search engine on synthetic inputs.

    Parameters
    ----------
    image_shape : tuple[int, int]
        ``(H, W)`` micrograph size in pixels (padded to FFT-friendly sizes).
    template_size : int
        Edge t of the cubic template, pixels.
    n_orientations : int
        Orientations K searched in the timed run.
    n_defocus, n_pixel_sizes : int
        Defocus values D and pixel sizes P: ``D * P`` filters per orientation.
    device : str
        Torch device, e.g. ``"cpu"`` or ``"cuda:0"``.
    seed : int
        Seed of the synthetic data and the orientations.
    options : EngineOptions, optional
        Batch size, fused statistics and precision (default ``EngineOptions()``).

    Returns
    -------
    dict
        ``correlations_per_second``, ``fft_floor_per_second``, ``floor_ratio``
        (floor rate / engine rate, >= 1), ``stage_ms_per_correlation`` (dict),
        ``peak_memory_bytes``, ``warmup_seconds``, ``seconds`` and the settings.
    """
    opts = options or EngineOptions()
    dev = torch.device(device)
    data = _Synthetic.make(
        image_shape, template_size, (n_defocus, n_pixel_sizes), dev, seed
    )
    request = RunRequest(
        precision=opts.precision,
        fused=opts.fused,
        paired="auto" if opts.paired is None else opts.paired,
        batch_size=opts.batch_size or "auto",
        template_padding=opts.template_padding,
    )
    inputs, run = data.resolve(request, opts.slice_size, n_orientations)
    del data  # the map and the image go, as ``twodtm match`` lets its inputs go
    # after the inputs are built, as ``run_chunk`` does in ``twodtm match``: the
    # build's freed buffers are returned, the search's are kept
    retain_freed_memory()
    n_filters = n_defocus * n_pixel_sizes
    slice_size = inputs.slice_size or int(inputs.template_dft.shape[-3])
    batch = run.batch_size
    rotations = random_rotations(n_orientations, seed)
    crop = image_shape
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    warmup = _best_time(
        lambda: run_search(inputs, rotations[:batch], batch, crop), dev, 1
    )
    # once more, untimed: after the build returned its memory, the first passes
    # still fault the search's buffers into the retained heap (measured at
    # 4096^2: 2.9 s, 3.0 s, then 2.0 s a pass)
    run_search(inputs, rotations[:batch], batch, crop)
    seconds = _best_time(lambda: run_search(inputs, rotations, batch, crop), dev, 1)
    peak, peak_kind = _peak_memory(dev)
    rate = n_orientations * n_filters / seconds
    stages = _stage_times(inputs, rotations[:batch], crop)
    floor = _fft_floor(inputs.image_shape, n_defocus, dev)
    paired_floor = _paired_fft_floor(inputs.image_shape, dev)
    return {
        "correlations_per_second": rate,
        "fft_floor_per_second": floor,
        "floor_ratio": floor / rate,
        "paired_fft_floor_per_second": paired_floor,
        "transform_floor_ratio": max(floor, paired_floor) / rate,
        "paired_transforms": inputs.n_pairs > 0,
        "seconds": seconds,
        "warmup_seconds": warmup,
        "correlations": n_orientations * n_filters,
        "stage_ms_per_correlation": {k: 1e3 * v for k, v in stages.items()},
        "peak_memory_bytes": peak,
        "peak_memory_kind": peak_kind,
        "device": str(dev),
        "image_shape": list(image_shape),
        "padded_shape": list(inputs.image_shape),
        "template_size": template_size,
        "orientations": n_orientations,
        "defocus_values": n_defocus,
        "pixel_sizes": n_pixel_sizes,
        "batch_size": batch,
        "template_padding": run.template_padding,
        "slice_size": slice_size,
        "fused": run.fused,
        "precision": run.precision,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def precision_error(
    image_shape: tuple[int, int] = (4096, 4096),
    template_size: int = 512,
    n_orientations: int = 8,
    n_defocus: int = 13,
    device: str = "cuda",
    precision: Precision = "fp16",
    seed: int = 0,
) -> dict[str, Any]:
    """Z-score error of a reduced-precision search against the fp32 one.

    Both searches run on the same synthetic inputs and orientations with the
    device's default layout (``precision`` runs unpaired, as fp16 must).

    Returns
    -------
    dict
        ``max_abs_zscore_error`` and ``rms_zscore_error`` (z-score units),
        ``best_index_agreement`` (fraction of pixels with the same argmax),
        ``max_abs_mip_error`` and the settings.
    """
    dev = torch.device(device)
    data = _Synthetic.make(image_shape, template_size, (n_defocus, 1), dev, seed)
    batch = min(n_orientations, 8)
    reference, _ = data.resolve(
        RunRequest(fused=False, batch_size=batch), None, n_orientations
    )
    rotations = random_rotations(n_orientations, seed)
    full = run_search(reference, rotations, batch, image_shape)
    del reference
    reduced_inputs, _ = data.resolve(
        RunRequest(precision=precision, fused=False, paired=False, batch_size=batch),
        None,
        n_orientations,
    )
    reduced = run_search(reduced_inputs, rotations, batch, image_shape)
    error = (reduced.zscore() - full.zscore()).double()
    return {
        "precision": precision,
        "max_abs_zscore_error": float(error.abs().max()),
        "rms_zscore_error": float(error.square().mean().sqrt()),
        "best_index_agreement": float(
            (reduced.best_index == full.best_index).double().mean()
        ),
        "max_abs_mip_error": float((reduced.mip - full.mip).abs().max()),
        "image_shape": list(image_shape),
        "template_size": template_size,
        "orientations": n_orientations,
        "defocus_values": n_defocus,
        "device": str(dev),
    }
