"""The evasion report's figures: robust accuracy against eps (one panel per threat model and
defence) and the example grids (clean, adversarial, amplified perturbation), drawn with the
frame's figure helpers (:mod:`medsec.report.figures`)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from medsec.experiments.evasion.robustness import (
    defense_infos,
    defense_of,
    evaluations_of,
    is_adaptive,
    worst_case_points,
)
from medsec.report.figures import (
    CHANGED_COLOR,
    KEPT_COLOR,
    MAX_EXAMPLES,
    changed,
    display_range,
    label_text,
    message_figure,
    mpl_text,
    new_figure,
    png_bytes,
    show_image,
)
from medsec.report.formatting import dig, eps_axis_value

# --------------------------------------------------------------------------- robust accuracy curve
CurveKey = tuple[str, bool, bool]  # (attack label, targeted, adaptive)
PanelKey = tuple[str, str | None]  # (norm, defence label; None = undefended)


def _curve_groups(evaluations: Sequence[Mapping[str, Any]]) -> dict[PanelKey, dict[CurveKey, list[tuple[float, float]]]]:
    """{(norm, defence): {(label, targeted, adaptive): [(eps, robust accuracy %), ...] sorted by eps}}."""
    groups: dict[PanelKey, dict[CurveKey, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    for ev in evaluations:
        threat = ev.get("threat") or {}
        x = eps_axis_value(threat)
        ra = dig(ev, "metrics.robust_accuracy")
        if x is None or not isinstance(ra, (int, float)) or isinstance(ra, bool) or not np.isfinite(ra):
            continue
        key = (str(ev.get("label") or ev.get("attack") or "?"), bool(threat.get("targeted")), is_adaptive(ev))
        groups[(str(threat.get("norm") or "?"), defense_of(ev))][key].append((x, 100.0 * float(ra)))
    return {p: {k: sorted(v) for k, v in g.items()} for p, g in groups.items()}


def _curve_name(label: str, targeted: bool, adaptive: bool) -> str:
    extras = [w for w, on in (("adaptive", adaptive), ("targeted", targeted)) if on]
    return f"{label} ({', '.join(extras)})" if extras else label


def _curve_style(targeted: bool, adaptive: bool) -> dict[str, Any]:
    if targeted:
        return {"linestyle": ":", "marker": "^" if adaptive else "s"}
    return {"linestyle": "-." if adaptive else "-", "marker": "^" if adaptive else "o"}


def robust_accuracy_vs_eps(results: Mapping[str, Any]) -> bytes:
    """Robust accuracy (%) against eps, one panel per (norm, defence).

    Each panel draws one line per (attack label, targeted, adaptive) (colour: attack label;
    dash-dotted with triangles: adaptive; dotted: targeted), the worst case over attacks
    from ``results["worst_case"]`` (thick grey dashed, drawn behind) and the defended model's clean accuracy
    (grey, dotted). One legend below the panels serves them all.

    Args:
        results: a results.json dict.

    Returns:
        PNG bytes.
    """
    evaluations = evaluations_of(results)
    groups = _curve_groups(evaluations)
    worst = worst_case_points(results)
    if not groups:
        return png_bytes(message_figure("no finished evaluations to plot"))
    infos = defense_infos(results, evaluations)
    defended = any(label is not None for label in infos)
    d_order = {label: i for i, label in enumerate(infos)}
    panels = sorted(groups, key=lambda p: (p[0] == "patch", p[0], d_order.get(p[1], len(d_order))))
    ncols = min(3, len(panels))
    nrows = -(-len(panels) // ncols)
    labels = sorted({label for g in groups.values() for label, _, _ in g})
    colors = {label: f"C{i % 10}" for i, label in enumerate(labels)}
    handles: dict[str, Any] = {}
    width = max(6.0, 4.4 * ncols + 0.6)
    n_entries = len({_curve_name(*k) for g in groups.values() for k in g}) + len({t for v in worst.values() for t in v}) + 1
    legend_cols = max(1, min(n_entries, int(width // 2.1)))
    fig = new_figure(width, 3.3 * nrows + 0.3 + 0.24 * -(-n_entries // legend_cols))
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=True).reshape(-1)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    for ax, (norm, defense) in zip(axes, panels):
        xs: set[float] = set()
        for (label, targeted, adaptive), points in sorted(groups[(norm, defense)].items()):
            x, y = zip(*points)
            xs.update(x)
            name = mpl_text(_curve_name(label, targeted, adaptive), 40)
            (line,) = ax.plot(x, y, color=colors[label], label=name, linewidth=1.6, markersize=4.5,
                              **_curve_style(targeted, adaptive))
            handles.setdefault(name, line)
        for targeted, points in sorted(worst.get((norm, defense), {}).items()):
            x, y = zip(*points)
            xs.update(x)
            name = "worst case (targeted)" if targeted else "worst case"
            (line,) = ax.plot(x, y, color="black", alpha=0.45, linestyle=(0, (4, 2.5)), linewidth=3.2, marker="D",
                              markersize=3.5, label=name, zorder=1.5)  # behind the attacks it bounds
            handles.setdefault(name, line)
        clean = (infos.get(defense) or {}).get("clean_accuracy")
        if clean is None and not defended:
            clean = dig(results, "clean.accuracy")
        title = f"{norm} threat model"
        if defended:
            title = f"{norm} · " + (f"defence {defense}" if defense is not None else "no defence")
        if isinstance(clean, (int, float)) and not isinstance(clean, bool):
            line = ax.axhline(100.0 * clean, color="#777777", linestyle=(0, (1, 1.5)), linewidth=1.3,
                              label="clean accuracy")
            handles.setdefault("clean accuracy", line)
            title += f"  (clean {100.0 * clean:.1f}%)"
        if norm == "patch":
            ax.set_xlabel("patch size (fraction of pixels)")
        else:
            ax.set_xlabel("eps × 255")
            ticks = sorted(xs)
            if len(ticks) <= 10:
                ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.set_title(mpl_text(title, 70), fontsize=10)
        ax.set_ylim(-3, 103)
        ax.grid(True, alpha=0.3)
        ax.tick_params(labelleft=True)
    for row in range(nrows):
        axes[row * ncols].set_ylabel("robust accuracy (%)")
    order = sorted(handles, key=lambda n: (n == "clean accuracy", n.startswith("worst case"), n))
    fig.legend([handles[n] for n in order], order, loc="outside lower center", ncols=legend_cols, fontsize=8,
               frameon=False)
    return png_bytes(fig)


# --------------------------------------------------------------------------- example grid
def perturbation_image(clean: np.ndarray, adv: np.ndarray, mode: str = "signed") -> tuple[np.ndarray, str | None, float]:
    """The amplified perturbation of one example for display.

    Args:
        clean, adv: (C, H, W) images.
        mode: ``"abs"``: per-pixel max |adv - clean| over channels scaled to fill [0, 1]
            (drawn with a heat colormap); ``"signed"``: ``0.5 + d / (2 max|d|)`` per channel
            (mid-gray = unchanged).

    Returns:
        (image in [0, 1], colormap or None for the default, max |adv - clean|).
    """
    d = np.nan_to_num(np.asarray(adv, np.float32) - np.asarray(clean, np.float32))
    m = float(np.abs(d).max()) if d.size else 0.0
    if mode == "signed":
        return (0.5 + d / (2 * m) if m > 0 else np.full_like(d, 0.5)), None, m
    if mode != "abs":
        raise ValueError(f"unknown perturbation mode {mode!r}; use 'abs' or 'signed'")
    a = np.abs(d)
    mag = a.max(axis=0) if a.ndim == 3 else a
    return (mag / m if m > 0 else np.zeros_like(mag)), "magma", m


def example_grid(
    examples: Mapping[str, np.ndarray],
    classes: Sequence[str] | None,
    title: str,
    perturbation: str = "signed",
    max_rows: int = MAX_EXAMPLES,
) -> bytes:
    """A grid of clean / adversarial / amplified-perturbation images, one row per example.

    Args:
        examples: arrays ``clean``, ``adv`` ((k, C, H, W) or (k, H, W)), ``label``,
            ``pred_clean``, ``pred_adv`` ((k,) class indices or (k, L) multi-label vectors),
            e.g. an opened examples ``.npz``.
        classes: class names (indices are shown where missing).
        title: the figure title.
        perturbation: ``"abs"`` or ``"signed"`` (see :func:`perturbation_image`).
        max_rows: at most this many examples are drawn.

    Returns:
        PNG bytes. The adversarial prediction is red when it differs from the clean one.
    """

    def draw(ax: Any, clean: np.ndarray, adv: np.ndarray, vrange: tuple[float, float]) -> None:
        pert, cmap, m = perturbation_image(clean, adv, perturbation)
        show_image(ax, pert, (0.0, 1.0), cmap)
        what = "|adv − clean|" if perturbation == "abs" else "adv − clean"
        detail = f"max {255 * m / (vrange[1] - vrange[0]):.3g}/255, amplified" if m > 0 else "unchanged"
        ax.set_title(f"{what}\n({detail})", fontsize=8)

    return comparison_grid(examples, classes, title, max_rows, adv_word="adversarial", extra_col=2, draw_extra=draw)


def comparison_grid(
    examples: Mapping[str, np.ndarray],
    classes: Sequence[str] | None,
    title: str,
    max_rows: int,
    *,
    adv_word: str,
    extra_col: int,
    draw_extra: Callable[[Any, np.ndarray, np.ndarray, tuple[float, float]], None],
) -> bytes:
    """One row per example: the clean image (true label, clean prediction), the attacked image
    (its prediction red when it changed) and one more panel, in column ``extra_col`` (1 or 2),
    drawn by ``draw_extra(ax, clean, adv, vrange)``; the frame of :func:`example_grid` and of
    the patch figures (:func:`medsec.experiments.evasion.patch_figures.patch_grid`).

    Args:
        examples: arrays ``clean``, ``adv``, ``label``, ``pred_clean``, ``pred_adv``.
        classes: class names (indices are shown where missing).
        title: the figure title.
        max_rows: at most this many examples are drawn.
        adv_word: what the attacked panel's title calls the image.
        extra_col: the column of the extra panel.
        draw_extra: draws the extra panel of one example.

    Returns:
        PNG bytes.
    """
    clean = np.asarray(examples["clean"], dtype=np.float32)
    adv = np.asarray(examples["adv"], dtype=np.float32)
    k = min(len(clean), len(adv), max_rows)
    if k == 0:
        return png_bytes(message_figure(f"{title}: no examples"))
    label, pred_clean, pred_adv = (np.asarray(examples[key]) for key in ("label", "pred_clean", "pred_adv"))
    vrange = display_range(clean[:k], adv[:k])
    fig = new_figure(3 * 2.25, k * 2.15 + 0.5)
    fig.suptitle(mpl_text(title, 80), fontsize=11)
    axes = fig.subplots(k, 3, squeeze=False)
    for i in range(k):
        row = list(axes[i])
        ax_x = row.pop(extra_col)
        ax_c, ax_a = row
        show_image(ax_c, clean[i], vrange)
        ax_c.set_title(f"true: {label_text(label[i], classes)}\nclean: {label_text(pred_clean[i], classes)}",
                       fontsize=8)
        show_image(ax_a, adv[i], vrange)
        moved = changed(pred_adv[i], pred_clean[i])
        ax_a.set_title(f"{adv_word}:\n{label_text(pred_adv[i], classes)}", fontsize=8,
                       color=CHANGED_COLOR if moved else KEPT_COLOR, fontweight="bold" if moved else "normal")
        draw_extra(ax_x, clean[i], adv[i], vrange)
    return png_bytes(fig)
