"""The figures of the report: the micrograph with its picks, maps and statistics.

Each function draws one figure on a new Agg-backed ``Figure`` (see ``_images``)
and, where the report records what it shows, returns that read back from the
figure (the circles drawn, the histogram counts). Positions are in micrograph
pixels, ``x`` the column and ``y`` the row.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from matplotlib import patheffects
from matplotlib.figure import Figure
from matplotlib.patches import Circle
from scipy.special import log_ndtr

from twodtm.report._images import (
    bin_image,
    display_binning,
    image_size,
    imshow_pixels,
    new_figure,
    stretch_contrast,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = [
    "N_LABELS",
    "defocus_figure",
    "draw_circles",
    "histogram_figure",
    "label_top",
    "map_figure",
    "micrograph_axes",
    "noise_counts",
    "particle_figure",
    "recall_precision_figure",
    "truth_figure",
]

N_LABELS = 25
"""Particles labelled with their z-score, highest first."""

_CIRCLE = "#ffd400"
_FOUND, _FALSE, _MISSED = "#2ecc40", "#ff4136", "#39cccc"


def _outlined(fontsize: float) -> dict[str, Any]:
    return {
        "fontsize": fontsize,
        "color": "white",
        "path_effects": [patheffects.withStroke(linewidth=2, foreground="black")],
    }


def micrograph_axes(
    image: np.ndarray, title: str, excluded: np.ndarray | None = None
) -> tuple[Figure, Axes]:
    """Show the contrast-stretched ``(H, W)`` micrograph in grey on a new figure.

    ``excluded`` (``(H, W)`` bool, True where left out of the search) is drawn
    as a translucent red overlay with its outline, tagged ``gid="excluded"``.
    """
    factor = display_binning(image.shape)
    fig = new_figure(*image_size(image.shape))
    ax = fig.add_subplot()
    imshow_pixels(
        ax, stretch_contrast(bin_image(image, factor)), factor, image.shape, cmap="gray"
    )
    if excluded is not None and excluded.any():
        _draw_excluded(ax, excluded, factor)
    ax.set_title(title)
    return fig, ax


def _draw_excluded(ax: Axes, excluded: np.ndarray, factor: int) -> None:
    """Overlay the excluded region: red at 35 % opacity, outlined at half cover."""
    cover = bin_image(np.asarray(excluded, dtype=np.float32), factor)
    rgba = np.zeros((*cover.shape, 4), dtype=np.float32)
    rgba[..., 0] = 0.9
    rgba[..., 3] = 0.35 * cover
    overlay = imshow_pixels(ax, rgba, factor, excluded.shape)
    overlay.set_gid("excluded")
    h, w = cover.shape
    x = (np.arange(w) + 0.5) * factor - 0.5
    y = (np.arange(h) + 0.5) * factor - 0.5
    if min(h, w) >= 2 and float(cover.min()) < 0.5 < float(cover.max()):
        ax.contour(x, y, cover, levels=[0.5], colors="#ff4136", linewidths=1.0)


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
    excluded: np.ndarray | None = None,
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
    excluded : np.ndarray, optional
        ``(H, W)`` bool, True where left out of the search: drawn translucent red.

    Returns
    -------
    Figure, dict
        The figure, and what it shows: ``circles`` (``x``, ``y``, ``radius`` read
        back from the figure, in the table's row order), ``labelled`` rows and
        ``excluded_fraction`` (the share of the micrograph drawn as excluded).
    """
    fig, ax = micrograph_axes(image, title, excluded)
    xy = particles[["x", "y"]].to_numpy(dtype=float).reshape(-1, 2)
    circles = draw_circles(
        ax, xy[:, 0], xy[:, 1], radius, "particle", edgecolor=_CIRCLE, linewidth=1.2
    )
    labelled = label_top(ax, particles, radius, n_labels)
    shown = 0.0 if excluded is None else float(np.mean(excluded))
    return fig, {"circles": circles, "labelled": labelled, "excluded_fraction": shown}


def map_figure(image: np.ndarray, title: str, unit: str, cmap: str = "magma") -> Figure:
    """Draw a score map with a colour bar; binning keeps the maximum of each block."""
    factor = display_binning(image.shape)
    fig = new_figure(*image_size(image.shape, 8.8))
    ax = fig.add_subplot()
    lo, hi = np.percentile(image, [0.5, 100.0])
    shown = imshow_pixels(
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
    correlations; for independent Gaussian noise ``P(z <= t) = Phi(t)**n``
    (the noise model of Rickgauer et al. 2017, eLife 6:e25648).

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

    Examples
    --------
    With one correlation per pixel, half the pixels of pure noise lie above 0:

    >>> noise_counts(np.array([-np.inf, 0.0, np.inf]), 1000, 1)
    array([500., 500.])
    >>> from scipy.stats import norm
    >>> counts = noise_counts(np.array([0.0, 1.0]), 1000, 3)
    >>> bool(abs(counts[0] - 1000 * (norm.cdf(1.0) ** 3 - 0.5**3)) < 1e-9)
    True
    """
    survival = -np.expm1(n_correlations * log_ndtr(np.asarray(edges, dtype=float)))
    return n_pixels * (survival[:-1] - survival[1:])


def histogram_figure(
    zscores: np.ndarray, n_correlations: int, threshold: float | None
) -> tuple[Figure, dict[str, Any]]:
    """Histogram of every pixel's z-score (log scale) against the noise model.

    Returns the figure and what it shows: ``edges`` and ``counts`` of the bins and
    ``threshold``, the line drawn (``z``, ``label``; None without a threshold).
    """
    values = np.asarray(zscores, dtype=float).ravel()
    top = max(float(values.max()), threshold or 0.0) + 0.5
    edges = np.linspace(float(values.min()) - 0.25, top, 121)
    counts, _ = np.histogram(values, edges)
    expected = noise_counts(edges, values.size, n_correlations)
    fig = new_figure(8.0, 4.5)
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
            gid="threshold",
        )
    ax.set_yscale("log")
    ax.set_ylim(0.5, max(float(counts.max()), 1.0) * 3)
    ax.set_xlabel("z-score (scaled MIP)")
    ax.set_ylabel("pixels per bin")
    ax.set_title("z-score histogram")
    ax.legend(loc="upper right", fontsize=9)
    ax.grid(alpha=0.3, which="major")
    drawn = {"edges": edges.tolist(), "counts": counts.tolist()}
    return fig, {**drawn, "threshold": _drawn_threshold(ax)}


def _drawn_threshold(ax: Axes) -> dict[str, Any] | None:
    """Read back the threshold line: its z-score and legend label."""
    for line in ax.get_lines():
        if line.get_gid() == "threshold":
            z = float(np.asarray(line.get_xdata(), dtype=float)[0])
            return {"z": z, "label": str(line.get_label())}
    return None


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
    fig = new_figure(11.0, 4.6)
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
    fig = new_figure(11.0, 4.3)
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
