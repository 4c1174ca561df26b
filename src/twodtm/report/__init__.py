"""The report of a match: pictures of the micrograph, maps and statistics in one HTML.

``write_report`` reads a result directory (``twodtm match``, and the picks of
``twodtm peaks`` with their ``peaks.json``) and writes ``report.html``, its PNGs
and ``report.json``. The package holds the display helpers (``_images``), the
figures (``_figures``), what is read from the result (``_inputs``) and the page
(``_page``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from twodtm.evaluation import match_to_truth, score_curve
from twodtm.io.atomic import atomic_path, write_text_atomic
from twodtm.io.results import MatchResult
from twodtm.picking import PeakSettings, find_peaks
from twodtm.report._dataset import (
    HISTOGRAM_NAME,
    read_zscore_histogram,
    write_dataset_report,
    write_zscore_histogram,
)
from twodtm.report._figures import (
    N_LABELS,
    defocus_figure,
    histogram_figure,
    map_figure,
    noise_counts,
    particle_figure,
    recall_precision_figure,
    truth_figure,
)
from twodtm.report._images import (
    bin_image,
    display_binning,
    figure_png,
    stretch_contrast,
)
from twodtm.report._inputs import (
    Picks,
    read_micrograph,
    read_picks,
    read_truth,
    template_box,
    with_map_values,
)
from twodtm.report._page import Picture, json_safe, render_html

__all__ = [
    "HISTOGRAM_NAME",
    "bin_image",
    "display_binning",
    "noise_counts",
    "read_zscore_histogram",
    "stretch_contrast",
    "write_dataset_report",
    "write_report",
    "write_zscore_histogram",
]


def _picture(name: str, title: str, caption: str, fig: Figure, **drawn: Any) -> Picture:
    return Picture(name, title, caption, figure_png(fig), dict(drawn))


def _core_pictures(
    result: MatchResult,
    image: np.ndarray,
    particles: pd.DataFrame,
    radius: float,
    threshold: float,
) -> list[Picture]:
    """Micrograph with particles, z-score map, MIP, histogram, defocus."""
    excluded = None if result.mask is None else ~result.searched
    fig, drawn = particle_figure(
        image,
        particles,
        radius,
        f"{len(particles)} particles, labelled by z-score",
        excluded=excluded,
    )
    shaded = (
        ""
        if excluded is None
        else f" Shaded red: the {float(excluded.mean()):.1%} left out of the search."
    )
    pictures = [
        _picture(
            "micrograph.png",
            "Picked particles",
            f"Circles of radius {radius:.0f} px (half the template box); the "
            f"{min(N_LABELS, len(particles))} highest z-scores are written.{shaded}",
            fig,
            **drawn,
        ),
        _picture(
            "zscore.png",
            "z-score map",
            "Scaled MIP: (MIP - mean) / std of each pixel's correlations.",
            map_figure(result.maps["zscore"], "z-score map", "z-score"),
        ),
        _picture(
            "mip.png",
            "Maximum intensity projection",
            "Best normalised cross-correlation of each pixel over the search.",
            map_figure(result.maps["mip"], "MIP", "cross-correlation", "viridis"),
        ),
    ]
    return [*pictures, *_statistics_pictures(result, image, particles, threshold)]


def _statistics_pictures(
    result: MatchResult,
    image: np.ndarray,
    particles: pd.DataFrame,
    threshold: float,
) -> list[Picture]:
    """Draw the z-score histogram and, with particles, their defocus."""
    per_pixel = result.metadata.correlations_per_pixel
    searched = result.maps["zscore"][result.searched]
    fig, counts = histogram_figure(searched, per_pixel, threshold)
    pictures = [
        _picture(
            "histogram.png",
            "z-score histogram",
            "Pixels searched per z-score bin on a log scale. The dashed curve is "
            "what pure "
            "Gaussian noise would give (each pixel the maximum of its correlations, "
            "taken as independent); particles form the tail on the right.",
            fig,
            **counts,
        )
    ]
    if len(particles) and "defocus" in particles.columns:
        nominal = result.metadata.optics.defocus_mean
        pictures.append(
            _picture(
                "defocus.png",
                "Defocus of the picked particles",
                "Best-matching defocus of each particle (search offsets added to the "
                "micrograph's defocus); a gradient across the image hints at tilt.",
                defocus_figure(particles, image.shape, nominal),
            )
        )
    return pictures


def _truth_pictures(
    result: MatchResult,
    image: np.ndarray,
    found: pd.DataFrame,
    truth: pd.DataFrame,
    radius: float,
    threshold: float,
    box: int | None,
) -> tuple[list[Picture], dict[str, Any]]:
    """Found/false/missed marks and the recall-precision curve."""
    max_distance = max(2.0, 0.5 * radius)
    score = match_to_truth(found, truth, max_distance, result.metadata.symmetry)
    pairs = score.pairs[["found_index", "truth_index"]].to_numpy(dtype=int)
    fig, drawn = truth_figure(image, found, truth, pairs, radius)
    caption = (
        f"A pick within {max_distance:.0f} px of a true position is found. Recall "
        f"{score.recall:.2f}, precision {score.precision:.2f}; median errors of the "
        f"found: {score.median_position_error:.2f} px, "
        f"{score.median_angular_error:.1f} deg, {score.median_defocus_error:.0f} Å."
    )
    pictures = [_picture("truth.png", "Against the truth table", caption, fig, **drawn)]
    candidates, how = _candidates(result, found, box, threshold)
    if len(candidates):
        z = candidates["zscore"].to_numpy(dtype=float)
        thresholds = np.linspace(float(z.min()), float(z.max()), 40)
        curve = score_curve(candidates, truth, max_distance, thresholds)
        pictures.append(
            _picture(
                "recall_precision.png",
                "Recall and precision",
                f"{how}, kept at each z-score threshold and scored against the "
                "truth table.",
                recall_precision_figure(curve, threshold),
            )
        )
    return pictures, {**score.summary(), "max_distance_px": max_distance}


def _candidates(
    result: MatchResult, found: pd.DataFrame, box: int | None, threshold: float
) -> tuple[pd.DataFrame, str]:
    """Peaks down to 1.5 below ``threshold`` for the curve (``found`` without a box)."""
    if box is None:
        return found, "The picked particles"
    low = threshold - 1.5
    picked = find_peaks(result, PeakSettings(zscore=low), box)
    return picked, f"Peaks picked down to z = {low:.2f} (1.5 below the threshold used)"


def _summary_rows(
    result: MatchResult, picks: Picks, n_particles: int
) -> list[tuple[str, str]]:
    meta = result.metadata
    space = meta.search_space
    per_pixel, n_pixels = meta.correlations_per_pixel, int(result.maps["zscore"].size)
    h, w = result.maps["zscore"].shape
    seconds = meta.run.run_time_s
    rate = meta.correlations_per_second
    rows = [
        ("micrograph", meta.micrograph),
        ("template", meta.template),
        ("image", f"{w} x {h} px at {result.pixel_size:.4g} Å/px"),
        (
            "search",
            f"{space.orientations} orientations x "
            f"{space.defocus_values} defocus x "
            f"{space.pixel_sizes} pixel sizes = "
            f"{per_pixel:,} correlations per pixel",
        ),
        ("correlation values", f"{per_pixel * n_pixels:.3g}"),
        ("excluded from the search", _excluded_row(result)),
        ("run time", f"{seconds:.1f} s on {', '.join(meta.run.devices) or '?'}"),
        (
            "throughput",
            f"{rate:,.1f} image correlations/s ({rate * n_pixels:.3g} values/s)",
        ),
        ("particles", f"{n_particles} ({picks.source})"),
        ("z-score threshold", f"{picks.threshold:.2f} ({picks.threshold_source})"),
    ]
    versions = meta.run.versions
    if versions:
        rows.append(("versions", ", ".join(f"{k} {v}" for k, v in versions.items())))
    return rows


def _excluded_row(result: MatchResult) -> str:
    """Describe the share left out of the search and what excluded it."""
    meta = result.metadata
    masking = meta.config.get("masking", {})
    sources = []
    if masking.get("mask"):
        sources.append(f"mask {masking['mask']}")
    if masking.get("auto_exclude"):
        sources.append("automatic exclusion")
    how = f" ({', '.join(sources)})" if sources else ""
    return (
        f"{meta.excluded_fraction:.1%} ({meta.excluded_pixels:,} of "
        f"{meta.n_pixels:,} px){how}"
    )


def _write_png(directory: Path, picture: Picture) -> None:
    with atomic_path(directory / picture.name) as tmp:
        tmp.write_bytes(picture.png)


def write_report(
    result_dir: str | os.PathLike[str],
    truth: str | os.PathLike[str] | None = None,
    particles: pd.DataFrame | None = None,
) -> Path:
    """Write ``report.html``, its PNGs and ``report.json`` into ``result_dir``.

    Parameters
    ----------
    result_dir : str or PathLike
        A directory written by ``twodtm match``.
    truth : str or PathLike, optional
        STAR or CSV table of the true particle positions (pixels); adds the
        found/missed/false picture and the recall-precision curve.
    particles : DataFrame, optional
        Picked particles (``x``, ``y`` pixels, ``zscore``). By default
        ``particles.star`` or ``particles.csv`` in ``result_dir``, else picked now
        with the default peak settings. The threshold drawn and stated is the one
        of ``peaks.json`` (written with the tables by ``twodtm peaks``), else the
        1-false-positive default, labelled as such.

    Returns
    -------
    Path
        The HTML file. ``report.json`` lists every picture and what it shows,
        e.g. the circles drawn on the micrograph, in micrograph pixels.
    """
    root = Path(result_dir)
    result = MatchResult.load(root)
    truth_table = None if truth is None else read_truth(truth)
    image, note = read_micrograph(result, root)
    box = template_box(result)
    radius = 0.5 * box if box else 0.05 * min(image.shape)
    picks = read_picks(root, result, box, particles)
    particles = with_map_values(picks.particles, result)
    threshold = picks.threshold
    pictures = _core_pictures(result, image, particles, radius, threshold)
    record: dict[str, Any] = {
        "threshold": threshold,
        "threshold_source": picks.threshold_source,
        "particles_source": picks.source,
        "excluded_fraction": result.metadata.excluded_fraction,
    }
    if truth_table is not None:
        extra, record["truth"] = _truth_pictures(
            result, image, particles, truth_table, radius, threshold, box
        )
        pictures += extra
    record["notes"] = [note] if note else []
    record["notes"] += list(picks.notes)
    if box is None:
        record["notes"].append(
            "The template file is gone; circles are drawn at 5% of the image size."
        )
    rows = _summary_rows(result, picks, len(particles))
    return _write_outputs(root, result, pictures, particles, record, rows)


def _write_outputs(
    root: Path,
    result: MatchResult,
    pictures: list[Picture],
    particles: pd.DataFrame,
    record: dict[str, Any],
    rows: list[tuple[str, str]],
) -> Path:
    """Write the PNGs, ``report.json`` and ``report.html``; return the HTML path."""
    for picture in pictures:
        _write_png(root, picture)
    record = {**record, "pictures": {p.name: p.drawn for p in pictures}}
    text = json.dumps(json_safe(record), indent=1, allow_nan=False)
    write_text_atomic(root / "report.json", text)
    if "truth" in record:
        score = record["truth"]
        recall, precision = score["recall"], score["precision"]
        rows = [
            *rows,
            ("against the truth", f"recall {recall:.2f}, precision {precision:.2f}"),
        ]
    micrograph = Path(result.metadata.micrograph)
    page = render_html(
        f"twodtm report: {micrograph.name}",
        rows,
        pictures,
        particles,
        result.metadata.config_yaml,
        record["notes"],
    )
    write_text_atomic(root / "report.html", page)
    return root / "report.html"
