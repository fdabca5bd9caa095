"""Report figures and tables of patch attacks (SNAP, adversarial patch): the clean image,
the patch mask outlined on it and the attacked image; and the patch-area histogram.

The mask is recovered from each example as the pixels where the attacked image differs
from the clean one (see :mod:`medsec.metrics.naturalness`), so any attack with
``norm: patch`` gets these figures without storing masks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from medsec.experiments.evasion.figures import comparison_grid
from medsec.report.figures import (
    MAX_EXAMPLES,
    message_figure,
    mpl_text,
    new_figure,
    png_bytes,
    show_image,
)
from medsec.report.formatting import dig, fmt_float, fmt_pct
from medsec.report.tables import Column

OUTLINE_COLOR = "#ffeb3b"


def patch_grid(examples: Mapping[str, np.ndarray], classes: Sequence[str] | None, title: str,
               max_rows: int = MAX_EXAMPLES) -> bytes:
    """One row per example: clean image, clean image with the mask outline, attacked image.

    Args:
        examples: arrays ``clean``, ``adv`` ((k, C, H, W)), ``label``, ``pred_clean``,
            ``pred_adv`` (an opened examples ``.npz``).
        classes: class names.
        title: figure title.

    Returns:
        PNG bytes.
    """

    def draw(ax: Any, clean: np.ndarray, adv: np.ndarray, vrange: tuple[float, float]) -> None:
        mask = np.any(clean != adv, axis=0) if clean.ndim == 3 else clean != adv
        show_image(ax, clean, vrange)
        if mask.any():
            ax.contour(mask.astype(np.float32), levels=[0.5], colors=OUTLINE_COLOR, linewidths=0.9)
        ax.set_title(f"mask outline\n({100 * mask.mean():.2f}% of pixels)", fontsize=8)

    return comparison_grid(examples, classes, title, max_rows, adv_word="attacked", extra_col=1, draw_extra=draw)


def area_histograms(evaluations: Sequence[Mapping[str, Any]]) -> bytes:
    """Bar charts of the patch-area histograms (blob areas in pixels) of patch cells."""
    cells = [ev for ev in evaluations if isinstance(dig(ev, "metrics.patch_area_histogram"), Mapping)]
    if not cells:
        return png_bytes(message_figure("no patch-area histograms"))
    fig = new_figure(7.0, 3.2)
    ax = fig.subplots()
    width = 0.8 / len(cells)
    edges: list[int] = []
    for j, ev in enumerate(cells):
        hist = dig(ev, "metrics.patch_area_histogram")
        edges = list(hist.get("edges") or [])
        counts = np.asarray(hist.get("counts") or [], dtype=float)
        total = counts.sum()
        share = counts / total if total else counts
        ax.bar(np.arange(len(counts)) + j * width, 100 * share, width=width,
               label=mpl_text(f"{ev.get('label')} @ {dig(ev, 'threat.eps'):g}", 40))
    ax.set_xticks(np.arange(len(edges)) + 0.4 - width / 2, [f"≥{e}" for e in edges], fontsize=7)
    ax.set_xlabel("blob area (pixels)")
    ax.set_ylabel("share of blobs (%)")
    ax.legend(fontsize=6, ncols=2, frameon=False)
    ax.grid(True, axis="y", alpha=0.3)
    return png_bytes(fig)


def naturalness_columns() -> list[Column]:
    """Columns of the patch naturalness table (one row per patch cell)."""
    return [
        Column("Attack", lambda ev: f"{ev.get('label')}" + (" (T)" if dig(ev, "threat.targeted") else "")),
        Column("Budget", "threat.eps", fmt_float(".3g"), "right", "coverage budget (fraction of pixels)"),
        Column("Coverage", "metrics.coverage", fmt_float(".4f"), "right", "measured mean fraction of replaced pixels"),
        Column("Robust acc.", "metrics.robust_accuracy", fmt_pct, "right"),
        Column("ASR", "metrics.attack_success_rate", fmt_pct, "right"),
        Column("Colour W1 (Lab)", "metrics.colour_w1_lab", fmt_float(".2f"), "right",
               "Wasserstein distance patch vs tissue pixels, summed over L, a, b; lower = more natural"),
        Column("Colour W1 (OD)", "metrics.colour_w1_od", fmt_float(".3f"), "right",
               "the same in optical density"),
        Column("ΔE (Lab)", "metrics.delta_e_lab", fmt_float(".2f"), "right", "CIE76 distance of the mean colours"),
        Column("SSIM", "metrics.ssim", fmt_float(".3f"), "right"),
        Column("PSNR", "metrics.psnr", fmt_float(".1f", "dB"), "right"),
        Column("Blobs", "metrics.blobs_mean", fmt_float(".1f"), "right", "mean connected blobs per image"),
    ]
