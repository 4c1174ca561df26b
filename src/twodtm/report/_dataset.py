"""The report of a dataset run: particles, z-scores and time over every micrograph.

``twodtm run`` keeps, per micrograph, the histogram of its z-score map on one
fixed set of bins (``zscore_histogram.json``, written beside ``peaks.json``), so
the dataset's distribution is a sum of counts and no map is read again. The
page (``report.html`` in the run's output) shows the particles per micrograph,
the pooled z-scores against the noise model (the sum over micrographs of the
expected counts of pure noise, ``_figures.noise_counts``), the time of each
stage per micrograph and the micrographs that failed, with why.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from twodtm.io.atomic import write_text_atomic
from twodtm.report._figures import noise_counts
from twodtm.report._images import figure_png, new_figure
from twodtm.report._page import Picture, json_safe, render_html

__all__ = [
    "HISTOGRAM_NAME",
    "ZSCORE_EDGES",
    "read_zscore_histogram",
    "write_dataset_report",
    "write_zscore_histogram",
]

HISTOGRAM_NAME = "zscore_histogram.json"
ZSCORE_EDGES = np.round(np.arange(-8.0, 40.0 + 1e-9, 0.1), 10)
"""Bin edges of every micrograph's z-score histogram; values beyond are clipped."""
_STAGES = ("match", "peaks", "refine")
_STAGE_COLOURS = {"match": "#1f4e79", "peaks": "#e07b00", "refine": "#2e8b57"}


def write_zscore_histogram(
    directory: str | os.PathLike[str],
    zscores: np.ndarray,
    correlations_per_pixel: int,
    threshold: float,
) -> Path:
    """Write the histogram of a z-score map on ``ZSCORE_EDGES`` (JSON, atomically).

    Parameters
    ----------
    directory : path
        The micrograph's result directory.
    zscores : np.ndarray
        ``(H, W)`` z-score map; values outside the edges count in the end bins.
    correlations_per_pixel : int
        Trials behind each pixel's maximum (the noise model's ``n``).
    threshold : float
        The z-score threshold the micrograph's particles were picked at.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     _ = write_zscore_histogram(tmp, np.array([[0.05, 99.0]]), 10, 5.0)
    ...     record = read_zscore_histogram(tmp)
    >>> int(sum(record["counts"])), record["counts"][80], record["counts"][-1]
    (2, 1, 1)
    """
    values = np.clip(np.asarray(zscores, dtype=float).ravel(), -8.0, 40.0)
    counts, _ = np.histogram(values, ZSCORE_EDGES)
    record = {
        "counts": counts.tolist(),
        "n_pixels": int(values.size),
        "correlations_per_pixel": int(correlations_per_pixel),
        "max_zscore": float(np.max(zscores)),
        "threshold": float(threshold),
    }
    path = Path(directory) / HISTOGRAM_NAME
    write_text_atomic(path, json.dumps(json_safe(record)))
    return path


def read_zscore_histogram(directory: str | os.PathLike[str]) -> dict[str, Any] | None:
    """Read the record of ``write_zscore_histogram`` (None: none or unreadable)."""
    path = Path(directory) / HISTOGRAM_NAME
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    if len(record.get("counts", ())) != len(ZSCORE_EDGES) - 1:
        return None
    return dict(record)


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _particles_figure(rows: Sequence[Mapping[str, Any]]) -> tuple[Figure, dict]:
    """Bar chart of the particles of each micrograph; failed ones marked."""
    names = [Path(str(r["micrograph"])).name for r in rows]
    counts = [0 if r["status"] == "failed" else int(r["particles"]) for r in rows]
    failed = [i for i, r in enumerate(rows) if r["status"] == "failed"]
    fig = new_figure(8.0, max(2.5, 0.28 * len(rows) + 1.2))
    ax = fig.add_subplot()
    ax.barh(range(len(rows)), counts, color="#1f4e79")
    if failed:
        ax.scatter(
            [0] * len(failed), failed, marker="x", color="#c0392b", label="failed"
        )
        ax.legend(loc="lower right", fontsize=9)
    ax.set_yticks(range(len(rows)), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("particles")
    ax.set_title(f"{sum(counts):,} particles in {len(rows) - len(failed)} micrographs")
    return fig, {"micrographs": names, "particles": counts, "failed": failed}


def _pooled(histograms: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """Observed and noise-model counts over all micrographs, on ``ZSCORE_EDGES``."""
    observed = np.zeros(len(ZSCORE_EDGES) - 1)
    expected = np.zeros(len(ZSCORE_EDGES) - 1)
    for h in histograms:
        observed += np.asarray(h["counts"], dtype=float)
        expected += noise_counts(
            ZSCORE_EDGES, int(h["n_pixels"]), int(h["correlations_per_pixel"])
        )
    return observed, expected


def _zscore_figure(histograms: Sequence[Mapping[str, Any]]) -> tuple[Figure, dict]:
    """Pooled z-score histogram (log) against the summed noise-model counts."""
    observed, expected = _pooled(histograms)
    filled = np.flatnonzero(observed)
    lo, hi = (filled[0], filled[-1] + 1) if len(filled) else (0, len(observed))
    edges = ZSCORE_EDGES[lo : hi + 1]
    fig = new_figure(8.0, 4.5)
    ax = fig.add_subplot()
    ax.stairs(observed[lo:hi], edges, color="#1f4e79", linewidth=1.4, label="dataset")
    centres = 0.5 * (edges[:-1] + edges[1:])
    ax.plot(
        centres,
        expected[lo:hi],
        color="#e07b00",
        linestyle="--",
        linewidth=1.4,
        label="noise only (summed over micrographs)",
    )
    thresholds = [float(h["threshold"]) for h in histograms]
    if thresholds:
        median = float(np.median(thresholds))
        ax.axvline(
            median,
            color="#c0392b",
            linewidth=1.2,
            label=f"threshold z = {median:.2f} (median)",
        )
    ax.set_yscale("log")
    ax.set_ylim(0.5, max(float(observed.max(initial=1.0)), 1.0) * 3)
    ax.set_xlabel("z-score (scaled MIP)")
    ax.set_ylabel("pixels per bin")
    ax.set_title(f"z-scores of {len(histograms)} micrographs")
    ax.legend(loc="upper right", fontsize=9)
    ax.grid(alpha=0.3)
    drawn = {
        "edges": edges.tolist(),
        "counts": observed[lo:hi].tolist(),
        "noise_counts": expected[lo:hi].tolist(),
        "thresholds": thresholds,
    }
    return fig, drawn


def _time_figure(rows: Sequence[Mapping[str, Any]]) -> tuple[Figure, dict]:
    """Stacked bars: seconds of match, peaks and refine of each micrograph."""
    names = [Path(str(r["micrograph"])).name for r in rows]
    seconds = {
        s: [0.0 if math.isnan(v) else v for v in (_float(r[f"{s}_s"]) for r in rows)]
        for s in _STAGES
    }
    fig = new_figure(8.0, max(2.5, 0.28 * len(rows) + 1.2))
    ax = fig.add_subplot()
    left = np.zeros(len(rows))
    for stage in _STAGES:
        ax.barh(
            range(len(rows)),
            seconds[stage],
            left=left,
            color=_STAGE_COLOURS[stage],
            label=stage,
        )
        left += np.asarray(seconds[stage])
    ax.set_yticks(range(len(rows)), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("seconds")
    ax.set_title(f"time per micrograph ({left.sum():.1f} s in all)")
    ax.legend(loc="lower right", fontsize=9)
    return fig, {"micrographs": names, **{f"{s}_s": seconds[s] for s in _STAGES}}


def _summary(rows: Sequence[Mapping[str, Any]], n_groups: int) -> list[tuple[str, str]]:
    failed = [r for r in rows if r["status"] == "failed"]
    done = [r for r in rows if r["status"] != "failed"]
    total = sum(
        _float(r[f"{s}_s"]) for r in rows for s in _STAGES if _float(r[f"{s}_s"]) >= 0
    )
    return [
        ("micrographs", f"{len(rows)}: {len(done)} finished, {len(failed)} failed"),
        ("particles", f"{sum(int(r['particles']) for r in done):,}"),
        ("optics groups", str(n_groups)),
        ("time of the stages", f"{total:.1f} s"),
    ]


def write_dataset_report(
    output: str | os.PathLike[str],
    rows: Sequence[Mapping[str, Any]],
    particles: pd.DataFrame,
    n_groups: int,
    config_yaml: str,
) -> Path:
    """Write ``report.html`` and ``report.json`` of a dataset run into ``output``.

    Parameters
    ----------
    output : path
        The run's output directory.
    rows : sequence of mapping
        One per micrograph, the run's summary rows: ``micrograph``, ``directory``,
        ``status`` (``failed`` or not), ``failed_stage``, ``message``,
        ``particles`` and ``match_s``, ``peaks_s``, ``refine_s`` (NaN: unknown).
    particles : pandas.DataFrame
        The combined particles (``zscore``, ``x``, ``y``, ...).
    n_groups : int
        Optics groups of the combined particles STAR.
    config_yaml : str
        The run's configuration, shown on the page.

    Returns
    -------
    Path
        The HTML page. ``report.json`` records what each figure shows.
    """
    root = Path(output)
    finished = [r for r in rows if r["status"] != "failed"]
    histograms = [
        h for h in (read_zscore_histogram(r["directory"]) for r in finished) if h
    ]
    figures = [
        (
            "particles.png",
            "Particles per micrograph",
            "Particles in the combined STAR per micrograph; a red cross marks a "
            "micrograph that failed.",
            _particles_figure(rows),
        ),
        (
            "zscores.png",
            "z-scores over the dataset",
            "Pixels per z-score bin, every micrograph's map pooled, on a log scale. "
            "The dashed curve is what pure Gaussian noise would give: the sum over "
            "micrographs of pixels x P(max of n Gaussians in the bin), n the "
            "correlations per pixel; particles form the tail on the right.",
            _zscore_figure(histograms),
        ),
        (
            "time.png",
            "Time per micrograph",
            "Seconds of each stage; a stage skipped because it was done before keeps "
            "the time it took then (0 where unknown).",
            _time_figure(rows),
        ),
    ]
    pictures = [
        Picture(name, title, caption, figure_png(fig), drawn)
        for name, title, caption, (fig, drawn) in figures
    ]
    notes = [
        f"FAILED {r['micrograph']} at {r['failed_stage']}: {r['message']}"
        for r in rows
        if r["status"] == "failed"
    ]
    record = {
        "failed": [
            {k: r[k] for k in ("micrograph", "failed_stage", "message")}
            for r in rows
            if r["status"] == "failed"
        ],
        "pictures": {p.name: p.drawn for p in pictures},
    }
    text = json.dumps(json_safe(record), indent=1, allow_nan=False)
    write_text_atomic(root / "report.json", text)
    page = render_html(
        f"twodtm run: {root.name}",
        _summary(rows, n_groups),
        pictures,
        particles,
        config_yaml,
        notes,
    )
    write_text_atomic(root / "report.html", page)
    return root / "report.html"
