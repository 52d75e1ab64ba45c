"""The report's figures, drawn with matplotlib (Agg) and returned as inline SVG markup.

Text in the SVG is real ``<text>`` (``svg.fonttype = "none"``) so it stays small and selectable; matplotlib
escapes it as XML, so names that came from a backend are safe to inline. Every text drawn (titles, axis
labels, tick labels, legends) goes through :func:`plain`, so a ``$`` never starts mathtext.
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import matplotlib
import matplotlib.colors
import numpy as np
from markupsafe import Markup
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.axis import Axis
from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatter

matplotlib.use("Agg")  # never a GUI backend; figures are drawn on Figure objects, without pyplot

STYLE = {
    "svg.fonttype": "none",
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "legend.fontsize": 8,
    "legend.frameon": False,
}

class PlainLogFormatter(LogFormatter):
    """Log-axis labels as plain numbers (0.6, 2, 1e-05); LogFormatter still picks which ticks get one."""

    def _num_to_string(self, x: float, vmin: float, vmax: float) -> str:
        return f"{x:g}"


def plain_log_ticks(axis: Axis, base: float = 10) -> None:
    """Label a log axis with plain numbers (256, 0.6, 1e+06) instead of mathtext powers, minor ticks too
    when the axis spans little more than a decade."""
    axis.set_major_formatter(PlainLogFormatter(base=base, labelOnlyBase=False))
    axis.set_minor_formatter(PlainLogFormatter(base=base, labelOnlyBase=False, minor_thresholds=(1.5, 0.6)))


PASS_COLOR = "#2e7d32"
FAIL_COLOR = "#c62828"
LIMIT_COLOR = "#555555"
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
#: the largest magnitude drawn, and its inverse the smallest non-zero one: an axis's margins (5% of its log
#: range) around values near the float limits would overflow
LARGEST = 1e150


@dataclass
class Series:
    """One line (or set of points) of a chart."""

    label: str
    x: Sequence[float]
    y: Sequence[float]
    color: str | None = None
    #: "line" joins the points, "points" draws markers only
    style: str = "line"


@dataclass
class Strip:
    """The precision scores of one backend and dtype: their ratios and whether each case's status is bad
    (``Status.bad``: drawn as a failure)."""

    label: str
    ratios: list[float]
    bad: list[bool]
    color: str | None = None


@dataclass
class Panel:
    """One axes of a multi-panel line chart."""

    title: str
    series: list[Series]
    xlabel: str
    ylabel: str
    logx: bool = False
    logy: bool = False
    #: horizontal reference lines: (y, label)
    hlines: list[tuple[float, str]] = field(default_factory=list)
    #: dotted guide lines of these log-log slopes, starting below the lowest first point
    slopes: tuple[float, ...] = ()
    #: labels of the x positions 0, 1, 2, ... (a categorical axis, e.g. commits)
    xticklabels: list[str] | None = None


def plain(text: str) -> str:
    """``text`` as matplotlib should show it: no mathtext, control characters as spaces (a NUL has no glyph
    and is not allowed in SVG), and not hidden from legends by a leading ``_``."""
    text = CONTROL.sub(" ", text).replace("$", r"\$")
    return "\u200b" + text if text.startswith("_") else text


def spans_decades(values: Sequence[float], decades: float = 1.0) -> bool:
    """Whether positive ``values`` span more than ``decades`` powers of ten (then a log axis shows them all;
    a linear one puts the small ones on the zero line)."""
    positive = [v for v in values if v > 0]
    return bool(positive) and max(positive) > min(positive) * 10 ** decades


def palette(names: Sequence[str]) -> dict[str, str]:
    """A fixed colour per name (sorted), the same in every chart of a report; red and grey are left out
    because they mean "failed" and "limit"."""
    tab20 = colormaps["tab20"]
    colors = [tab20(i) for i in (0, 2, 4, 8, 10, 16, 18, 1, 3, 5, 9, 11, 17, 19)]
    return {name: matplotlib.colors.to_hex(colors[i % len(colors)]) for i, name in enumerate(sorted(set(names)))}


def to_svg(fig: Figure) -> Markup:
    """The figure as an ``<svg>`` element to inline in HTML (XML prolog and doctype removed)."""
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    text = buf.getvalue()
    return Markup(text[text.index("<svg"):])


def _figure(ncols: int, width: float = 6.4, height: float = 3.6) -> tuple[Figure, list[Axes]]:
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(width * ncols, height))
        axes = fig.subplots(1, ncols, squeeze=False, gridspec_kw={"wspace": 0.3})[0]
    return fig, list(axes)


def drawable(value: float) -> bool:
    """A value an axis can hold with its margins: 0, or a magnitude within ``[1/LARGEST, LARGEST]``."""
    return value == 0 or 1 / LARGEST <= abs(value) <= LARGEST


def _draw_panel(ax: Axes, panel: Panel, legend: bool) -> None:
    drawn = False
    for s in panel.series:
        kw = {"marker": "o", "markersize": 4, "color": s.color, "label": plain(s.label)}
        pts = [(x, y) for x, y in zip(s.x, s.y) if drawable(x) and drawable(y)]
        x, y = [p[0] for p in pts], [p[1] for p in pts]
        drawn = drawn or any(x > 0 and y > 0 for x, y in pts)
        if s.style == "points":
            ax.plot(x, y, linestyle="none", **kw)
        else:
            ax.plot(x, y, linewidth=1.6, **kw)
    for y, label in panel.hlines:
        if drawable(y):
            ax.axhline(y, color=LIMIT_COLOR, linestyle="--", linewidth=1.1, label=plain(label))
    _decorate(ax, panel, log=drawn)
    if legend and ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))


def _decorate(ax: Axes, panel: Panel, log: bool) -> None:
    """Slope guides, scales, ticks and labels of a panel; log scales only if ``log`` (a point with positive x
    and y is drawn: an axis without a positive value cannot be log-scaled)."""
    firsts = [(s.x[0], s.y[0]) for s in panel.series if len(s.x) and drawable(s.y[0]) and s.y[0] > 0]
    if panel.slopes and firsts:
        x0, y0 = min(firsts, key=lambda p: p[1])
        xmax = max(x for s in panel.series for x in s.x if drawable(x))
        xs = np.geomspace(x0, xmax, 20)
        for k, dash in zip(panel.slopes, (":", "-.", "--")):
            ax.plot(xs, y0 / 3 * (xs / x0) ** k, linestyle=dash, color="#8c959f", linewidth=1, label=f"slope {k:g}")
    if panel.xticklabels is not None:
        ax.set_xticks(range(len(panel.xticklabels)), [plain(t) for t in panel.xticklabels], rotation=30, ha="right")
    if panel.logx and log:
        ax.set_xscale("log", base=2)
        plain_log_ticks(ax.xaxis, base=2)
    if panel.logy and log:
        ax.set_yscale("log")
        plain_log_ticks(ax.yaxis)
    ax.set_title(plain(panel.title))
    ax.set_xlabel(plain(panel.xlabel))
    ax.set_ylabel(plain(panel.ylabel))


def line_chart(panels: list[Panel], *, width: float = 4.6, height: float = 3.0) -> Markup:
    """Line charts side by side, one per panel; one legend, right of the last panel (panels share series)."""
    with matplotlib.rc_context(STYLE):
        fig, axes = _figure(len(panels), width, height)
        for i, (ax, panel) in enumerate(zip(axes, panels)):
            _draw_panel(ax, panel, legend=i == len(panels) - 1)
        return to_svg(fig)


def precision_chart(facets: list[tuple[float, list[Strip]]]) -> Markup:
    """Strip and box plots of err/ref_err per backend and dtype, one panel per tolerance multiplier.

    The dashed line is the multiplier; a case above it can still pass through the tolerance's absolute floor.
    Ratios of 0 (an exact result) are drawn at the bottom of the axis; ratios and multipliers are drawn
    within ``[1/LARGEST, LARGEST]``.
    """
    rng = np.random.default_rng(0)
    with matplotlib.rc_context(STYLE):
        widest = max(len(strips) for _, strips in facets)
        fig, axes = _figure(len(facets), width=max(3.2, 0.9 * widest + 1.6), height=3.8)
        for ax, (mult, strips) in zip(axes, facets):
            mult = min(mult, LARGEST)
            positive = [r for s in strips for r in s.ratios if r > 0]
            floor = max(min([*positive, mult]) / 4, 1 / LARGEST)
            data = [np.clip(np.asarray(s.ratios, dtype=float), floor, LARGEST) for s in strips]
            ax.set_yscale("log")  # limits set before drawing: no autoscaling over the data's range
            ax.set_ylim(min(float(d.min()) for d in data) / 1.6, max([mult, *(float(d.max()) for d in data)]) * 1.6)
            ax.boxplot(data, positions=range(len(strips)), widths=0.5, showfliers=False,
                       medianprops={"color": "#333333"}, boxprops={"color": "#777777"},
                       whiskerprops={"color": "#777777"}, capprops={"color": "#777777"})
            for i, (s, ys) in enumerate(zip(strips, data)):
                xs = i + rng.uniform(-0.18, 0.18, len(ys))
                ok = ~np.asarray(s.bad, dtype=bool)
                ax.scatter(xs[ok], ys[ok], s=10, alpha=0.6, color=s.color or PASS_COLOR, zorder=3)
                ax.scatter(xs[~ok], ys[~ok], s=22, marker="x", color=FAIL_COLOR, zorder=4)
            ax.axhline(mult, color=FAIL_COLOR, linestyle="--", linewidth=1.1)
            ax.text(0.01, mult, f"multiplier {mult:g}", transform=ax.get_yaxis_transform(), color=FAIL_COLOR,
                    fontsize=8, va="bottom")
            plain_log_ticks(ax.yaxis)
            ax.set_xticks(range(len(strips)), [plain(s.label) for s in strips], rotation=25, ha="right")
            ax.set_ylabel("err / ref_err")
            ax.set_title(f"tolerance multiplier {mult:g}")
        return to_svg(fig)

