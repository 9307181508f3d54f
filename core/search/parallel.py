"""parallel.png and parallel.html: one vertical axis per searched key plus the metric, one line per cell.

Each axis is scaled as its search space says (space.py): a log axis for a loguniform key, categories in their
listed order. Lines are coloured by the metric, best at the top of its axis and bright; the best cells are drawn
last, on top of the others. Cells stopped early (pruned, paused, running) are dashed: their value is from fewer
epochs. The HTML file is the same figure as one self-contained SVG: hovering a line names its cell.
"""

import html
import json
import math
import os

from matplotlib.cm import ScalarMappable
from matplotlib.collections import LineCollection
from matplotlib.colors import Normalize, to_hex

from core.rundir.plots import plt, save_figure
from core.search.results import minimized
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
    values = [scale.low + i * (scale.high - scale.low) / (N_TICKS - 1) for i in range(N_TICKS)]
    return [(scale.position(v), f"{v:.3g}") for v in values]


def metric_ticks(cells, metric):
    values = [c.value for c in cells if c.value is not None]
    if not values:
        return []
    low, high = min(values), max(values)
    flip = minimized(metric)
    out = []
    for i in range(N_TICKS):
        v = low + i * (high - low) / (N_TICKS - 1)
        position = i / (N_TICKS - 1)
        out.append((1 - position if flip else position, f"{v:.3g}"))
    return out


def parallel_figure(path, title, cells, scales, metric):
    """Write parallel.png; return how many lines it drew (one per cell with a value)."""
    lines = polylines(cells, scales, metric)
    names = [*scales, f"valid {metric}"]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(names) + 1.5), 4.8))
    segments = [list(enumerate(ys)) for _, ys, _ in lines]
    cmap = plt.get_cmap("viridis")
    completed = sum(c.outcome == "completed" for c, _, _ in lines)
    best = len(lines) - min(HIGHLIGHT, completed)
    collection = LineCollection(segments, colors=[cmap(g) for _, _, g in lines],
                                linewidths=[2.4 if i >= best else 1.0 for i in range(len(lines))],
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
    if values:
        bar = fig.colorbar(ScalarMappable(Normalize(min(values), max(values)),
                                          cmap=cmap.reversed() if minimized(metric) else cmap), ax=ax, pad=0.02)
        bar.set_label(f"valid {metric}")
    left_out = len(cells) - len(lines)
    stopped = "; dashed: stopped early" if completed < len(lines) else ""
    missing = f"; {left_out} without a value not drawn" if left_out else ""
    ax.set_title(f"{title}\n{len(lines)} cells, the best {min(HIGHLIGHT, completed)} completed thick{stopped}{missing}",
                 fontsize=9)
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
    cmap = plt.get_cmap("viridis")
    parts = []
    for i, (name, marks) in enumerate(zip(names, [ticks(s) for s in scales.values()]
                                          + [metric_ticks(cells, metric)])):
        parts.append(f'<line x1="{x(i):.1f}" y1="{y(0):.1f}" x2="{x(i):.1f}" y2="{y(1):.1f}" class="axis"/>'
                     f'<text x="{x(i):.1f}" y="{height - 12}" class="name">{html.escape(name)}</text>')
        parts += [f'<text x="{x(i) + 4:.1f}" y="{y(v) + 3:.1f}">{html.escape(t)}</text>' for v, t in marks]
    for cell, ys, g in lines:
        points = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(ys))
        tip = "\n".join([os.path.relpath(cell.runs[0]["folder"], title),
                         *(f"{k} = {json.dumps(cell.values[k])}" for k in scales),
                         f"{metric} = {cell.value:.4g} ({cell.outcome})"])
        dash = "" if cell.outcome == "completed" else ' stroke-dasharray="5,3"'
        parts.append(f'<polyline points="{points}" stroke="{to_hex(cmap(g))}"{dash}>'
                     f'<title>{html.escape(tip)}</title></polyline>')
    page = (f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>"
            "<style>body{font:12px sans-serif}svg text{font-size:10px}.name{font-weight:bold;text-anchor:middle}"
            ".axis{stroke:#333}polyline{fill:none;stroke-width:1.5;opacity:.8}svg:hover polyline{opacity:.2}"
            "svg polyline:hover{opacity:1;stroke-width:4;stroke:#d62728}</style>"
            f"<h3>{html.escape(title)}</h3><p>{len(lines)} cells; hover a line to see its cell. Dashed: stopped early."
            f"</p><svg width='{width}' height='{height}'>{''.join(parts)}</svg>\n")
    atomic_write(path, lambda f: f.write(page))
