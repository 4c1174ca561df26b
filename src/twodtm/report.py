"""The report of a match: pictures of the micrograph, maps and statistics in one HTML.

Every figure is drawn on a ``matplotlib.figure.Figure`` with the Agg canvas attached
explicitly, so no global matplotlib state (``pyplot``, the default backend) is
touched. Images are displayed with the origin at the bottom left, as MRC viewers do:
``x`` is the column and ``y`` the row of the micrograph array, in pixels. Large
images are binned for display only; coordinates stay in micrograph pixels.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mrcfile
import numpy as np
import pandas as pd
from matplotlib import patheffects
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Circle
from scipy.special import log_ndtr

from twodtm.errors import InputFileError
from twodtm.evaluation import match_to_truth, score_curve
from twodtm.io.atomic import atomic_path, write_text_atomic
from twodtm.io.mrc import read_mrc
from twodtm.io.results import MatchResult
from twodtm.io.tables import read_particles
from twodtm.programs.peaks import (
    PeakSettings,
    find_peaks,
    number_of_trials,
    threshold_for_false_positives,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes

DISPLAY_SIZE = 720
"""Largest displayed image side, pixels (about the axes width at ``DPI``)."""
DPI = 110
N_LABELS = 25
"""Particles labelled with their z-score, highest first."""

_CIRCLE = "#ffd400"
_FOUND, _FALSE, _MISSED = "#2ecc40", "#ff4136", "#39cccc"


@dataclass(frozen=True)
class Picture:
    """One figure of the report: its file name, heading, caption and PNG bytes."""

    name: str
    title: str
    caption: str
    png: bytes
    drawn: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------- image helpers


def display_binning(shape: Sequence[int], max_size: int = DISPLAY_SIZE) -> int:
    """Integer binning factor that brings the larger side to at most ``max_size``."""
    return max(1, math.ceil(max(shape) / max_size))


def bin_image(image: np.ndarray, factor: int, reduce: str = "mean") -> np.ndarray:
    """Bin ``(H, W)`` by ``factor`` with the mean or the max of each block.

    Rows and columns beyond a whole number of blocks are dropped. The input is
    left unchanged; ``factor == 1`` returns a copy.
    """
    if factor == 1:
        return np.array(image, dtype=np.float32)
    h, w = (image.shape[0] // factor) * factor, (image.shape[1] // factor) * factor
    blocks = image[:h, :w].reshape(h // factor, factor, w // factor, factor)
    binned = blocks.max(axis=(1, 3)) if reduce == "max" else blocks.mean(axis=(1, 3))
    return binned.astype(np.float32)


def stretch_contrast(
    image: np.ndarray, low: float = 1.0, high: float = 99.0
) -> np.ndarray:
    """Map the ``low``..``high`` percentiles of ``image`` to 0..1, clipping outside."""
    lo, hi = np.percentile(image, [low, high])
    if hi <= lo:
        return np.zeros_like(image, dtype=np.float32)
    return np.clip((image - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def _extent(
    binned_shape: tuple[int, int], factor: int
) -> tuple[float, float, float, float]:
    # Binned pixel j covers micrograph pixels j*f .. j*f + f - 1.
    h, w = binned_shape
    return (-0.5, w * factor - 0.5, -0.5, h * factor - 0.5)


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def figure_png(fig: Figure) -> bytes:
    """Render ``fig`` to PNG bytes with the Agg canvas."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def _imshow(
    ax: Axes, binned: np.ndarray, factor: int, shape: Sequence[int], **style: Any
) -> Any:
    """Draw an image binned by ``factor`` in the pixel coordinates of ``shape``."""
    shown = ax.imshow(
        binned,
        origin="lower",
        extent=_extent((binned.shape[0], binned.shape[1]), factor),
        interpolation="antialiased",
        **style,
    )
    ax.set_xlim(-0.5, shape[1] - 0.5)
    ax.set_ylim(-0.5, shape[0] - 0.5)
    ax.set_xlabel("x (pixels)")
    ax.set_ylabel("y (pixels)")
    return shown


# ---------------------------------------------------------------- figures


def _outlined(fontsize: float) -> dict[str, Any]:
    return {
        "fontsize": fontsize,
        "color": "white",
        "path_effects": [patheffects.withStroke(linewidth=2, foreground="black")],
    }


def _image_size(shape: Sequence[int], width: float = 8.0) -> tuple[float, float]:
    # Room for the colour bar and labels; the image keeps its aspect ratio.
    return (width, max(3.0, min(12.0, (width - 1.0) * shape[0] / shape[1])))


def micrograph_axes(image: np.ndarray, title: str) -> tuple[Figure, Axes]:
    """Show the contrast-stretched ``(H, W)`` micrograph in grey on a new figure."""
    factor = display_binning(image.shape)
    fig = _figure(*_image_size(image.shape))
    ax = fig.add_subplot()
    _imshow(
        ax, stretch_contrast(bin_image(image, factor)), factor, image.shape, cmap="gray"
    )
    ax.set_title(title)
    return fig, ax


def _drawn_circles(ax: Axes, gid: str) -> list[dict[str, float]]:
    return [
        {"x": float(p.center[0]), "y": float(p.center[1]), "radius": float(p.radius)}
        for p in ax.patches
        if isinstance(p, Circle) and p.get_gid() == gid
    ]


def draw_circles(
    ax: Axes, x: np.ndarray, y: np.ndarray, radius: float, gid: str, **style: Any
) -> list[dict[str, float]]:
    """Circle every ``(x, y)`` (pixels) on ``ax``; return the circles read back.

    The returned list holds ``x``, ``y`` and ``radius`` of each patch tagged ``gid``
    as the figure holds it, in the order given.
    """
    for cx, cy in zip(x, y, strict=True):
        circle = Circle((float(cx), float(cy)), radius, fill=False, gid=gid, **style)
        ax.add_patch(circle)
    return _drawn_circles(ax, gid)


def label_top(
    ax: Axes, particles: pd.DataFrame, radius: float, n_labels: int = N_LABELS
) -> list[int]:
    """Write the z-score beside the ``n_labels`` highest-scoring particles.

    Returns the table rows (positional) that were labelled, highest first.
    """
    order = np.argsort(-particles["zscore"].to_numpy(), kind="stable")[:n_labels]
    style = _outlined(7.5 if len(particles) > 40 else 9.5)
    x_max, y_max = max(ax.get_xlim()), max(ax.get_ylim())
    for row in order:
        cx, cy = float(particles["x"].iloc[row]), float(particles["y"].iloc[row])
        # near the right or top edge the label goes on the inner side, not clipped
        left = cx + 3 * radius > x_max
        below = cy + 2 * radius > y_max
        x = cx - 0.8 * radius if left else cx + 0.8 * radius
        y = cy - 0.8 * radius if below else cy + 0.8 * radius
        text = f"{particles['zscore'].iloc[row]:.1f}"
        ax.text(
            x,
            y,
            text,
            clip_on=True,
            horizontalalignment="right" if left else "left",
            verticalalignment="top" if below else "bottom",
            **style,
        )
    return [int(r) for r in order]


def particle_figure(
    image: np.ndarray,
    particles: pd.DataFrame,
    radius: float,
    title: str,
    n_labels: int = N_LABELS,
) -> tuple[Figure, dict[str, Any]]:
    """Draw the micrograph with each picked particle circled and the best labelled.

    Parameters
    ----------
    image : np.ndarray
        ``(H, W)`` micrograph (or the map to draw underneath).
    particles : DataFrame
        Columns ``x``, ``y`` (pixels) and ``zscore``.
    radius : float
        Circle radius, micrograph pixels.
    title : str
        Figure title.
    n_labels : int
        How many of the highest z-scores are written beside their circles.

    Returns
    -------
    Figure, dict
        The figure, and what it shows: ``circles`` (``x``, ``y``, ``radius`` read
        back from the figure, in the table's row order) and ``labelled`` rows.
    """
    fig, ax = micrograph_axes(image, title)
    xy = particles[["x", "y"]].to_numpy(dtype=float).reshape(-1, 2)
    circles = draw_circles(
        ax, xy[:, 0], xy[:, 1], radius, "particle", edgecolor=_CIRCLE, linewidth=1.2
    )
    labelled = label_top(ax, particles, radius, n_labels)
    return fig, {"circles": circles, "labelled": labelled}


def map_figure(image: np.ndarray, title: str, unit: str, cmap: str = "magma") -> Figure:
    """Draw a score map with a colour bar; binning keeps the maximum of each block."""
    factor = display_binning(image.shape)
    fig = _figure(*_image_size(image.shape, 8.8))
    ax = fig.add_subplot()
    lo, hi = np.percentile(image, [0.5, 100.0])
    shown = _imshow(
        ax,
        bin_image(image, factor, "max"),
        factor,
        image.shape,
        cmap=cmap,
        vmin=lo,
        vmax=hi,
    )
    fig.colorbar(shown, ax=ax, label=unit, shrink=0.85)
    note = f" (max over {factor}x{factor} px blocks)" if factor > 1 else ""
    ax.set_title(title + note)
    return fig


def noise_counts(edges: np.ndarray, n_pixels: int, n_correlations: int) -> np.ndarray:
    """Pixels expected in each z-score bin when the micrograph holds only noise.

    The z-score of a pixel is the maximum of its ``n_correlations`` standardised
    correlations; for independent Gaussian noise ``P(z <= t) = Phi(t)**n``.

    Parameters
    ----------
    edges : np.ndarray
        ``(B + 1,)`` increasing bin edges.
    n_pixels, n_correlations : int
        Pixels in the map and correlations per pixel.

    Returns
    -------
    np.ndarray
        ``(B,)`` expected counts.
    """
    survival = -np.expm1(n_correlations * log_ndtr(np.asarray(edges, dtype=float)))
    return n_pixels * (survival[:-1] - survival[1:])


def histogram_figure(
    zscores: np.ndarray, n_correlations: int, threshold: float | None
) -> tuple[Figure, dict[str, Any]]:
    """Histogram of every pixel's z-score (log scale) against the noise model."""
    values = np.asarray(zscores, dtype=float).ravel()
    top = max(float(values.max()), threshold or 0.0) + 0.5
    edges = np.linspace(float(values.min()) - 0.25, top, 121)
    counts, _ = np.histogram(values, edges)
    expected = noise_counts(edges, values.size, n_correlations)
    fig = _figure(8.0, 4.5)
    ax = fig.add_subplot()
    ax.stairs(counts, edges, color="#1f4e79", linewidth=1.4, label="this micrograph")
    centres = 0.5 * (edges[:-1] + edges[1:])
    ax.plot(
        centres,
        expected,
        color="#e07b00",
        linestyle="--",
        linewidth=1.4,
        label=f"noise only: max of {n_correlations:,} Gaussians",
    )
    if threshold is not None:
        above = int((values >= threshold).sum())
        ax.axvline(
            threshold,
            color="#c0392b",
            linewidth=1.2,
            label=f"threshold z = {threshold:.2f} ({above:,} px above)",
        )
    ax.set_yscale("log")
    ax.set_ylim(0.5, max(float(counts.max()), 1.0) * 3)
    ax.set_xlabel("z-score (scaled MIP)")
    ax.set_ylabel("pixels per bin")
    ax.set_title("z-score histogram")
    ax.legend(loc="upper right", fontsize=9)
    ax.grid(alpha=0.3, which="major")
    return fig, {"edges": edges.tolist(), "counts": counts.tolist()}


def _defocus_bars(ax: Axes, defocus: np.ndarray) -> None:
    """Plot counts per searched defocus value, or a histogram if many values differ."""
    values, counts = np.unique(np.round(defocus, 1), return_counts=True)
    if len(values) > 25:
        ax.hist(defocus, bins=30, color="#5b8db8", edgecolor="white")
        return
    step = float(np.diff(values).min()) if len(values) > 1 else 200.0
    ax.bar(values, counts, width=0.8 * step, color="#5b8db8")
    ax.set_xlim(values[0] - 2 * step, values[-1] + 2 * step)
    if len(values) <= 12:
        ax.set_xticks(values, [f"{v:,.0f}" for v in values], rotation=45, ha="right")


def defocus_figure(
    particles: pd.DataFrame, shape: Sequence[int], nominal: float | None
) -> Figure:
    """Defocus of the picked particles: where they lie, and how it is spread.

    ``particles`` needs ``x``, ``y`` (pixels) and ``defocus`` (A); ``nominal`` is
    the micrograph's mean defocus (A), marked on the histogram.
    """
    fig = _figure(11.0, 4.6)
    where, spread = fig.subplots(1, 2, width_ratios=(1.15, 1.0))
    defocus = particles["defocus"].to_numpy(dtype=float)
    dots = where.scatter(
        particles["x"],
        particles["y"],
        c=defocus,
        cmap="viridis",
        s=28,
        edgecolors="black",
        linewidths=0.4,
    )
    where.set_xlim(-0.5, shape[1] - 0.5)
    where.set_ylim(-0.5, shape[0] - 0.5)
    where.set_aspect("equal")
    where.set_xlabel("x (pixels)")
    where.set_ylabel("y (pixels)")
    where.set_title("position, coloured by defocus")
    fig.colorbar(dots, ax=where, label="defocus (Å)")
    _defocus_bars(spread, defocus)
    if nominal is not None:
        spread.axvline(
            nominal,
            color="#c0392b",
            linestyle="--",
            label=f"micrograph {nominal:,.0f} Å",
        )
        spread.legend(fontsize=9)
    spread.set_xlabel("defocus (Å, underfocus > 0)")
    spread.set_ylabel("particles")
    single = len(np.unique(defocus)) == 1
    spread.set_title(
        f"defocus of {len(defocus)} particles"
        + (" (one defocus searched)" if single else "")
    )
    return fig


def truth_figure(
    image: np.ndarray,
    found: pd.DataFrame,
    truth: pd.DataFrame,
    pairs: np.ndarray,
    radius: float,
) -> tuple[Figure, dict[str, Any]]:
    """Found (true positive), false and missed particles against a truth table.

    Parameters
    ----------
    image : np.ndarray
        ``(H, W)`` micrograph drawn underneath.
    found, truth : DataFrame
        Columns ``x``, ``y`` in pixels.
    pairs : np.ndarray
        ``(M, 2)`` positional rows ``(found, truth)`` matched to each other.
    radius : float
        Circle radius, pixels.

    Returns
    -------
    Figure, dict
        The figure and the circles drawn per category (``found``, ``false``,
        ``missed``) read back from it.
    """
    pairs = np.asarray(pairs, dtype=int).reshape(-1, 2)
    hit = np.zeros(len(found), dtype=bool)
    hit[pairs[:, 0]] = True
    seen = np.zeros(len(truth), dtype=bool)
    seen[pairs[:, 1]] = True
    fig, ax = micrograph_axes(image, "picks against the truth table")
    f_xy = found[["x", "y"]].to_numpy(dtype=float).reshape(-1, 2)
    t_xy = truth[["x", "y"]].to_numpy(dtype=float).reshape(-1, 2)
    groups = {
        "found": (f_xy[hit], _FOUND, "-", f"found ({int(hit.sum())})"),
        "false": (f_xy[~hit], _FALSE, "-", f"false ({int((~hit).sum())})"),
        "missed": (t_xy[~seen], _MISSED, "--", f"missed ({int((~seen).sum())})"),
    }
    drawn = {}
    for gid, (xy, colour, style, label) in groups.items():
        drawn[gid] = draw_circles(
            ax,
            xy[:, 0],
            xy[:, 1],
            radius,
            gid,
            edgecolor=colour,
            linestyle=style,
            linewidth=1.5,
        )
        ax.plot([], [], color=colour, linestyle=style, linewidth=1.5, label=label)
    ax.legend(loc="upper right", fontsize=9, framealpha=0.85)
    return fig, drawn


def recall_precision_figure(curve: pd.DataFrame, threshold: float | None) -> Figure:
    """Recall and precision over z-score thresholds, and precision against recall.

    ``curve`` has columns ``threshold``, ``recall`` and ``precision`` (0..1).
    """
    fig = _figure(11.0, 4.3)
    over, against = fig.subplots(1, 2)
    t = curve["threshold"].to_numpy(dtype=float)
    over.plot(t, curve["recall"], color="#1f77b4", label="recall", linewidth=1.6)
    over.plot(t, curve["precision"], color="#d62728", label="precision", linewidth=1.6)
    if threshold is not None:
        over.axvline(
            threshold,
            color="black",
            linestyle=":",
            label=f"threshold used {threshold:.2f}",
        )
    over.set_xlabel("z-score threshold")
    over.set_ylabel("fraction")
    over.set_ylim(-0.03, 1.03)
    over.set_title("recall and precision over thresholds")
    over.legend(fontsize=9)
    over.grid(alpha=0.3)
    against.plot(curve["recall"], curve["precision"], color="#444444", marker=".")
    against.set_xlim(-0.03, 1.03)
    against.set_ylim(-0.03, 1.03)
    against.set_xlabel("recall")
    against.set_ylabel("precision")
    against.set_title("precision against recall")
    against.grid(alpha=0.3)
    return fig


# ---------------------------------------------------------------- HTML

_CSS = """
body{font-family:system-ui,sans-serif;max-width:1150px;margin:2em auto;color:#222}
h1{margin-bottom:0.2em} h2{border-bottom:1px solid #ccc;padding-bottom:0.2em}
table{border-collapse:collapse;font-size:0.92em}
td,th{padding:3px 10px;border-bottom:1px solid #eee;text-align:left}
td.num{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;height:auto;border:1px solid #ddd}
figcaption{color:#555;font-size:0.92em;margin:0.3em 0 1.5em}
pre{background:#f6f6f6;padding:0.8em;overflow-x:auto;font-size:0.85em}
.note{color:#a05a00}
"""


def _table(rows: Sequence[tuple[str, str]]) -> str:
    body = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows
    )
    return f"<table>{body}</table>"


def _particle_table(particles: pd.DataFrame, limit: int = 50) -> str:
    columns = [
        c
        for c in ("x", "y", "zscore", "phi", "theta", "psi", "defocus")
        if c in particles.columns
    ]
    best = particles.sort_values("zscore", ascending=False).head(limit)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>"
        + "".join(f'<td class="num">{row[c]:.2f}</td>' for c in columns)
        + "</tr>"
        for _, row in best[columns].iterrows()
    )
    more = (
        f"<p>The {limit} highest of {len(particles)} are shown.</p>"
        if len(particles) > limit
        else ""
    )
    return f"<table><tr>{head}</tr>{body}</table>{more}"


def _figure_html(picture: Picture) -> str:
    data = base64.b64encode(picture.png).decode("ascii")
    return (
        f"<h2>{html.escape(picture.title)}</h2><figure>"
        f'<img src="data:image/png;base64,{data}" alt="{html.escape(picture.title)}">'
        f"<figcaption>{html.escape(picture.caption)} "
        f"(<code>{html.escape(picture.name)}</code>)</figcaption></figure>"
    )


def render_html(
    title: str,
    summary: Sequence[tuple[str, str]],
    pictures: Sequence[Picture],
    particles: pd.DataFrame,
    config_yaml: str,
    notes: Sequence[str] = (),
) -> str:
    """Build a self-contained HTML page: summary, embedded PNGs, particles, config."""
    parts = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
        f"</title><style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>",
        *(f'<p class="note">{html.escape(n)}</p>' for n in notes),
        "<h2>Run</h2>",
        _table(summary),
        *(_figure_html(p) for p in pictures),
        "<h2>Particles</h2>",
        _particle_table(particles) if len(particles) else "<p>No particles picked.</p>",
        "<h2>Configuration</h2>",
        f"<pre>{html.escape(config_yaml)}</pre>",
        "</body></html>",
    ]
    return "\n".join(parts)


# ---------------------------------------------------------------- inputs


def _micrograph(result: MatchResult, result_dir: Path) -> tuple[np.ndarray, str | None]:
    """Read the searched micrograph, or return the z-score map and a note if gone."""
    name = str(result.metadata.get("config", {}).get("micrograph", ""))
    shape = result.maps["zscore"].shape
    for path in (Path(name), result_dir / Path(name).name):
        if name and path.is_file():
            try:
                image = read_mrc(path).data
            except InputFileError:
                continue
            if image.shape == shape:
                return image, None
    note = (
        f"The micrograph ({name or 'not named in result.json'}) could not be "
        "read with the shape of the maps; particles are drawn on the z-score map."
    )
    return result.maps["zscore"], note


def template_box(result: MatchResult) -> int | None:
    """Side of the template box in pixels (None when neither recorded nor readable).

    ``template_size`` in ``result.json`` wins; otherwise the template's MRC header.
    """
    if result.metadata.get("template_size") is not None:
        return int(result.metadata["template_size"])
    name = str(result.metadata.get("config", {}).get("template", ""))
    if not name or not Path(name).is_file():
        return None
    try:
        with mrcfile.open(name, header_only=True, permissive=True) as mrc:
            return int(mrc.header.nx)
    except (ValueError, OSError, EOFError):
        return None


def _search_size(result: MatchResult) -> tuple[int, int]:
    """Correlations per pixel and pixels in the map."""
    meta = result.metadata
    per_pixel = meta.get("search_space", {}).get("correlations_per_pixel")
    per_pixel = int(per_pixel or meta.get("correlations_per_pixel") or 1)
    return per_pixel, int(result.maps["zscore"].size)


def _threshold(result: MatchResult) -> float | None:
    """Compute the default peak threshold: one expected false positive in noise."""
    n_trials = number_of_trials(result)
    return None if n_trials is None else threshold_for_false_positives(n_trials)


def _particles(
    result_dir: Path, result: MatchResult, box: int | None
) -> tuple[pd.DataFrame, str]:
    """Read the particles saved beside the result, or pick them with the defaults."""
    for name in ("particles.star", "particles.csv"):
        if (result_dir / name).is_file():
            return read_particles(result_dir / name), name
    if box is None:
        raise InputFileError(
            f"{result_dir}: no particles.star and the template box size is unknown "
            "(template file gone); run `twodtm peaks` with --template-size first."
        )
    return find_peaks(result, PeakSettings(), box), "picked with the default settings"


def _truth_table(path: str | os.PathLike[str]) -> pd.DataFrame:
    file = Path(path)
    if not file.is_file():
        raise InputFileError(f"{file}: truth table not found; check the --truth path.")
    return read_particles(file)


# ---------------------------------------------------------------- the report


def _picture(name: str, title: str, caption: str, fig: Figure, **drawn: Any) -> Picture:
    return Picture(name, title, caption, figure_png(fig), dict(drawn))


def _core_pictures(
    result: MatchResult,
    image: np.ndarray,
    particles: pd.DataFrame,
    radius: float,
    threshold: float | None,
) -> list[Picture]:
    """Micrograph with particles, z-score map, MIP, histogram, defocus."""
    fig, drawn = particle_figure(
        image, particles, radius, f"{len(particles)} particles, labelled by z-score"
    )
    pictures = [
        _picture(
            "micrograph.png",
            "Picked particles",
            f"Circles of radius {radius:.0f} px (half the template box); the "
            f"{min(N_LABELS, len(particles))} highest z-scores are written.",
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
    threshold: float | None,
) -> list[Picture]:
    """Draw the z-score histogram and, with particles, their defocus."""
    per_pixel, _ = _search_size(result)
    fig, counts = histogram_figure(result.maps["zscore"], per_pixel, threshold)
    pictures = [
        _picture(
            "histogram.png",
            "z-score histogram",
            "Pixels per z-score bin on a log scale. The dashed curve is what pure "
            "Gaussian noise would give (each pixel the maximum of its correlations, "
            "taken as independent); particles form the tail on the right.",
            fig,
            **counts,
        )
    ]
    if len(particles) and "defocus" in particles.columns:
        nominal = _nominal_defocus(result)
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


def _nominal_defocus(result: MatchResult) -> float | None:
    optics = result.metadata.get("config", {}).get("optics", {})
    if "defocus_u" in optics and "defocus_v" in optics:
        return 0.5 * (float(optics["defocus_u"]) + float(optics["defocus_v"]))
    return None


def _truth_pictures(
    result: MatchResult,
    image: np.ndarray,
    found: pd.DataFrame,
    truth: pd.DataFrame,
    radius: float,
    threshold: float | None,
    box: int | None,
) -> tuple[list[Picture], dict[str, Any]]:
    """Found/false/missed marks and the recall-precision curve."""
    max_distance = max(2.0, 0.5 * radius)
    symmetry = result.metadata.get("config", {}).get("orientation_search", {})
    score = match_to_truth(found, truth, max_distance, symmetry.get("symmetry", "C1"))
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
    result: MatchResult, found: pd.DataFrame, box: int | None, threshold: float | None
) -> tuple[pd.DataFrame, str]:
    """Peaks down to 1.5 below ``threshold`` for the curve (``found`` if unknown)."""
    if box is None or threshold is None:
        return found, "The picked particles"
    low = threshold - 1.5
    picked = find_peaks(result, PeakSettings(zscore=low), box)
    return picked, f"Peaks picked down to z = {low:.2f} (1.5 below the threshold used)"


def _summary_rows(
    result: MatchResult,
    particles: pd.DataFrame,
    threshold: float | None,
    source: str,
) -> list[tuple[str, str]]:
    meta = result.metadata
    config = meta.get("config", {})
    space = meta.get("search_space", {})
    per_pixel, n_pixels = _search_size(result)
    h, w = result.maps["zscore"].shape
    seconds = float(meta.get("run_time_s", float("nan")))
    fallback = per_pixel / seconds if seconds > 0 else float("nan")
    rate = float(meta.get("correlations_per_second", fallback))
    rows = [
        ("micrograph", str(config.get("micrograph", "?"))),
        ("template", str(config.get("template", "?"))),
        ("image", f"{w} x {h} px at {result.pixel_size:.4g} Å/px"),
        (
            "search",
            f"{space.get('orientations', '?')} orientations x "
            f"{space.get('defocus_values', '?')} defocus x "
            f"{space.get('pixel_sizes', '?')} pixel sizes = "
            f"{per_pixel:,} correlations per pixel",
        ),
        ("correlation values", f"{per_pixel * n_pixels:.3g}"),
        ("run time", f"{seconds:.1f} s on {', '.join(meta.get('devices', ['?']))}"),
        (
            "throughput",
            f"{rate:,.1f} image correlations/s ({rate * n_pixels:.3g} values/s)",
        ),
        ("particles", f"{len(particles)} ({source})"),
    ]
    if threshold is not None:
        rows.append(("z-score threshold", f"{threshold:.2f}"))
    versions = meta.get("versions", {})
    if versions:
        rows.append(("versions", ", ".join(f"{k} {v}" for k, v in versions.items())))
    return rows


def _with_map_values(particles: pd.DataFrame, result: MatchResult) -> pd.DataFrame:
    """Copy the table, reading missing ``zscore`` and ``defocus`` from the maps."""
    table = particles.reset_index(drop=True)
    h, w = result.maps["zscore"].shape
    rows = np.clip(np.rint(table["y"].to_numpy(dtype=float)).astype(int), 0, h - 1)
    cols = np.clip(np.rint(table["x"].to_numpy(dtype=float)).astype(int), 0, w - 1)
    for name in ("zscore", "defocus"):
        if name not in table.columns:
            table[name] = result.maps[name][rows, cols].astype(float)
    return table


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
        with the default peak settings.

    Returns
    -------
    Path
        The HTML file. ``report.json`` lists every picture and what it shows,
        e.g. the circles drawn on the micrograph, in micrograph pixels.
    """
    root = Path(result_dir)
    result = MatchResult.load(root)
    truth_table = None if truth is None else _truth_table(truth)
    image, note = _micrograph(result, root)
    box = template_box(result)
    radius = 0.5 * box if box else 0.05 * min(image.shape)
    if particles is None:
        particles, source = _particles(root, result, box)
    else:
        source = "given by the caller"
    particles = _with_map_values(particles, result)
    threshold = _threshold(result)
    pictures = _core_pictures(result, image, particles, radius, threshold)
    record: dict[str, Any] = {"threshold": threshold, "particles_source": source}
    if truth_table is not None:
        extra, record["truth"] = _truth_pictures(
            result, image, particles, truth_table, radius, threshold, box
        )
        pictures += extra
    record["notes"] = [note] if note else []
    if box is None:
        record["notes"].append(
            "The template file is gone; circles are drawn at 5% of the image size."
        )
    rows = _summary_rows(result, particles, threshold, source)
    return _write_outputs(root, result, pictures, particles, record, rows)


def _json_safe(value: Any) -> Any:
    """Copy ``value`` with NaN and infinite floats as None (strict JSON)."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


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
    text = json.dumps(_json_safe(record), indent=1, allow_nan=False)
    write_text_atomic(root / "report.json", text)
    if "truth" in record:
        score = record["truth"]
        recall, precision = score["recall"], score["precision"]
        rows = [
            *rows,
            ("against the truth", f"recall {recall:.2f}, precision {precision:.2f}"),
        ]
    micrograph = Path(str(result.metadata.get("config", {}).get("micrograph", root)))
    page = render_html(
        f"twodtm report: {micrograph.name}",
        rows,
        pictures,
        particles,
        str(result.metadata.get("config_yaml", "")),
        record["notes"],
    )
    write_text_atomic(root / "report.html", page)
    return root / "report.html"
