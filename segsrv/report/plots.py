"""The report's plots: matplotlib figures rendered to inline SVG (text as text, nothing fetched at view time).

Each function takes the gathered data (segsrv.report.gather) and returns an SVG string, or None when there
is nothing to draw. Lifts are drawn on a log2 axis so that 2x and 0.5x sit equally far from 1x.
"""

from __future__ import annotations

import io
import math

import matplotlib

matplotlib.use("Agg")  # no display; the figures only become SVG text
import matplotlib.pyplot as plt  # noqa: E402

OVER = "#1b7f79"
UNDER = "#d9822b"
NEUTRAL = "#5b6b82"
LIFT_FLOOR = 1 / 64  # a lift of 0 (no member has the value) drawn at 1/64x, labelled "0x"
PALETTE = ("#1b7f79", "#d9822b", "#4c6fb5", "#b5487a", "#7a9a3a", "#8a6bbf", "#c9a227", "#3f8fbf")

matplotlib.rcParams.update({"svg.fonttype": "none", "svg.hashsalt": "segsrv-report", "font.size": 9,
                            "axes.spines.top": False, "axes.spines.right": False})


def _svg(fig) -> str:
    buf = io.StringIO()
    # no metadata block: the same data draws the same bytes (no date)
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None, "Creator": None, "Format": None,
                                                                  "Type": None})
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]  # inline: no XML prolog or doctype


def _short(text: str, width: int = 48) -> str:
    return text if len(text) <= width else text[:width - 1] + "\u2026"


def _log2_lift(lift: float) -> float:
    return math.log2(max(lift, LIFT_FLOOR)) if math.isfinite(lift) else math.log2(1 / LIFT_FLOOR)


def _lift_label(exponent: int) -> str:
    return f"{2 ** exponent}x" if exponent >= 0 else f"1/{2 ** -exponent}x"


def _lift_axis(ax) -> None:
    ax.axvline(0, color="#333", linewidth=0.8)
    lo, hi = math.floor(ax.get_xlim()[0]), math.ceil(ax.get_xlim()[1])
    step = max(1, math.ceil((hi - lo) / 8))  # at most ~8 labels, 1x always among them
    ticks = [t for t in range(lo - lo % step, hi + 1, step)]
    ax.set_xticks(ticks)
    ax.set_xticklabels([_lift_label(t) for t in ticks])


def segment_sizes(segments: list[dict]) -> str | None:
    """Each segment's share of the universe, its lift written beside it (discovered segments)."""
    if not segments:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 0.32 * len(segments) + 0.8))
    names = [_short(s["name"], 40) for s in segments][::-1]
    shares = [100 * s["share"] for s in segments][::-1]
    bars = ax.barh(names, shares, color=NEUTRAL)
    for bar, s in zip(bars, segments[::-1]):
        label = f"{s['size']:,}" + (f"  lift {s['lift']:.2f}x" if s.get("lift") is not None else "")
        ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, " " + label, va="center", fontsize=8)
    ax.set_xlabel("share of the universe (%)")
    ax.set_xlim(0, max(shares) * 1.45 or 1)
    return _svg(fig)


def value_lifts(fields: list[dict]) -> str | None:
    """Over- (right) and under-indexed (left) values of a segment's strongest fields, as log2 lift bars."""
    rows = [(f"{_short(f['field'], 30)} = {_short(v['value'], 24)}", v["lift"])
            for f in fields for v in f["over"] + f["under"]]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 0.22 * len(rows) + 0.8))
    labels = [r[0] for r in rows][::-1]
    values = [_log2_lift(r[1]) for r in rows][::-1]
    ax.barh(range(len(rows)), values, color=[OVER if v > 0 else UNDER for v in values])
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(labels, fontsize=7.5)
    ax.set_xlabel("lift in the segment (log scale; 1x = as in the population)")
    _lift_axis(ax)
    return _svg(fig)


def stacked_proportions(profile: dict) -> str | None:
    """Seed 004's stacked proportion bars: for each stackable field, the segment's and the population's
    shares of its listed values, the rest as "other"."""
    fields = [f for f in profile["fields"] if f["field"] in profile["stacked"]]
    if not fields:
        return None
    fig, axes = plt.subplots(len(fields), 1, figsize=(7.5, 1.1 * len(fields) + 0.4), squeeze=False)
    for ax, f in zip(axes[:, 0], fields):
        values = f["over"] + f["under"]
        for row, key in ((1, "segment_share"), (0, "population_share")):
            left = 0.0
            for i, v in enumerate(values):
                ax.barh(row, v[key], left=left, color=PALETTE[i % len(PALETTE)],
                        label=_short(v["value"], 24) if row == 1 else None)
                left += v[key]
            ax.barh(row, max(0.0, 1 - left), left=left, color="#d8dde6", label="other" if row == 1 else None)
        ax.set_yticks([0, 1])
        ax.set_yticklabels(["population", "segment"])
        ax.set_xlim(0, 1)
        ax.set_title(_short(f["field"], 60), fontsize=9, loc="left")
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=7, frameon=False)
    axes[-1, 0].set_xlabel("share of rows")
    fig.tight_layout()
    return _svg(fig)


def compactness(numeric: list[dict]) -> str | None:
    """Relative compactness of the numeric fields: the segment's standard deviation over the
    population's (below 1: the segment is tighter than everyone on that field)."""
    rows = [n for n in numeric if n["compactness"] is not None]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 0.3 * len(rows) + 0.8))
    values = [n["compactness"] for n in rows][::-1]
    ax.barh([_short(n["field"], 40) for n in rows][::-1], values,
            color=[OVER if v < 1 else UNDER for v in values])
    ax.axvline(1, color="#333", linewidth=0.8)
    ax.set_xlabel("std in the segment / std in the population")
    return _svg(fig)


def calibration(evaluation: dict) -> str | None:
    """Mean predicted probability against the observed rate, per calibration bin; the diagonal is perfect."""
    bins = evaluation["calibration"]
    if not bins:
        return None
    fig, ax = plt.subplots(figsize=(4.2, 4.0))
    ax.plot([0, 1], [0, 1], color="#999", linestyle="--", linewidth=0.8, label="perfect")
    ax.plot([b["mean_predicted"] for b in bins], [b["observed_rate"] for b in bins], marker="o", color=OVER,
            label="model")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("mean predicted")
    ax.set_ylabel("observed")
    auc = evaluation.get("auc")
    ax.set_title(_short(evaluation["calibration_of"], 40) + (f"   AUC {auc:.3f}" if auc is not None else ""),
                 fontsize=9)
    ax.legend(loc="upper left", fontsize=7, frameon=False)
    return _svg(fig)


def drift_sizes(segments: list[dict]) -> str | None:
    """Each catalog segment's size in the two versions."""
    rows = [s for s in segments if s["size_a"] is not None or s["size_b"] is not None]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 0.4 * len(rows) + 0.9))
    ys = range(len(rows))
    ax.barh([y + 0.2 for y in ys], [s["size_a"] or 0 for s in rows], height=0.4, color="#aab4c4", label="version A")
    ax.barh([y - 0.2 for y in ys], [s["size_b"] or 0 for s in rows], height=0.4, color=NEUTRAL, label="version B")
    ax.set_yticks(list(ys))
    ax.set_yticklabels([_short(s["name"], 40) for s in rows])
    ax.invert_yaxis()
    ax.set_xlabel("members")
    ax.legend(fontsize=7, frameon=False)
    return _svg(fig)
