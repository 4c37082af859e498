"""The report's figures, drawn with matplotlib into PNG bytes (deterministic: no timestamps, fixed DPI).

Uses :class:`matplotlib.figure.Figure` with the Agg canvas directly, so the global pyplot state and backend of a
notebook or a caller are never touched. Colours follow the seed paper's Figure 2: worst case purple, relaxed
orange; realistic (empirical) green.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from dpaudit.audit.profile.schema import Profile, fmt_eps
from dpaudit.audit.report_text import REPORT_FPR, init_utility_values, mia_unit, rero_unit, utility_values
from dpaudit.audit.stats import MeanInterval, mean_interval

WORST = "#6a3d9a"
RELAXED = "#ff7f00"
REALISTIC = "#1b9e77"
NONPRIVATE = "#d62728"
DPI = 200
_STYLE = {"font.size": 8, "axes.titlesize": 9, "axes.labelsize": 8, "legend.fontsize": 7,
          "xtick.labelsize": 7, "ytick.labelsize": 7, "font.family": "DejaVu Sans"}


@contextlib.contextmanager
def _clean_style() -> Iterator[None]:
    """Matplotlib's defaults plus the report's style, whatever the caller changed globally (restored after):
    the same profile must give the same figure bytes in any process."""
    import matplotlib

    with matplotlib.rc_context():
        matplotlib.rcdefaults()
        matplotlib.rcParams.update(_STYLE)
        yield


def _new(width_in: float, height_in: float, ncols: int = 1) -> tuple[Figure, list]:

    with _clean_style():
        fig = Figure(figsize=(width_in, height_in), dpi=DPI)
        FigureCanvasAgg(fig)
        axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    return fig, axes


def _png(fig: Figure, tight: bool = True) -> bytes:
    buf = io.BytesIO()
    if tight:
        fig.tight_layout()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def _level_colours(n: int) -> list[tuple[float, float, float, float]]:
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return [cmap(0.1 + 0.75 * i / max(n - 1, 1)) for i in range(n)]


def _eps_ticks(ax, eps: list[float]) -> None:
    ax.set_xscale("log")
    ax.set_xticks(eps)
    ax.set_xticklabels([fmt_eps(e) for e in eps])
    ax.minorticks_off()


HUGE_EPSILON = 1e4  # budgets at or above this sit on a separate stub of the x-axis (a broken axis)


def _rero_axes(huge: bool) -> tuple[Figure, list, object]:
    """Left panel (split in two when budgets like 10^9 would squash the moderate ones) and right panel."""
    with _clean_style():
        fig = Figure(figsize=(7.0, 3.0), dpi=DPI)
        FigureCanvasAgg(fig)
        if not huge:
            return fig, [fig.add_subplot(1, 2, 1)], fig.add_subplot(1, 2, 2)
        outer = fig.add_gridspec(1, 2, wspace=0.3, left=0.08, right=0.98, bottom=0.15, top=0.91)
        inner = outer[0, 0].subgridspec(1, 2, width_ratios=[5.0, 1.0], wspace=0.06)
        left = fig.add_subplot(inner[0, 0])
        stub = fig.add_subplot(inner[0, 1], sharey=left)
        return fig, [left, stub], fig.add_subplot(outer[0, 1])


def rero_figure(profile: Profile) -> bytes:
    """Figure 2 style: ReRo upper bounds against epsilon (left) and against kappa (right).

    Bounds are drawn as lines only between computed points of the moderate range; a budget of 10^4 or more
    (such as 10^9) sits on its own stub of a broken axis, so no line is drawn across the gap, where nothing
    was computed."""

    from dpaudit.audit.report_text import kappa_n

    n = kappa_n(profile)
    curve = sorted((b for b in profile.bounds_curve + profile.bounds if b.epsilon_target is not None),
                   key=lambda b: b.epsilon_target)
    seen: dict[float, tuple[float, float | None]] = {}
    for b in curve:
        p = b.at_kappa_train()
        seen[b.epsilon_target] = (p.worst_case, p.relaxed)
    table_eps = [lv for lv in profile.levels() if lv.private]
    huge = any(e >= HUGE_EPSILON for e in seen) or any(lv.epsilon_target >= HUGE_EPSILON for lv in table_eps)
    with _clean_style():
        fig, left_axes, ax2 = _rero_axes(huge)
        for part, ax in enumerate(left_axes):
            def here(e: float, part: int = part) -> bool:
                return (e >= HUGE_EPSILON) == (part == 1)

            xs = [x for x in sorted(seen) if here(x)]
            if xs:
                ax.plot(xs, [100 * seen[x][0] for x in xs], "-", color=WORST, label=f"worst case {rero_unit(profile)} (upper bound)")
                rel = [(x, seen[x][1]) for x in xs if seen[x][1] is not None]
                if rel:
                    ax.plot([x for x, _ in rel], [100 * r for _, r in rel], "-", color=RELAXED,
                            label=f"relaxed {rero_unit(profile)} (upper bound)")
            lv_here = [lv for lv in table_eps if here(lv.epsilon_target)]
            for lv in lv_here:
                if lv.bounds is not None:
                    ax.plot([lv.epsilon_target], [100 * lv.worst_case], "o", color=WORST, ms=4)
                    if lv.relaxed is not None:
                        ax.plot([lv.epsilon_target], [100 * lv.relaxed], "o", color=RELAXED, ms=4)
            emp = [(lv.epsilon_target, lv.attack.strongest.success_rate) for lv in lv_here if lv.attack]
            if emp:
                ax.plot([e for e, _ in emp], [100 * s for _, s in emp], "s", color=REALISTIC, ms=4,
                        label="realistic attack per image (empirical)")
            ticks = sorted({lv.epsilon_target for lv in lv_here}) or xs
            ax.set_xscale("log")
            if ticks:
                ax.set_xticks(ticks)
                ax.set_xticklabels([fmt_eps(e) for e in ticks])
                if part == 1:
                    ax.set_xlim(min(ticks) / 10, max(ticks) * 10)
            ax.minorticks_off()
            ax.set_ylim(-3, 103)
            ax.grid(alpha=0.3)
        ax1 = left_axes[0]
        ax1.set_xlabel("privacy budget ε")
        ax1.set_ylabel("reconstruction success (%)")
        ax1.set_title(f"Risk against ε at κ = 1/{n}")
        ax1.legend(loc="upper left", frameon=False)
        if huge:
            stub = left_axes[1]
            ax1.spines["right"].set_visible(False)
            stub.spines["left"].set_visible(False)
            stub.tick_params(axis="y", left=False, labelleft=False)
            d = 0.015  # the "//" marks of the broken axis, in axes coordinates
            for ax, x0, w in ((ax1, 1.0, 1.0), (stub, 0.0, 6.0)):
                kw = {"transform": ax.transAxes, "color": "black", "lw": 0.8, "clip_on": False}
                for y in (0.0, 1.0):
                    ax.plot((x0 - d * w, x0 + d * w), (y - d, y + d), **kw)

        colours = _level_colours(len(profile.bounds))
        for colour, b in zip(colours, sorted(profile.bounds, key=lambda b: b.epsilon_target or 0), strict=True):
            pts = sorted(b.rero_curve, key=lambda p: p.kappa)
            if not pts:
                continue
            k = [p.kappa for p in pts]
            ax2.plot(k, [100 * p.worst_case for p in pts], "-", color=colour,
                     label=f"ε = {fmt_eps(b.epsilon_target)}")
            rel = [(p.kappa, p.relaxed) for p in pts if p.relaxed is not None]
            if rel:
                ax2.plot([x for x, _ in rel], [100 * r for _, r in rel], "--", color=colour)
        if profile.bounds:
            kmin = min((p.kappa for b in profile.bounds for p in b.rero_curve), default=1.0 / n)
            kk = np.geomspace(kmin, 1.0, 50)
            ax2.plot(kk, 100 * kk, ":", color="grey", lw=0.8, label="blind guess (κ)")
        ax2.axvline(1.0 / n, color="black", lw=0.6, alpha=0.6)
        ax2.text(1.0 / n, 50, " κ = 1/N", fontsize=6, rotation=90, va="center")
        ax2.set_xscale("log")
        ax2.set_xlabel("prior κ (blind-guess success)")
        ax2.set_ylabel(f"reconstruction success (%), {rero_unit(profile)}")
        ax2.set_ylim(-3, 103)
        ax2.set_title(f"Worst case (solid), relaxed (dashed), {rero_unit(profile)}")
        ax2.grid(alpha=0.3)
        ax2.legend(loc="upper left", frameon=False)
        return _png(fig, tight=not huge)


def ssim_cdf_figure(profile: Profile) -> bytes | None:
    """Figure 3 (left) style: the empirical CDF of the SSIM error 1 - SSIM, per privacy level and decoder."""

    levels = [lv for lv in profile.levels() if lv.attack is not None]
    if not levels:
        return None
    with _clean_style():
        fig, (ax,) = _new(7.0, 3.0)
        colours = _level_colours(len(levels))
        styles = {"strong": "-", "paper": "--"}
        for colour, lv in zip(colours, levels, strict=True):
            if not lv.private:
                colour = NONPRIVATE
            for row in lv.attack.rows:
                err = np.sort(1.0 - np.asarray(row.ssim, dtype=float))
                if err.size == 0:
                    continue
                frac = np.arange(1, err.size + 1) / err.size
                ax.step(np.concatenate([[0.0], err, [1.0]]), 100 * np.concatenate([[0.0], frac, [1.0]]),
                        where="post", ls=styles.get(row.decoder, "-."), color=colour,
                        label=f"{lv.label}, {row.decoder} (σ = {lv.attack.noise_multiplier:.3g})")
        threshold = profile.success_ssim()
        ax.axvline(1 - threshold, color="black", lw=0.7)
        ax.text(1 - threshold, 50, f" success threshold\n (SSIM > {threshold:g})", fontsize=6)
        ax.set_xlim(0, 1)
        ax.set_ylim(-2, 102)
        ax.set_xlabel("SSIM error 1 − SSIM (0 = perfect reconstruction)")
        ax.set_ylabel("images with error ≤ x (%)")
        ax.set_title("Realistic attack: cumulative distribution of reconstruction errors (empirical)")
        ax.grid(alpha=0.3)
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
        return _png(fig)


def mia_figure(profile: Profile) -> bytes | None:
    """Worst-case membership-inference ROC per epsilon (log-log), with empirical audit points when present."""

    bounds = sorted((b for b in profile.bounds if b.mia_roc), key=lambda b: b.epsilon_target or 0)
    if not bounds:
        return None
    with _clean_style():
        fig, (ax,) = _new(7.0, 3.0)
        colours = _level_colours(len(bounds))
        lo = 1e-5
        for colour, b in zip(colours, bounds, strict=True):
            pts = sorted((p for p in b.mia_roc if p.fpr > 0), key=lambda p: p.fpr)
            lo = min(lo, pts[0].fpr if pts else lo)
            ax.plot([p.fpr for p in pts], [max(p.tpr, 1e-12) for p in pts], color=colour,
                    label=f"ε = {fmt_eps(b.epsilon_target)} (upper bound)")
        for colour, b in zip(colours, bounds, strict=True):
            audit = next((m for m in profile.mia_audits if m.epsilon_target == b.epsilon_target), None)
            if audit is not None:
                ax.plot([p.fpr_target for p in audit.tpr_at_fpr], [max(p.tpr, 1e-12) for p in audit.tpr_at_fpr], "s",
                        color=colour, ms=4, mfc="none")
        xx = np.geomspace(lo, 1, 20)
        ax.plot(xx, xx, ":", color="grey", lw=0.8, label="no leakage (TPR = FPR)")
        ax.axvline(REPORT_FPR, color="black", lw=0.6, alpha=0.6)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(lo, 1)
        ax.set_ylim(lo, 1.5)
        ax.set_xlabel("false-positive rate")
        ax.set_ylabel("true-positive rate")
        ax.set_title(f"Membership inference ({mia_unit(profile)}): highest possible TPR at each FPR")
        ax.grid(alpha=0.3, which="both")
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
        return _png(fig)


def utility_figure(profile: Profile) -> bytes | None:
    """Utility (MCC mean and 95% t-interval over seeds) against epsilon, one line per initialisation, with the
    non-private baseline (of the first initialisation) as a band.

    Intervals reach beyond [-1, 1] with few seeds (t = 12.7 for two); the axis stops at the MCC's range.
    For segmentation, Dice per class (:func:`_dice_figure`)."""
    if profile.config.segmentation:
        return _dice_figure(profile)

    levels = profile.levels()
    inits = list(levels[0].mcc_by_init) if levels and levels[0].mcc_by_init else [None]

    def ci(lv, init) -> MeanInterval:
        return mean_interval(utility_values(lv) if init is None else init_utility_values(profile, lv, init))

    priv = [lv for lv in levels if lv.private]
    base = next(((lv, ci(lv, inits[0])) for lv in levels if not lv.private), None)
    if base is not None and base[1].mean is None:
        base = None
    if not any(ci(lv, init).mean is not None for lv in priv for init in inits) and base is None:
        return None
    styles = [(WORST, "o-"), (RELAXED, "s--"), ("#555555", "^-."), ("#1f77b4", "d:")]
    with _clean_style():
        fig, (ax,) = _new(7.0, 2.8)
        ends: list[float] = []
        if priv:
            for k, init in enumerate(inits):
                pts = [(lv.epsilon_used, m) for lv in priv for m in [ci(lv, init)] if m.mean is not None]
                if not pts:
                    continue
                ys = [m.mean for _, m in pts]
                lo = [m.mean - (m.low if m.low is not None else m.mean) for _, m in pts]
                hi = [(m.high if m.high is not None else m.mean) - m.mean for _, m in pts]
                n = "/".join(str(x) for x in sorted({m.n for _, m in pts}))
                colour, fmt = styles[k % len(styles)]
                label = (f"DP-SGD (mean, 95% t-interval, n = {n} seeds)" if len(inits) == 1 else
                         f"DP-SGD from {init} (mean, 95% t-interval, n = {n})")
                ax.errorbar([x for x, _ in pts], ys, yerr=[lo, hi], fmt=fmt, color=colour, capsize=3, label=label)
                ends += [y - e for y, e in zip(ys, lo, strict=True)] + [y + e for y, e in zip(ys, hi, strict=True)]
            _eps_ticks(ax, [lv.epsilon_used for lv in priv])
        if base is not None:
            m = base[1]
            ax.axhline(m.mean, color=REALISTIC, lw=1.2, label=f"non-private baseline (n = {m.n})"
                       + (f", {inits[0]}" if len(inits) > 1 else ""))
            if m.low is not None and m.high > m.low:
                ax.axhspan(m.low, m.high, color=REALISTIC, alpha=0.15)
            ends += [m.mean] + ([m.low, m.high] if m.low is not None else [])
        ends = [min(1.0, max(-1.0, e)) for e in ends] or [0.0, 1.0]
        ax.set_ylim(min(0.0, *ends) - 0.05, min(max(0.1, *ends) + 0.05, 1.05))
        ax.set_xlabel("privacy budget ε")
        ax.set_ylabel("test MCC")
        ax.set_title("Utility against ε (empirical)")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", frameon=False, fontsize=7 if len(inits) > 1 else None)
        return _png(fig)


def _dice_figure(profile: Profile) -> bytes | None:
    """Dice per foreground class (mean and std over seeds) against epsilon, each with its non-private baseline
    as a dashed line and band."""
    from dpaudit.audit.report_text import utility_columns

    levels = profile.levels()
    columns = utility_columns(profile)
    colours = [WORST, RELAXED, REALISTIC, "0.4"]
    if not any(lv.utility[key].mean is not None for lv in levels for key, _ in columns):
        return None
    with _clean_style():
        fig, (ax,) = _new(7.0, 2.8)
        vals: list[float] = []
        for j, (key, label) in enumerate(columns):
            colour = colours[j % len(colours)] if len(columns) > 1 else WORST
            base_colour = colour if len(columns) > 1 else REALISTIC
            priv = [lv for lv in levels if lv.private and lv.utility[key].mean is not None]
            base = next((lv for lv in levels if not lv.private and lv.utility[key].mean is not None), None)
            name = "" if len(columns) == 1 else f"{label}: "
            if priv:
                xs = [lv.epsilon_target for lv in priv]
                ys = [lv.utility[key].mean for lv in priv]
                es = [lv.utility[key].std or 0.0 for lv in priv]
                ax.errorbar(xs, ys, yerr=es, fmt="o-", color=colour, capsize=3,
                            label=f"{name}DP-SGD (mean ± std over seeds)")
                _eps_ticks(ax, xs)
            if base is not None:
                m, s = base.utility[key].mean, base.utility[key].std or 0.0
                ax.axhline(m, color=base_colour, lw=1.2, ls="--" if len(columns) > 1 else "-",
                           label=f"{name}non-private baseline")
                if s > 0:
                    ax.axhspan(m - s, m + s, color=base_colour, alpha=0.15)
            vals += [lv.utility[key].mean for lv in levels if lv.utility[key].mean is not None]
        lo = min([0.0, *vals]) - 0.05
        hi = max([1.0 if not vals else max(vals), 0.1]) + 0.05
        ax.set_ylim(lo, min(hi, 1.05))
        ax.set_xlabel("privacy budget ε")
        ax.set_ylabel("test Dice (per volume)")
        ax.set_title("Utility against ε (empirical)")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", frameon=False, fontsize=7)
        return _png(fig)


def figure_size(png: bytes) -> tuple[int, int]:
    """Pixel width and height of a PNG (read from its header)."""
    width = int.from_bytes(png[16:20], "big")
    height = int.from_bytes(png[20:24], "big")
    return width, height


def fits(width_px: int, height_px: int, max_w: float, max_h: float) -> tuple[float, float]:
    """Scale (width, height) in pixels to fit a (max_w, max_h) box in points, keeping the aspect ratio."""
    scale = min(max_w / width_px, max_h / height_px)
    return width_px * scale, height_px * scale

