"""Report figures as PNG bytes, drawn on :class:`matplotlib.figure.Figure` objects.

No pyplot: every figure is a fresh ``Figure`` with its own Agg canvas, so rendering is
thread-safe, needs no display and leaves no global state behind. New figures (segmentation
overlays, patch masks, ...) should follow the same pattern: build with :func:`new_figure`,
draw images with :func:`show_image`, return :func:`png_bytes`.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

MAX_EXAMPLES = 8
CHANGED_COLOR = "#c62828"
KEPT_COLOR = "#1b5e20"
DPI = 110


# --------------------------------------------------------------------------- helpers
def new_figure(width: float, height: float) -> Figure:
    """A fresh figure of ``width`` x ``height`` inches with an Agg canvas attached."""
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def png_bytes(fig: Figure, dpi: int = DPI) -> bytes:
    """Render ``fig`` to PNG and return the bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, facecolor="white")
    return buf.getvalue()


def data_uri(png: bytes, mime: str = "image/png") -> str:
    """A ``data:`` URI embedding ``png`` (base64), for ``<img src=...>``."""
    return f"data:{mime};base64,{base64.b64encode(png).decode('ascii')}"


def mpl_text(text: Any, limit: int = 60) -> str:
    """``text`` made safe for matplotlib: no mathtext (``$`` escaped), control characters and length capped."""
    lines = []
    for line in str(text).split("\n"):
        line = "".join(ch if ch.isprintable() else " " for ch in line)
        line = " ".join(line.split())
        lines.append(line if len(line) <= limit else line[: limit - 1] + "…")
    return "\n".join(lines).replace("$", r"\$")


def to_display(img: np.ndarray) -> tuple[np.ndarray, str | None]:
    """A (C, H, W) or (H, W) image as an array ``imshow`` can draw, plus the colormap to use.

    1 channel (or anything but 3/4 channels) -> (H, W) gray; 3 channels -> (H, W, 3) RGB;
    4 channels -> the first three as RGB. Values are expected in [0, 1] (see :func:`display_range`).
    """
    img = np.asarray(img, dtype=np.float32)
    if img.ndim == 2:
        return img, "gray"
    if img.ndim != 3:
        img = img.reshape(-1, *img.shape[-2:])
    if img.shape[0] in (3, 4):
        return np.ascontiguousarray(np.transpose(img[:3], (1, 2, 0))), None
    return img[0], "gray"


def display_range(*arrays: np.ndarray) -> tuple[float, float]:
    """A common (low, high) display range: [0, 1] unless the data leaves it (other model bounds)."""
    finite = [a[np.isfinite(a)] for a in arrays if a.size]
    finite = [a for a in finite if a.size]
    if not finite:
        return 0.0, 1.0
    lo = min(0.0, min(float(a.min()) for a in finite))
    hi = max(1.0, max(float(a.max()) for a in finite))
    return lo, hi


def show_image(ax: Axes, img: np.ndarray, vrange: tuple[float, float] = (0.0, 1.0), cmap: str | None = None) -> None:
    """Draw a (C, H, W) or (H, W) image on ``ax`` without ticks, scaled from ``vrange`` to [0, 1]."""
    lo, hi = vrange
    scaled = np.clip((np.nan_to_num(np.asarray(img, dtype=np.float32)) - lo) / (hi - lo), 0.0, 1.0)
    arr, default_cmap = to_display(scaled)
    ax.imshow(arr, cmap=cmap or default_cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def message_figure(message: str, width: float = 6.0, height: float = 1.2) -> Figure:
    """A small figure that only states ``message`` (for empty inputs)."""
    fig = new_figure(width, height)
    fig.text(0.5, 0.5, mpl_text(message, 100), ha="center", va="center", fontsize=10, color="#555555")
    return fig


def label_text(value: Any, classes: Sequence[str] | None, limit: int = 28) -> str:
    """A class index (or multi-label 0/1 vector) as a short readable string.

    Multi-label vectors become the positive class names joined by ``+`` (``"none"`` when
    empty), falling back to indices when the names would not fit in ``limit`` characters.
    """
    arr = np.asarray(value)
    names = list(classes or [])

    def name(i: int) -> str:
        return str(names[i]) if 0 <= i < len(names) else str(i)

    if arr.ndim == 0:
        return mpl_text(name(int(arr)), limit)
    on = [int(i) for i in np.flatnonzero(arr.astype(np.float64).reshape(-1) > 0.5)]
    if not on:
        return "none"
    text = "+".join(name(i) for i in on)
    if len(text) > limit:
        text = "{" + ",".join(map(str, on)) + "}"
    return mpl_text(text, limit)


def changed(a: Any, b: Any) -> bool:
    return bool(np.any(np.asarray(a) != np.asarray(b)))


