"""Display helpers of the report: binning, contrast, figures on the Agg canvas.

Every figure is drawn on a ``matplotlib.figure.Figure`` with the Agg canvas attached
explicitly, so no global matplotlib state (``pyplot``, the default backend) is
touched. Images are displayed with the origin at the bottom left, as MRC viewers do:
``x`` is the column and ``y`` the row of the micrograph array, in pixels. Large
images are binned for display only; coordinates stay in micrograph pixels.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = [
    "DISPLAY_SIZE",
    "DPI",
    "bin_image",
    "display_binning",
    "figure_png",
    "image_size",
    "imshow_pixels",
    "new_figure",
    "stretch_contrast",
]

DISPLAY_SIZE = 720
"""Largest displayed image side, pixels (about the axes width at ``DPI``)."""
DPI = 110


def display_binning(shape: Sequence[int], max_size: int = DISPLAY_SIZE) -> int:
    """Integer binning factor that brings the larger side to at most ``max_size``."""
    return max(1, math.ceil(max(shape) / max_size))


def bin_image(image: np.ndarray, factor: int, reduce: str = "mean") -> np.ndarray:
    """Bin ``(H, W)`` by ``factor`` with the mean or the max of each block.

    Rows and columns beyond a whole number of blocks are dropped. The input is
    left unchanged; ``factor == 1`` returns a copy.

    Examples
    --------
    >>> image = np.arange(20.0).reshape(4, 5)
    >>> bin_image(image, 2)
    array([[ 3.,  5.],
           [13., 15.]], dtype=float32)
    >>> bin_image(image, 2, "max")
    array([[ 6.,  8.],
           [16., 18.]], dtype=float32)
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


def new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def figure_png(fig: Figure) -> bytes:
    """Render ``fig`` to PNG bytes with the Agg canvas."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def imshow_pixels(
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


def image_size(shape: Sequence[int], width: float = 8.0) -> tuple[float, float]:
    # Room for the colour bar and labels; the image keeps its aspect ratio.
    return (width, max(3.0, min(12.0, (width - 1.0) * shape[0] / shape[1])))
