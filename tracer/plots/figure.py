"""One figure of a trace: (1) a timeline of every call, (2) the intervals between consecutive
starts, (3) the duration of each call over time. For a timestamps file (starts only):
(1) one tick per start, (2) the same histogram, (3) each interval over time.

A long recording squeezes a 5 s cadence into a pixel or two, so when the timeline covers
more than ZOOM_MIN intervals a second timeline zooms on ZOOM_INTERVALS median intervals
around the longest idle gap: there the cadence, the bursts and the gap read at a glance.

Built on matplotlib's object API (no pyplot): no global state, no display needed.
"""

from __future__ import annotations

import datetime as dt
import re

import numpy as np
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from tracer.errors import UserError
from tracer.exports.spans import KINDS
from tracer.plots.data import PlotInput

MAX_OBJECT_LANES = 30
COLOURS = {
    "ok": "#3a923a",
    "requeue": "#f0a30a",
    "requeue-after": "#2f7fd8",
    "error": "#d62728",
    "panic": "#8e24aa",
    "unfinished": "#9e9e9e",
}
LABELS = {"requeue-after": "requeue after", "unfinished": "unfinished (ran to the end)"}
TICK_COLOUR = "#1f3b73"
BURST_COLOUR = "#e8590c"
GAP_COLOUR = "#f9dede"
MAX_GAPS = 20
ZOOM_MIN = 100  # intervals on the timeline before a zoom is drawn
ZOOM_INTERVALS = 40
MIN_WIDTH_UP_TO = 1500  # calls on a timeline drawn at least a pixel wide (about its width)
_NS = {"ns": 1, "µs": 1e3, "ms": 1e6, "s": 1e9, "min": 60e9, "h": 3600e9}


def _axis_unit(total_ns: float) -> str:
    """The unit of a time axis that covers total_ns."""
    for unit, limit in (("µs", 2e6), ("ms", 2e9), ("s", 300e9), ("min", 3 * 3600e9)):
        if total_ns < limit:
            return unit
    return "h"


def _value_unit(values_ns: np.ndarray) -> str:
    """The unit for durations or intervals: the one the typical value reads best in."""
    typical = float(np.percentile(values_ns, 90)) if len(values_ns) else 0.0
    for unit, limit in (("ns", 1e3), ("µs", 1e6), ("ms", 1e9)):
        if typical < limit:
            return unit
    return "s"


def _wide(values: np.ndarray) -> bool:
    """Spread over orders of magnitude around the median: a log scale shows both ends."""
    positive = values[values > 0]
    if len(positive) < 2 or len(positive) < len(values):
        return False
    median = float(np.median(positive))
    return positive.max() > 30 * median or median > 30 * positive.min()


def duration_text(ns: float) -> str:
    unit = _value_unit(np.array([ns]))
    return f"{ns / _NS[unit]:.3g} {unit}"


def _natural(name: str) -> list:
    """obj-2 before obj-10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _utc(ns: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ns / 1e9, dt.UTC)


def _clock_text(ns: int, with_ms: bool) -> str:
    text = f"{_utc(ns):%H:%M:%S.%f}"
    return text[:-3] if with_ms else text[:-7]


def choose_lanes(data: PlotInput, lanes: str | None) -> str:
    objects = {o for o in data.objects if o is not None}
    if lanes == "object" and not objects:
        raise UserError(f"{data.path} records no objects (a native trace or --no-args): "
                        "use --lanes worker")
    if lanes:
        return lanes
    return "object" if objects and len(objects) <= MAX_OBJECT_LANES else "worker"


def idle_gaps(data: PlotInput) -> list[tuple[int, int]]:
    """The longest stretches with nothing happening, over 3x the median interval between
    starts, longest first: between starts for a timestamps file; with no call running for
    a trace (a long call is not idle time)."""
    starts = data.starts
    if len(starts) < 3:
        return []
    threshold = 3 * float(np.median(np.diff(starts)))
    if data.starts_only:
        busy_until = starts[:-1]
    else:
        busy_until = np.maximum.accumulate(data.ends)[:-1]
    length = starts[1:] - busy_until
    found = np.flatnonzero(length > max(threshold, 0))
    found = found[np.argsort(length[found])[::-1][:MAX_GAPS]]
    return [(int(busy_until[i]), int(starts[i + 1])) for i in found]


class _Axis:
    """Maps wall ns onto an axis: offset from the figure's origin, in the axis's unit."""

    def __init__(self, origin: int, unit: str) -> None:
        self.origin, self.unit = origin, unit

    def __call__(self, ns):
        return (np.asarray(ns) - self.origin) / _NS[self.unit]


def _timeline(ax, data: PlotInput, lanes: str, to_x: _Axis, window: tuple[int, int],
              gid: str) -> None:
    keys = data.objects if lanes == "object" else data.workers
    keys = [k if k is not None else "(no object)" for k in keys]
    names = sorted(set(keys), key=_natural)
    row = {name: i for i, name in enumerate(names)}
    y = np.array([row[k] for k in keys])
    visible = (data.ends >= window[0]) & (data.starts <= window[1])
    x0, x1 = to_x(data.starts), to_x(data.ends)
    kinds = np.array(data.kinds)
    # An edge in the fill colour keeps a call of a few µs at least a pixel wide; with more
    # calls than pixels that would let whichever result is drawn last paint over the rest,
    # so dense timelines draw true widths and colours blend by the time each result took.
    edge = 0.6 if visible.sum() < MIN_WIDTH_UP_TO else 0.0
    handles = []
    # The common outcome first, so rarer ones (errors, panics) are drawn on top.
    for kind in reversed(KINDS):
        mask = (kinds == kind) & visible
        if not (kinds == kind).any():
            continue
        ys, a, b = y[mask], x0[mask], x1[mask]
        verts = np.stack([np.column_stack([a, ys - 0.38]), np.column_stack([a, ys + 0.38]),
                          np.column_stack([b, ys + 0.38]), np.column_stack([b, ys - 0.38])],
                         axis=1)
        ax.add_collection(PolyCollection(verts, facecolors=COLOURS[kind],
                                         edgecolors=COLOURS[kind], linewidths=edge,
                                         gid=f"{gid}:{kind}", zorder=3))
        handles.append(Patch(color=COLOURS[kind],
                             label=f"{LABELS.get(kind, kind)} ({int((kinds == kind).sum())})"))
    ax.set_ylim(len(names) - 0.5, -0.5)
    step = max(1, len(names) // 40)  # at most ~40 labels stay legible
    ticks = range(0, len(names), step)
    ax.set_yticks(ticks, [names[i] for i in ticks], fontsize=7 if len(names) > 12 else 8)
    ax.set_ylabel("object" if lanes == "object" else "worker")
    if gid == "spans":
        ax.legend(handles=handles[::-1], loc="upper left", bbox_to_anchor=(1.005, 1),
                  fontsize=8, title="result", title_fontsize=8, frameon=False)


def bursts(starts: np.ndarray) -> np.ndarray:
    """Starts that came less than half the median interval after the previous one."""
    if len(starts) < 3:
        return np.zeros(len(starts), bool)
    intervals = np.diff(starts)
    return np.concatenate([[False], intervals < 0.5 * float(np.median(intervals))])


def _ticks(ax, data: PlotInput, to_x: _Axis, window: tuple[int, int], gid: str) -> None:
    inside = (data.starts >= window[0]) & (data.starts <= window[1])
    burst = bursts(data.starts)
    groups = [data.starts[inside & ~burst], data.starts[inside & burst]]
    # Bursts drawn last and longer, so a burst tick next to its neighbour still shows.
    ax.eventplot([to_x(g) for g in groups], lineoffsets=0, linelengths=[0.8, 1.0],
                 linewidths=0.6 if gid == "starts" else 1.2, colors=[TICK_COLOUR, BURST_COLOUR],
                 gid=gid)
    ax.set_ylim(-0.6, 0.6)
    ax.set_yticks([])
    ax.set_ylabel("starts")
    if gid == "starts":
        ax.legend(handles=[Line2D([], [], color=TICK_COLOUR, label=f"start ({(~burst).sum()})"),
                           Line2D([], [], color=BURST_COLOUR,
                                  label=f"burst: < ½ median\ninterval after the\n"
                                        f"previous ({burst.sum()})")],
                  loc="upper left", bbox_to_anchor=(1.005, 1), fontsize=8, frameon=False)


def _draw_time(ax, data: PlotInput, lanes: str | None, to_x: _Axis, window: tuple[int, int],
               gaps: list[tuple[int, int]], gid: str) -> None:
    for a, b in gaps:
        if b >= window[0] and a <= window[1]:
            ax.axvspan(to_x(a), to_x(b), color=GAP_COLOUR, zorder=0, lw=0)
    if lanes:
        _timeline(ax, data, lanes, to_x, window, gid)
    else:
        _ticks(ax, data, to_x, window, gid)
    ax.set_xlim(to_x(window[0]), to_x(window[1]))
    ax.grid(True, axis="x", alpha=0.3)


def _zoom_window(data: PlotInput, gaps: list[tuple[int, int]],
                 span: tuple[int, int]) -> tuple[int, int] | None:
    if len(data.starts) < 3:
        return None
    median = float(np.median(np.diff(data.starts)))
    if median <= 0 or span[1] - span[0] < ZOOM_MIN * median:
        return None
    width = int(ZOOM_INTERVALS * median)
    if gaps:
        a, b = gaps[0]
        width = max(width, int(2 * (b - a)))
        lo = (a + b) // 2 - width // 2
    else:
        lo = span[0]
    lo = int(np.clip(lo, span[0], span[1] - width))
    return lo, lo + width


def _histogram(ax, intervals: np.ndarray) -> str:
    """Draws the histogram; returns its statistics as text."""
    if not len(intervals):
        ax.text(0.5, 0.5, "one start: no interval", ha="center", va="center",
                transform=ax.transAxes)
        ax.set_axis_off()
        return ""
    unit = _value_unit(intervals)
    values = intervals / _NS[unit]
    if _wide(intervals):
        bins = np.geomspace(values.min(), values.max() * 1.0001, 60)
        ax.set_xscale("log")
    else:
        q1, q3 = np.percentile(values, [25, 75])
        width = 2 * (q3 - q1) / len(values) ** (1 / 3)  # Freedman-Diaconis
        span = float(values.max() - values.min())
        count = int(np.clip(span / width, 20, 200)) if width > 0 else 40
        bins = np.linspace(values.min(), values.max() + 1e-9, count + 1)
    counts, _, _ = ax.hist(values, bins=bins, color=TICK_COLOUR, gid="intervals")
    nonzero = counts[counts > 0]
    if len(nonzero) and nonzero.max() > 20 * np.median(nonzero):
        ax.set_yscale("log")  # one tall peak (a steady cadence) would hide the outliers
    else:
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(f"interval between consecutive starts ({unit})")
    ax.set_ylabel("intervals")
    ax.grid(True, alpha=0.3)
    if ax.get_xscale() == "linear":
        _cadence_inset(ax, values, unit)
    s = _NS[unit]
    median = float(np.median(intervals))
    near = float(np.mean(np.abs(intervals - median) <= 0.1 * median)) * 100
    lines = [f"intervals {len(intervals)}", f"mean    {np.mean(intervals) / s:.4g} {unit}",
             f"median  {median / s:.4g} {unit}"]
    if len(intervals) > 1:
        lines.append(f"std     {np.std(intervals, ddof=1) / s:.3g} {unit}")
    lines += [f"min     {intervals.min() / s:.3g} {unit}",
              f"max     {intervals.max() / s:.4g} {unit}",
              f"{near:.1f}% within", "  ±10% of the median"]
    return "\n".join(lines)


def _cadence_inset(ax, values: np.ndarray, unit: str) -> None:
    """A steady cadence is one thin spike on the full range: show its shape, enlarged."""
    lo, hi = np.percentile(values, [1, 99])
    full = float(values.max() - values.min())
    if len(values) < 50 or hi <= lo or (hi - lo) > 0.15 * full:
        return
    pad = 0.1 * (hi - lo)
    inset = ax.inset_axes([0.5, 0.4, 0.47, 0.55])
    inside = values[(values >= lo - pad) & (values <= hi + pad)]
    inset.hist(inside, bins=np.linspace(lo - pad, hi + pad, 41), color=TICK_COLOUR,
               gid="intervals-inset")
    inset.tick_params(labelsize=7)
    inset.set_xlabel(f"{unit}: the central {len(inside) / len(values):.1%}, enlarged",
                     fontsize=7, labelpad=1)
    inset.grid(True, alpha=0.3)


def _over_time(ax, x: np.ndarray, values_ns: np.ndarray, colours, what: str, xlabel: str,
               gid: str) -> str:
    """Scatter of values over time; returns the median as text for the title."""
    unit = _value_unit(values_ns)
    y = values_ns / _NS[unit]
    # Many points: translucent, so where they pile up still shows.
    alpha = 1.0 if len(y) <= 2000 else max(0.05, 2000 / len(y))
    ax.scatter(x, y, s=8, c=colours, linewidths=0, alpha=alpha, gid=gid, zorder=3)
    if _wide(values_ns):
        ax.set_yscale("log")
    else:
        ax.set_ylim(0, max(float(y.max()), 1e-9) * 1.05)
    median = float(np.median(y))
    ax.axhline(median, color="#555", lw=0.8, ls="--", zorder=2)
    ax.set_ylabel(f"{what} ({unit})")
    ax.set_xlabel(xlabel)
    ax.grid(True, alpha=0.3)
    return f"median {median:.4g} {unit}, dashed"


def build_figure(data: PlotInput, lanes: str | None = None) -> Figure:
    """The whole figure, not saved (tests count its artists with drawn())."""
    lane_mode = None if data.starts_only else choose_lanes(data, lanes)
    lo, hi = data.window or (int(data.starts[0]), int(data.starts[-1]))
    if not data.starts_only:
        hi = max(hi, int(data.ends.max()))
    hi = max(hi, lo + 1)
    gaps = idle_gaps(data)
    zoom = _zoom_window(data, gaps, (lo, hi))

    if lane_mode:
        n_lanes = len(set(data.objects if lane_mode == "object" else data.workers))
        lane_h = float(np.clip(0.9 + 0.2 * n_lanes, 2.2, 8.5))
    else:
        lane_h = 1.5
    heights = [lane_h, *([lane_h] if zoom else []), 3.4]
    fig = Figure(figsize=(15, sum(heights) + 0.9 * len(heights)), dpi=110,
                 layout="constrained")
    grid = fig.add_gridspec(len(heights), 3, height_ratios=heights,
                            width_ratios=[1, 0.22, 1.45])
    main = fig.add_subplot(grid[0, :])

    with_ms = hi - lo < 60e9
    start_text = f"{_utc(lo):%Y-%m-%d} {_clock_text(lo, with_ms)} UTC"
    fig.suptitle(f"{data.title}   ({start_text} to {_clock_text(hi, with_ms)})", fontsize=11,
                 x=0.01, ha="left")
    to_x = _Axis(lo, _axis_unit(hi - lo))
    _draw_time(main, data, lane_mode, to_x, (lo, hi), gaps, "spans" if lane_mode else "starts")
    what = (f"Every call, one lane per {lane_mode}" if lane_mode
            else "Reconcile starts, one tick each")
    if gaps:
        what += "; shaded: the longest idle gaps (> 3× the median interval)"
    main.set_title(what, fontsize=10, loc="left")
    main.set_xlabel(f"time since {start_text} ({to_x.unit})")

    if zoom:
        zoomed = fig.add_subplot(grid[1, :])
        zoom_x = _Axis(lo, _axis_unit(zoom[1] - zoom[0]))
        _draw_time(zoomed, data, lane_mode, zoom_x, zoom, gaps, "zoom")
        main.axvspan(to_x(zoom[0]), to_x(zoom[1]), fill=False, ec="#333", ls="--", lw=0.9,
                     zorder=4)
        longest = (f", around the longest idle gap ({duration_text(gaps[0][1] - gaps[0][0])})"
                   if gaps else "")
        zoomed.set_title(f"Zoom on the dashed box{longest}", fontsize=10, loc="left")
        zoomed.set_xlabel(f"time since {start_text} ({zoom_x.unit})")

    bottom = len(heights) - 1
    hist = fig.add_subplot(grid[bottom, 0])
    stats_ax = fig.add_subplot(grid[bottom, 1])
    later = fig.add_subplot(grid[bottom, 2], sharex=main)
    intervals = np.diff(data.starts)
    hist.set_title("Intervals between consecutive starts", fontsize=10, loc="left")
    stats_ax.set_axis_off()
    stats_ax.text(0, 1, _histogram(hist, intervals), va="top", ha="left", fontsize=8,
                  family="monospace", transform=stats_ax.transAxes)

    xlabel = f"time ({to_x.unit})"
    if data.starts_only:
        title = "Each interval, at the later start"
        if len(intervals):
            colours = np.where(bursts(data.starts)[1:], BURST_COLOUR, TICK_COLOUR)
            title += " (" + _over_time(later, to_x(data.starts[1:]), intervals, colours,
                                       "interval since the previous start", xlabel,
                                       "intervals-over-time") + ")"
    else:
        title = "Duration of each call, at its start (" + _over_time(
            later, to_x(data.starts), data.ends - data.starts,
            [COLOURS[k] for k in data.kinds], "duration", xlabel, "durations-over-time") + ")"
    later.set_title(title, fontsize=10, loc="left")
    later.tick_params(labelbottom=True)
    return fig


def drawn(fig: Figure) -> dict[str, int]:
    """How many marks the figure draws, by gid: `spans:<result>` (main timeline bars),
    `starts` (ticks), `zoom:<result>`, `intervals` (histogram bars), `*-over-time`."""
    counts: dict[str, int] = {}
    for ax in fig.axes:
        for artist in [*ax.collections, *ax.patches]:
            gid = artist.get_gid()
            if not gid:
                continue
            if isinstance(artist, PolyCollection):
                n = len(artist.get_paths())
            elif hasattr(artist, "get_positions"):
                n = len(artist.get_positions())
            elif hasattr(artist, "get_offsets"):
                n = len(artist.get_offsets())
            else:
                n = 1
            counts[gid] = counts.get(gid, 0) + n
    return counts
