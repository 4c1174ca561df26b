r"""Throughput of twodtm's search engine against Leopard-EM 1.3.0, on the CPU.

Leopard-EM's own search loop, ``leopard_em.backend.core_match_template.
_core_match_template_single_gpu``, runs on synthetic inputs in a subprocess that
uses a second virtual environment holding Leopard-EM (it declares Python>=3.12,
hence the separate environment).  twodtm's engine runs in a subprocess too, as
``python -m twodtm bench --json`` (``twodtm.programs.benchmark.time_engine`` behind the
command line's start-up, as a user's run has it).  The two are timed alternately
(Leopard-EM, twodtm, Leopard-EM, twodtm, ...) and both throughputs are reported
as cross-correlations per second, that is orientations * defocus values / seconds.

Building the Leopard-EM environment (Python 3.11, CPU-only torch)::

    echo 'torch==2.13.0' > /tmp/leopard-constraints.txt
    python3 -m venv /tmp/leopard-venv
    /tmp/leopard-venv/bin/pip install --upgrade pip
    /tmp/leopard-venv/bin/pip install torch==2.13.0 -c /tmp/leopard-constraints.txt
    /tmp/leopard-venv/bin/pip install -c /tmp/leopard-constraints.txt \
        einops h5py lmfit mrcfile numpy pandas pydantic pyyaml roma tensordict \
        torch-ctf==0.6.0 torch-fourier-filter==0.6.0 torch-fourier-rescale==0.6.0 \
        torch-fourier-shell-correlation==0.6.0 torch-fourier-shift==0.6.0 \
        torch-fourier-slice==0.6.0 torch-grid-utils==0.6.0 \
        torch-motion-correction==0.6.0 torch-so3==0.6.0 tqdm 'ttsim3d>=0.4.0' \
        types-pyyaml zenodo-get
    /tmp/leopard-venv/bin/pip install --no-deps --ignore-requires-python \
        leopard-em==1.3.0 -c /tmp/leopard-constraints.txt
    /tmp/leopard-venv/bin/python -c "import leopard_em"

The dependency list is Leopard-EM 1.3.0's ``Requires-Dist``.  Installing
``leopard-em`` with its dependencies in one ``--ignore-requires-python`` call
fails: the flag also lets pip pick numpy 2.5 (Python>=3.12 only), whose sdist
then refuses to build.  Installing the dependencies first, without the flag,
and Leopard-EM itself with ``--no-deps`` works.

Example::

    python benchmarks/vs_leopard.py --leopard-python /tmp/leopard-venv/bin/python \
        --image-size 1024 --template-size 128 --orientations 160 --defocus 13 \
        --repeats 2

``--leopard-allocator retained`` runs Leopard-EM with the host-memory settings
twodtm applies to itself (``twodtm._hostmemory``), for a comparison of the engines
alone rather than of the processes as shipped.

On a CPU-only torch, the ``torch.cuda`` stream and synchronisation calls made by
Leopard-EM's loop are replaced by no-op stand-ins, in the Leopard-EM worker
process only.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from collections.abc import Iterator
    from types import ModuleType

RESULT_MARKER = "LEOPARD_RESULT "
# twodtm._hostmemory's settings as environment variables (glibc reads MALLOC_*_ at
# start-up): MKL allocates through malloc, which keeps freed blocks for reuse.
RETAINED_ALLOCATOR = {
    "MKL_DISABLE_FAST_MM": "1",
    "MALLOC_MMAP_MAX_": "0",
    "MALLOC_TRIM_THRESHOLD_": "-1",
}
DEFOCUS_STEP_ANGSTROM = 200.0
CC_BUDGET_BYTES = 128 * 1024**2
OPTICS = {
    "label": "synthetic",
    "pixel_size": 1.06,
    "voltage": 300.0,
    "spherical_aberration": 2.7,
    "amplitude_contrast_ratio": 0.07,
    "defocus_u": 12000.0,
    "defocus_v": 11800.0,
    "astigmatism_angle": 45.0,
    "ctf_B_factor": 0.0,
}


def parse_shape(text: str) -> tuple[int, int]:
    """Parse an image size given as ``N`` or ``HxW``.

    Parameters
    ----------
    text : str
        ``"1024"`` or ``"1024x2048"``.

    Returns
    -------
    tuple[int, int]
        The ``(H, W)`` shape.
    """
    parts = text.lower().split("x")
    if len(parts) == 1:
        return int(parts[0]), int(parts[0])
    if len(parts) == 2:
        return int(parts[0]), int(parts[1])
    raise argparse.ArgumentTypeError(f"image size must be N or HxW, not {text!r}")


def build_parser() -> argparse.ArgumentParser:
    """Build the command-line parser.

    Returns
    -------
    argparse.ArgumentParser
        Parser for both the driver and the ``--worker leopard`` mode.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--leopard-python", default="/tmp/leopard-venv/bin/python")
    add("--image-size", type=parse_shape, default=(1024, 1024), help="N or HxW")
    add("--template-size", type=int, default=128)
    add("--orientations", type=int, default=64, help="orientations timed (K)")
    add("--defocus", type=int, default=13, help="defocus values (D)")
    add("--repeats", type=int, default=2)
    add("--orientation-batch-size", type=int, default=None, help="default: auto")
    add("--warmup-orientations", type=int, default=None, help="default: one batch")
    add("--leopard-backend", choices=("batched", "streamed"), default="batched")
    add("--seed", type=int, default=0)
    add("--json", action="store_true", help="print one JSON summary")
    add(
        "--leopard-allocator",
        choices=("default", "retained"),
        default="default",
        help="retained: give Leopard-EM the host-memory settings twodtm uses",
    )
    add("--device", default="cpu", help="cpu or cuda:N (both engines)")
    add("--worker", choices=("leopard",), default=None, help=argparse.SUPPRESS)
    return parser


def auto_batch_size(
    image_shape: tuple[int, int], n_orientations: int, n_defocus: int
) -> int:
    """Choose Leopard-EM's orientation batch size.

    Leopard-EM's manager defaults to 16 (a GPU setting).  Its batched backend holds
    a float32 correlation stack of shape (D, batch, H, W); on a 2-core CPU at
    1024x1024, D=13, batches 1-4 ran about 3x faster than 16 (see
    ``README_leopard.md``).  The batch is therefore halved from 16 until that stack
    fits in ``CC_BUDGET_BYTES`` and the batch divides the orientation count (a
    ragged final batch would trigger a recompilation inside the timed loop).

    Parameters
    ----------
    image_shape : tuple[int, int]
        Image shape (H, W).
    n_orientations : int
        Number of orientations timed.
    n_defocus : int
        Number of defocus values.

    Returns
    -------
    int
        The batch size.
    """
    batch = 16
    plane_bytes = 4 * image_shape[0] * image_shape[1] * n_defocus
    while batch > 1 and (
        batch * plane_bytes > CC_BUDGET_BYTES or n_orientations % batch
    ):
        batch //= 2
    return batch


# --------------------------------------------------------------------------------
# Leopard-EM worker (runs under the Leopard-EM interpreter)
# --------------------------------------------------------------------------------


def leopard(submodule: str) -> ModuleType:
    """Import a Leopard-EM submodule (only present in the Leopard-EM interpreter).

    Parameters
    ----------
    submodule : str
        Dotted name below ``leopard_em``, e.g. ``"utils.ctf_utils"``.

    Returns
    -------
    ModuleType
        The imported module.
    """
    return importlib.import_module(f"leopard_em.{submodule}")


class _NullStream:
    """No-op stand-in for ``torch.cuda.Stream`` on a CPU-only torch."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        del args, kwargs

    def synchronize(self) -> None:
        """Do nothing: CPU work is already synchronous."""

    def wait_stream(self, stream: object) -> None:
        """Do nothing: there is only one CPU stream."""
        del stream


def _null_function(*args: object, **kwargs: object) -> None:
    """Accept anything and do nothing (for ``torch.cuda.synchronize`` etc.)."""
    del args, kwargs


@contextlib.contextmanager
def _null_stream_context(stream: object) -> Iterator[None]:
    """Stand-in for the ``torch.cuda.stream`` context manager."""
    del stream
    yield


def install_cpu_cuda_stubs() -> None:
    """Replace the ``torch.cuda`` calls of Leopard-EM's loop with no-ops.

    Only called in the Leopard-EM worker process.
    """
    replacements: list[tuple[object, str, object]] = [
        (torch.cuda, "Stream", _NullStream),
        (torch.cuda, "stream", _null_stream_context),
        (torch.cuda, "default_stream", _NullStream),
        (torch.cuda, "synchronize", _null_function),
        (torch.cuda, "empty_cache", _null_function),
        (torch.cuda, "ipc_collect", _null_function),
        (torch.Tensor, "record_stream", _null_function),
    ]
    for owner, name, stub in replacements:
        setattr(owner, name, stub)


def _smooth_volume(size: int, generator: torch.Generator) -> torch.Tensor:
    """Random low-pass filtered volume inside a soft spherical mask."""
    noise = torch.randn((size, size, size), generator=generator)
    freq = torch.fft.fftfreq(size)
    rfreq = torch.fft.rfftfreq(size)
    f2 = freq[:, None, None] ** 2 + freq[None, :, None] ** 2 + rfreq[None, None, :] ** 2
    lowpass = torch.exp(-f2 / (2 * 0.06**2))
    smooth = torch.fft.irfftn(torch.fft.rfftn(noise) * lowpass, s=noise.shape)
    centred = torch.arange(size, dtype=torch.float32) - size // 2
    radius = (
        centred[:, None, None] ** 2 + centred[None, :, None] ** 2 + centred**2
    ).sqrt()
    mask = torch.sigmoid((0.35 * size - radius) / 2.0)
    return (smooth * mask).to(torch.float32)


def _euler_angles(n: int, generator: torch.Generator) -> torch.Tensor:
    """Random ZYZ Euler angles (phi, theta, psi) in degrees, shape (n, 3)."""
    uniform = torch.rand((n, 3), generator=generator, dtype=torch.float64)
    theta = torch.rad2deg(torch.arccos(1.0 - 2.0 * uniform[:, 1]))
    angles = torch.stack([360.0 * uniform[:, 0], theta, 360.0 * uniform[:, 2]], dim=1)
    return angles.to(torch.float32)


def _image_dft(
    image_shape: tuple[int, int], generator: torch.Generator
) -> torch.Tensor:
    """Random image, RFFT'd and normalised by Leopard-EM's ``preprocess_image``.

    The whitening/bandpass filters are all ones ("identity" whitening).
    """
    image = torch.randn(image_shape, generator=generator)
    image_dft = torch.fft.rfftn(image)
    image_dft[0, 0] = 0 + 0j
    ones = torch.ones(image_dft.shape, dtype=torch.float32)
    return leopard("utils.image_processing").preprocess_image(
        image_dft, ones, ones, image_shape, image_shape
    )


def _projective_filters(
    template_size: int, defocus_values: torch.Tensor
) -> torch.Tensor:
    """CTF stack times whitening filter, as ``core_match_template`` builds it.

    Returns a tensor of shape (1, D, t, t // 2 + 1).
    """
    optics = leopard("pydantic_models.data_structures").OpticsGroup(**OPTICS)
    ctf_filters = leopard("utils.ctf_utils").calculate_ctf_filter_stack(
        template_shape=(template_size, template_size),
        optics_group=optics,
        defocus_offsets=defocus_values,
        pixel_size_offsets=torch.tensor([0.0]),
    )
    whitening = torch.ones((template_size, template_size // 2 + 1))
    return ctf_filters * whitening[None, None, ...]


def build_leopard_inputs(args: argparse.Namespace, n_total: int) -> dict[str, Any]:
    """Synthetic inputs in the layout ``_core_match_template_single_gpu`` expects.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed command line.
    n_total : int
        Number of Euler angles to draw (warm-up plus timed orientations).

    Returns
    -------
    dict[str, Any]
        ``image_dft``, ``template_dft``, ``euler_angles``, ``projective_filters``,
        ``defocus_values`` and ``pixel_values``.
    """
    generator = torch.Generator().manual_seed(args.seed)
    steps = torch.arange(args.defocus, dtype=torch.float32) - (args.defocus - 1) / 2
    defocus_values = steps * DEFOCUS_STEP_ANGSTROM
    volume = _smooth_volume(args.template_size, generator)
    to_rfft_volume = leopard("utils.fourier_slice").volume_to_rfft_fourier_slice
    return {
        "image_dft": _image_dft(args.image_size, generator),
        "template_dft": to_rfft_volume(volume),
        "euler_angles": _euler_angles(n_total, generator),
        "projective_filters": _projective_filters(args.template_size, defocus_values),
        "defocus_values": defocus_values,
        "pixel_values": torch.tensor([0.0]),
    }


def run_leopard_search(
    inputs: dict[str, Any],
    euler_angles: torch.Tensor,
    batch: int,
    backend: str,
    device: torch.device,
) -> tuple[Any, ...]:
    """Run Leopard-EM's single-device search loop over ``euler_angles``.

    Parameters
    ----------
    inputs : dict[str, Any]
        Output of :func:`build_leopard_inputs`.
    euler_angles : torch.Tensor
        Orientations to search, shape (n, 3), degrees, ZYZ.
    batch : int
        Orientation batch size.
    backend : str
        ``"batched"`` or ``"streamed"``.
    device : torch.device
        Where the loop runs (it moves its inputs there itself).

    Returns
    -------
    tuple[Any, ...]
        Leopard-EM's (mip, best_global_index, correlation_sum,
        correlation_squared_sum, correlation_table).
    """
    queue = leopard("backend.distributed").MultiprocessWorkIndexQueue(
        total_indices=euler_angles.shape[0], batch_size=batch, num_processes=1
    )
    core = leopard("backend.core_match_template")
    return core._core_match_template_single_gpu(
        rank=0,
        index_queue=queue,
        image_dft=inputs["image_dft"],
        template_dft=inputs["template_dft"],
        euler_angles=euler_angles,
        projective_filters=inputs["projective_filters"],
        defocus_values=inputs["defocus_values"],
        pixel_values=inputs["pixel_values"],
        orientation_batch_size=batch,
        num_cuda_streams=1,
        backend=backend,
        device=device,
        mag_matrix=None,
        compute_correlation_table=False,
    )


def _search_summary(result: tuple[Any, ...], n_correlations: int) -> dict[str, float]:
    """Statistics of a Leopard-EM search, for comparing conventions."""
    mip, _, corr_sum, corr_sq_sum, _ = result
    mean = corr_sum / n_correlations
    variance = corr_sq_sum / n_correlations - mean**2
    return {
        "mip_max": float(mip.max()),
        "mip_mean": float(mip.mean()),
        "cc_mean": float(mean.mean()),
        "cc_std": float(variance.clamp_min(0).sqrt().mean()),
    }


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory(device: torch.device) -> dict[str, Any]:
    """Peak memory of this process so far: CUDA's allocator, else the resident set.

    Measured the same way as ``twodtm bench`` (``twodtm.programs.benchmark``) does.
    """
    if device.type == "cuda":
        peak = int(torch.cuda.max_memory_allocated(device))
        return {"peak_memory_bytes": peak, "peak_memory_kind": "cuda"}
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return {"peak_memory_bytes": int(rss), "peak_memory_kind": "peak resident set"}


def leopard_worker(args: argparse.Namespace) -> dict[str, Any]:
    """Time Leopard-EM's search loop (warm-up first) in this process.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed command line.

    Returns
    -------
    dict[str, Any]
        Timing and sanity statistics.
    """
    device = torch.device(args.device)
    if device.type == "cpu":
        install_cpu_cuda_stubs()

    torch.set_grad_enabled(False)
    batch = args.orientation_batch_size
    warmup = args.warmup_orientations or batch
    inputs = build_leopard_inputs(args, warmup + args.orientations)
    angles = inputs["euler_angles"]
    setup_start = time.perf_counter()
    run_leopard_search(
        inputs, angles[:warmup].contiguous(), batch, args.leopard_backend, device
    )
    warmup_seconds = time.perf_counter() - setup_start
    timed_angles = angles[warmup:].contiguous()
    _synchronize(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    result = run_leopard_search(
        inputs, timed_angles, batch, args.leopard_backend, device
    )
    _synchronize(device)
    seconds = time.perf_counter() - start
    cpu_seconds = time.process_time() - cpu_start
    n_correlations = args.orientations * args.defocus
    return {
        "engine": "leopard-em",
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "load_average_1min": os.getloadavg()[0],
        "warmup_seconds": warmup_seconds,
        "correlations_per_second": n_correlations / seconds,
        "orientation_batch_size": batch,
        "backend": args.leopard_backend,
        "torch_threads": torch.get_num_threads(),
        "dtype": str(inputs["image_dft"].real.dtype),
        "device": str(device),
        **peak_memory(device),
        **_search_summary(result, n_correlations),
    }


# --------------------------------------------------------------------------------
# Driver (runs under the current interpreter)
# --------------------------------------------------------------------------------


def worker_command(args: argparse.Namespace) -> list[str]:
    """Command line that re-invokes this script as the Leopard-EM worker.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed command line of the driver.

    Returns
    -------
    list[str]
        Argument vector for ``subprocess.run``.
    """
    height, width = args.image_size
    command = [
        args.leopard_python,
        str(Path(__file__).resolve()),
        "--worker",
        "leopard",
    ]
    command += ["--image-size", f"{height}x{width}"]
    command += ["--template-size", str(args.template_size)]
    command += [
        "--orientations",
        str(args.orientations),
        "--defocus",
        str(args.defocus),
    ]
    command += ["--orientation-batch-size", str(args.orientation_batch_size)]
    command += ["--leopard-backend", args.leopard_backend, "--seed", str(args.seed)]
    command += ["--device", args.device]
    if args.warmup_orientations is not None:
        command += ["--warmup-orientations", str(args.warmup_orientations)]
    return command


def time_leopard_once(args: argparse.Namespace) -> dict[str, Any]:
    """Run one Leopard-EM timing in a subprocess of the Leopard-EM interpreter.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed command line of the driver.

    Returns
    -------
    dict[str, Any]
        The worker's result record.
    """
    env = dict(os.environ)
    if args.leopard_allocator == "retained":
        env.update(RETAINED_ALLOCATOR)
    completed = subprocess.run(
        worker_command(args), capture_output=True, text=True, check=False, env=env
    )
    for line in reversed(completed.stdout.splitlines()):
        if line.startswith(RESULT_MARKER):
            return dict(json.loads(line[len(RESULT_MARKER) :]))
    sys.stderr.write(completed.stdout + completed.stderr)
    raise RuntimeError(f"Leopard-EM worker failed (exit status {completed.returncode})")


def twodtm_command(args: argparse.Namespace) -> list[str]:
    """Command line of one ``twodtm bench --json`` run in a fresh interpreter.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed command line of the driver.

    Returns
    -------
    list[str]
        ``python -m twodtm bench ...``: the command line's own start-up, with its
        host-memory settings, as a user's run has them.
    """
    h, w = args.image_size
    return [
        sys.executable,
        "-m",
        "twodtm",
        "bench",
        "--image-size",
        f"{h}x{w}",
        "--template-size",
        str(args.template_size),
        "--orientations",
        str(args.orientations),
        "--defocus",
        str(args.defocus),
        "--device",
        args.device,
        "--json",
    ]


def time_twodtm_once(args: argparse.Namespace) -> dict[str, Any]:
    """Run one twodtm timing in a subprocess, as Leopard-EM's runs are.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed command line.

    Returns
    -------
    dict[str, Any]
        The JSON record of ``twodtm bench`` plus ``"engine": "twodtm"``.
    """
    src = Path(__file__).resolve().parents[1] / "src"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(src), env.get("PYTHONPATH", "")) if p
    )
    completed = subprocess.run(
        twodtm_command(args), capture_output=True, text=True, check=False, env=env
    )
    if completed.returncode != 0:
        sys.stderr.write(completed.stdout + completed.stderr)
        raise RuntimeError(f"twodtm bench failed (exit status {completed.returncode})")
    record = json.loads(completed.stdout.strip().splitlines()[-1])
    return {"engine": "twodtm", **dict(record)}


def _median_rate(records: list[dict[str, Any]]) -> float | None:
    """Median of ``correlations_per_second`` over records (None if empty)."""
    rates = [float(r["correlations_per_second"]) for r in records]
    return statistics.median(rates) if rates else None


def _peak(records: list[dict[str, Any]]) -> int | None:
    """Largest ``peak_memory_bytes`` over records (None if none reports it)."""
    peaks = [int(r["peak_memory_bytes"]) for r in records if "peak_memory_bytes" in r]
    return max(peaks) if peaks else None


def summarise(
    args: argparse.Namespace,
    leopard: list[dict[str, Any]],
    twodtm: list[dict[str, Any]],
) -> dict[str, Any]:
    """Collect the runs into one summary record.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed command line.
    leopard, twodtm : list[dict[str, Any]]
        Per-repeat records of each engine.

    Returns
    -------
    dict[str, Any]
        Settings, per-repeat records, median throughputs and their ratio.
    """
    leopard_rate, twodtm_rate = _median_rate(leopard), _median_rate(twodtm)
    ratio = twodtm_rate / leopard_rate if twodtm_rate and leopard_rate else None
    return {
        "image_shape": list(args.image_size),
        "template_size": args.template_size,
        "n_orientations": args.orientations,
        "n_defocus": args.defocus,
        "repeats": args.repeats,
        "leopard_runs": leopard,
        "twodtm_runs": twodtm,
        "leopard_correlations_per_second": leopard_rate,
        "twodtm_correlations_per_second": twodtm_rate,
        "ratio_twodtm_over_leopard": ratio,
        "leopard_peak_memory_bytes": _peak(leopard),
        "twodtm_peak_memory_bytes": _peak(twodtm),
        "leopard_allocator": args.leopard_allocator,
        "device": args.device,
    }


def print_report(summary: dict[str, Any]) -> None:
    """Print the summary for people.

    Parameters
    ----------
    summary : dict[str, Any]
        Output of :func:`summarise`.
    """
    height, width = summary["image_shape"]
    print(
        f"image {height}x{width}, template {summary['template_size']}, "
        f"K={summary['n_orientations']} orientations, D={summary['n_defocus']} "
        f"defocus, Leopard-EM allocator: {summary['leopard_allocator']}"
    )
    for run in summary["leopard_runs"] + summary["twodtm_runs"]:
        extra = ""
        if "cpu_seconds" in run:
            extra = f"  (cpu {run['cpu_seconds']:.1f} s, wall {run['seconds']:.1f} s)"
        print(
            f"  {run['engine']:>10}: {run['correlations_per_second']:8.2f} cc/s{extra}"
        )
    leopard_rate = summary["leopard_correlations_per_second"]
    twodtm_rate = summary["twodtm_correlations_per_second"]
    print(f"Leopard-EM (median): {leopard_rate:.2f} cross-correlations/s")
    print(f"twodtm     (median): {twodtm_rate:.2f} cross-correlations/s")
    print(f"ratio twodtm/leopard: {summary['ratio_twodtm_over_leopard']:.2f}")
    for engine in ("leopard", "twodtm"):
        peak = summary[f"{engine}_peak_memory_bytes"]
        if peak is not None:
            print(f"peak memory {engine}: {peak / 2**30:.2f} GiB")


def run_driver(args: argparse.Namespace) -> dict[str, Any]:
    """Time Leopard-EM and twodtm alternately, ``args.repeats`` times each.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed command line.

    Returns
    -------
    dict[str, Any]
        Output of :func:`summarise`.
    """
    if not Path(args.leopard_python).exists():
        raise SystemExit(
            f"no Leopard-EM interpreter at {args.leopard_python}: build it as in the "
            "module docstring of benchmarks/vs_leopard.py"
        )
    leopard: list[dict[str, Any]] = []
    twodtm: list[dict[str, Any]] = []
    for _ in range(args.repeats):
        leopard.append(time_leopard_once(args))
        twodtm.append(time_twodtm_once(args))
    return summarise(args, leopard, twodtm)


def main(argv: list[str] | None = None) -> None:
    """Entry point: driver by default, Leopard-EM worker with ``--worker leopard``.

    Parameters
    ----------
    argv : list[str] | None
        Command-line arguments (default: ``sys.argv[1:]``).
    """
    args = build_parser().parse_args(argv)
    if args.orientation_batch_size is None:
        args.orientation_batch_size = auto_batch_size(
            args.image_size, args.orientations, args.defocus
        )
    if args.orientations % args.orientation_batch_size:
        raise SystemExit("--orientations must be a multiple of the batch size")
    if args.worker == "leopard":
        print(RESULT_MARKER + json.dumps(leopard_worker(args)), flush=True)
        return
    summary = run_driver(args)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print_report(summary)


if __name__ == "__main__":
    main()
