"""parallel.png and parallel.html: one vertical axis per searched key plus the metric, one line per cell.

Each axis is scaled as its search space says (space.py): a log axis for a loguniform key, categories in their
listed order. Lines are coloured by the metric, best at the top of its axis and bright; the best cells are drawn
last, on top of the others. Cells stopped early (pruned, paused, running) are dashed: their value is from fewer
epochs. Where cells validated on different data sets, lines are coloured by data set instead and the best of each
set are thick: no cell is called better than one of another set. The HTML file is the same figure as one
self-contained SVG: hovering a line names its cell.
"""

import html
import json
import math
import os

from matplotlib.cm import ScalarMappable
from matplotlib.collections import LineCollection
from matplotlib.colors import Normalize, to_hex
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from core.rundir.plots import plt, save_figure
from core.search.results import best_of_each_data_set, data_set_name, minimized
from utils import atomic_write

N_TICKS = 5
HIGHLIGHT = 3  # the best cells get a thicker line


def goodness(cells, metric):
    """{id(cell): 0 (worst) .. 1 (best)} over the cells that have a value."""
    values = [c.value for c in cells if c.value is not None]
    low, high = (min(values), max(values)) if values else (0, 1)
    span = (high - low) or 1
    sign = -1 if minimized(metric) else 1
    return {id(c): ((c.value - low) / span if sign > 0 else (high - c.value) / span)
            for c in cells if c.value is not None}


def polylines(cells, scales, metric):
    """[(cell, [y per axis], goodness)] in drawing order: cells stopped early, then completed ones, each worst
    first, so that the best completed cells end on top. Cells without a value, or off an axis, are left out."""
    score = goodness(cells, metric)
    out = []
    for cell in cells:
        if id(cell) not in score:
            continue
        ys = [scale.position(cell.values.get(key)) for key, scale in scales.items()]
        if any(y is None for y in ys):
            continue
        out.append((cell, [*ys, score[id(cell)]], score[id(cell)]))
    return sorted(out, key=lambda line: (line[0].outcome == "completed", line[2]))


def round_ticks(low, high):
    """[(position 0..1, text)] at round values between `low` and `high` (0.952, 0.954, 0.956 rather than 0.9517 +
    0.0019 i printed as 0.952, 0.954, 0.955: steps that look uneven), each printed with the digits its step needs."""
    if not high > low:
        return [(0.0, f"{low:.4g}")]
    slack = (high - low) * 1e-9  # a tick at 0.9 computed as 0.8999999 is still on an axis that starts at 0.9
    values = [float(v) for v in MaxNLocator(N_TICKS).tick_values(low, high) if low - slack <= v <= high + slack]
    step = values[1] - values[0] if len(values) > 1 else high - low
    digits = max(0, -math.floor(math.log10(step)))
    while digits < 12 and abs(round(step, digits) - step) > step * 1e-6:  # a step of 0.015 needs 3 decimals, not 2
        digits += 1
    return [((v - low) / (high - low), f"{v:.{digits}f}") for v in values]


def ticks(scale):
    """[(position 0..1, text)] along one key's axis."""
    if scale.kind == "category":
        step = max(1, math.ceil(len(scale.categories) / 12))
        return [(scale.position(json.loads(c)), scale.label(json.loads(c))) for c in scale.categories[::step]]
    if scale.marks:
        return [(scale.position(v), f"{v:g}") for v in scale.spaced_marks(0.05)]
    if scale.kind == "log":
        lo, hi = math.floor(math.log10(scale.low)), math.ceil(math.log10(scale.high))
        values = [m * 10.0 ** e for e in range(lo, hi + 1) for m in scale.log_subs()]
        values = [v for v in values if scale.low * 0.999 <= v <= scale.high * 1.001] or [scale.low, scale.high]
        return [(scale.position(v), f"{v:g}") for v in values]
    return round_ticks(scale.low, scale.high)


def metric_ticks(cells, metric):
    """[(position 0..1, text)] along the metric's axis, where goodness puts each value (the best at the top)."""
    values = [c.value for c in cells if c.value is not None]
    if not values:
        return []
    flip = minimized(metric) and max(values) > min(values)  # one value: goodness puts every line at 0
    return [(1 - position if flip else position, text) for position, text in round_ticks(min(values), max(values))]


def line_colours(lines, cmap):
    """(a colour per line, {data set: colour} or None): by the metric, or by data set where the sets differ."""
    sets = sorted({data_set_name(c.data) for c, _, _ in lines})
    if len(sets) < 2:
        return [cmap(g) for _, _, g in lines], None
    by_set = {name: f"C{i % 10}" for i, name in enumerate(sets)}
    return [by_set[data_set_name(c.data)] for c, _, _ in lines], by_set


def thick(lines):
    """ids of the HIGHLIGHT best completed cells of each data set (lines run worst first)."""
    completed = [c for c, _, _ in reversed(lines) if c.outcome == "completed"]
    return {id(c) for c in best_of_each_data_set(completed, HIGHLIGHT)}


def parallel_figure(path, title, cells, scales, metric):
    """Write parallel.png; return how many lines it drew (one per cell with a value)."""
    lines = polylines(cells, scales, metric)
    names = [*scales, f"valid {metric}"]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(names) + 1.5), 4.8))
    segments = [list(enumerate(ys)) for _, ys, _ in lines]
    cmap = plt.get_cmap("viridis")
    colours, by_set = line_colours(lines, cmap)
    best = thick(lines)
    collection = LineCollection(segments, colors=colours,
                                linewidths=[2.4 if id(c) in best else 1.0 for c, _, _ in lines],
                                linestyles=["-" if c.outcome == "completed" else "--" for c, _, _ in lines],
                                alpha=0.85)
    ax.add_collection(collection)
    axis_ticks = [ticks(s) for s in scales.values()] + [metric_ticks(cells, metric)]
    for i, marks in enumerate(axis_ticks):
        ax.axvline(i, color="0.2", lw=1)
        for y, text in marks:
            ax.text(i + 0.04, y, text, fontsize=7, va="center", ha="left",
                    bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.7, "pad": 0.5})
    ax.set_xlim(-0.1, len(names) - 0.6)
    ax.set_ylim(-0.05, 1.05)
    ax.set_xticks(range(len(names)), names, fontsize=8, rotation=15 if len(names) > 5 else 0)
    ax.set_yticks([])
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    values = [c.value for c, _, _ in lines]
    if by_set:
        ax.legend(handles=[Line2D([], [], color=colour, lw=2, label=name) for name, colour in by_set.items()],
                  title="data set", fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    elif values:
        bar = fig.colorbar(ScalarMappable(Normalize(min(values), max(values)),
                                          cmap=cmap.reversed() if minimized(metric) else cmap), ax=ax, pad=0.02)
        bar.set_label(f"valid {metric}")
    left_out = len(cells) - len(lines)
    completed = sum(c.outcome == "completed" for c, _, _ in lines)
    stopped = "; dashed: stopped early" if completed < len(lines) else ""
    missing = f"; {left_out} without a value not drawn" if left_out else ""
    what = (f"the best {HIGHLIGHT} completed of each data set thick; the validation sets differ: nothing is ranked "
            f"across them") if by_set else f"the best {min(HIGHLIGHT, completed)} completed thick"
    ax.set_title(f"{title}\n{len(lines)} cells, {what}{stopped}{missing}", fontsize=9)
    save_figure(fig, path)
    return len(collection.get_segments())


def parallel_html(path, title, cells, scales, metric):
    """The same figure as an SVG in one HTML file, no script and no server: hover a line to see its cell (its
    folder relative to `title`, the parent)."""
    lines = polylines(cells, scales, metric)
    names = [*scales, f"valid {metric}"]
    width, height, pad = 160 * len(names) + 80, 420, 40
    def x(i):
        return pad + i * (width - 2 * pad) / max(1, len(names) - 1)
    def y(v):
        return height - pad - v * (height - 2 * pad)
    colours, by_set = line_colours(lines, plt.get_cmap("viridis"))
    parts = []
    for i, (name, marks) in enumerate(zip(names, [ticks(s) for s in scales.values()]
                                          + [metric_ticks(cells, metric)])):
        parts.append(f'<line x1="{x(i):.1f}" y1="{y(0):.1f}" x2="{x(i):.1f}" y2="{y(1):.1f}" class="axis"/>'
                     f'<text x="{x(i):.1f}" y="{height - 12}" class="name">{html.escape(name)}</text>')
        parts += [f'<text x="{x(i) + 4:.1f}" y="{y(v) + 3:.1f}">{html.escape(t)}</text>' for v, t in marks]
    for (cell, ys, _), colour in zip(lines, colours):
        points = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(ys))
        tip = "\n".join([os.path.relpath(cell.runs[0]["folder"], title),
                         *([f"data set {data_set_name(cell.data)}"] if by_set else []),
                         *(f"{k} = {json.dumps(cell.values[k])}" for k in scales),
                         f"{metric} = {cell.value:.4g} ({cell.outcome})"])
        dash = "" if cell.outcome == "completed" else ' stroke-dasharray="5,3"'
        parts.append(f'<polyline points="{points}" stroke="{to_hex(colour)}"{dash}>'
                     f'<title>{html.escape(tip)}</title></polyline>')
    swatches = ", ".join(f"<b style='color:{to_hex(c)}'>{html.escape(n)}</b>" for n, c in (by_set or {}).items())
    sets_text = f" Colour: the data set ({swatches}); the validation sets differ: nothing is ranked across them."
    page = (f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>"
            "<style>body{font:12px sans-serif}svg text{font-size:10px}.name{font-weight:bold;text-anchor:middle}"
            ".axis{stroke:#333}polyline{fill:none;stroke-width:1.5;opacity:.8}svg:hover polyline{opacity:.2}"
            "svg polyline:hover{opacity:1;stroke-width:4;stroke:#d62728}</style>"
            f"<h3>{html.escape(title)}</h3><p>{len(lines)} cells; hover a line to see its cell. Dashed: stopped early."
            f"{sets_text if by_set else ''}</p><svg width='{width}' height='{height}'>{''.join(parts)}</svg>\n")
    atomic_write(path, lambda f: f.write(page))
