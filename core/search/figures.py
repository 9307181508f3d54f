"""The figures plot_results.py writes into a search parent: history_plots.png and rungs.png (parallel.png is in
parallel.py). Every cell's mark says how it ended; legends sit beside the panels, never on them.

Grey cells are drawn as one LineCollection per panel rather than a line each: a 2,000-cell parent still draws in
seconds.
"""

import json
import math

from matplotlib.collections import LineCollection
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter

from core.rundir.plots import epoch_axis, margins, plt, save_figure
from core.search.results import Point, best_of_each_data_set, budget_line, budget_of, data_set_name

PANEL_W, PANEL_H, LEGEND_W, COLS = 4.0, 3.0, 3.4, 3
MARKERS = {"completed": "o", "pruned": "v", "paused": "s", "running": "D", "failed": "X"}
COLOURS = {"completed": "C0", "pruned": "C1", "paused": "C2", "running": "C4", "failed": "C3"}
MEANING = {"completed": "completed: its best valid value", "pruned": "pruned: its value at its last rung",
           "paused": "paused: its value at its last rung", "running": "running or interrupted: best so far",
           "failed": "failed: no value (marked at the bottom)"}


def label(values):
    return ", ".join(f"{k.split('.')[-1]}={json.dumps(v)}" for k, v in values.items()) or "run"


def cell_label(cell, keys, several_sets):
    """A legend entry: the cell's searched values, and its data set where the sets differ (data_dir then goes)."""
    if not several_sets:
        return label({k: cell.values[k] for k in keys})
    return f"[{data_set_name(cell.data)}] " + label({k: cell.values[k] for k in keys if k != "data_dir"})


def curve(histories, source, name):
    """Epochs, and the mean, min and max over repetitions epoch by epoch, up to the shortest history."""
    n = min(len(h) for h in histories)
    series = [[h[i][source].get(name, float("nan")) for i in range(n)] for h in histories]
    cols = list(zip(*series))
    return list(range(1, n + 1)), [sum(c) / len(c) for c in cols], [min(c) for c in cols], [max(c) for c in cols]


def rung_index(schedule, epochs):
    """1 for the first rung reached, len(rungs) for the last; 0 before the first."""
    return sum(r <= epochs for r in schedule.rungs)


def rung_colours(schedule):
    """One colour per rung, dark (first) to light (last)."""
    cmap = plt.get_cmap("viridis")
    n = len(schedule.rungs)
    return [cmap(0.15 + 0.75 * k / max(1, n - 1)) for k in range(n)]


def point_colour(cell, schedule, colours):
    if schedule and cell.outcome != "failed":
        return colours[max(1, rung_index(schedule, cell.epochs)) - 1]
    return COLOURS[cell.outcome]


def panel_grid(n_curves, n_keys):
    """(figure, curve panels, key panels): curves in rows of three, then the searched keys in rows of three, and
    a column on the right for the legend."""
    cols = max(1, min(COLS, max(n_curves, n_keys)))
    rows = [-(-n // cols) for n in (n_curves, n_keys)]
    fig, axes = plt.subplots(sum(rows), cols, figsize=(PANEL_W * cols + LEGEND_W, PANEL_H * sum(rows) + 0.8),
                             squeeze=False)
    flat = list(axes.flat)
    curve_axes, key_axes = flat[:n_curves], flat[rows[0] * cols:rows[0] * cols + n_keys]
    for ax in flat:
        if ax not in curve_axes and ax not in key_axes:
            ax.axis("off")
    margins(fig, left=0.7, bottom=0.6, right=LEGEND_W, top=0.8, wspace=0.3)
    fig.subplots_adjust(hspace=0.5)
    return fig, curve_axes, key_axes


def history_figure(path, title, cells: list[Point], scales, curves, metric, schedule, top_k):
    """history_plots.png: each metric's curves (the top-k cells in colour, of each data set where the validation
    sets differ; the rest grey), then the metric against each searched key."""
    fig, curve_axes, key_axes = panel_grid(len(curves), len(scales))
    drawn = [c for c in cells if c.histories and all(c.histories)]
    for ax, name in zip(curve_axes, curves):
        draw_curves(ax, drawn, name, top_k)
    for ax, (key, scale) in zip(key_axes, scales.items()):
        draw_key(ax, cells, key, scale, metric, schedule)
    sets = sorted({data_set_name(c.data) for c in cells})
    top = best_of_each_data_set(drawn, top_k)
    handles = [Line2D([], [], color=f"C{rank % 10}", lw=1.6, label=cell_label(c, scales, len(sets) > 1))
               for rank, c in enumerate(top)]
    if len(drawn) > len(top):
        handles.append(Line2D([], [], color="0.75", lw=0.7, label=f"{len(drawn) - len(top)} other cells (valid only)"))
    handles += outcome_handles(cells, schedule) if scales else []
    fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(1 - (LEGEND_W - 0.15) / fig.get_figwidth(),
               1 - 0.8 / fig.get_figheight()), fontsize=7, frameon=False)
    several = (f"\n{len(sets)} validation sets, each ranked on its own and nothing across them: in colour, the top "
               f"{top_k} of each")
    fig.suptitle(title + (several if len(sets) > 1 else ""), fontsize=10)
    save_figure(fig, path)


def draw_curves(ax, cells, name, top_k):
    """Valid (solid) and train (dashed) curves of the top_k cells of each data set in colour, the others grey."""
    top = {id(c): rank for rank, c in enumerate(best_of_each_data_set(cells, top_k))}
    grey, ends = [], []
    for cell in cells:
        x, mean, lo, hi = curve(cell.histories, "val", name)
        if id(cell) not in top:
            grey.append(list(zip(x, mean)))
            if cell.outcome != "completed" and x:
                ends.append((cell.outcome, x[-1], mean[-1]))
            continue
        colour = f"C{top[id(cell)] % 10}"
        ax.plot(x, mean, "-", color=colour, lw=1.6)
        if len(cell.runs) > 1:
            ax.fill_between(x, lo, hi, color=colour, alpha=0.15)
        tx, tmean, _, _ = curve(cell.histories, "train", name)
        ax.plot(tx, tmean, "--", color=colour, lw=1.2)
        if cell.outcome != "completed" and x:
            ax.plot(x[-1], mean[-1], MARKERS[cell.outcome], color=colour, ms=6, mec="black", mew=0.5)
    if grey:
        ax.add_collection(LineCollection(grey, colors="0.75", linewidths=0.7, zorder=0))
        ax.autoscale_view()
    for outcome in {o for o, _, _ in ends}:
        pts = [(x, y) for o, x, y in ends if o == outcome]
        ax.scatter(*zip(*pts), marker=MARKERS[outcome], s=14, color="0.6", zorder=1)
    ax.set_title(f"{name} (solid: valid, dashed: train)", fontsize=9)
    epoch_axis(ax)
    ax.grid(alpha=0.3)


def draw_key(ax, cells, key, scale, metric, schedule):
    """The metric of every cell against `key`, marked by how the cell ended and coloured by the rung it reached;
    failed cells (no value) are marked at the bottom, where in the space they failed."""
    groups, colours = {}, rung_colours(schedule) if schedule else []
    for cell in cells:
        x = axis_value(scale, cell.values.get(key))
        if x is not None:
            groups.setdefault(cell.outcome, []).append((x, cell.value, point_colour(cell, schedule, colours)))
    for outcome, pts in groups.items():
        if outcome == "failed" or all(y is None for _, y, _ in pts):
            failed = [(x, c) for x, y, c in pts]
            ax.scatter([x for x, _ in failed], [0.03] * len(failed), marker="X", s=30, color=COLOURS["failed"],
                       transform=ax.get_xaxis_transform(), clip_on=False, zorder=3)
            continue
        pts = [p for p in pts if p[1] is not None]
        ax.scatter([x for x, _, _ in pts], [y for _, y, _ in pts], marker=MARKERS[outcome], s=30,
                   c=[c for _, _, c in pts], edgecolors="black", linewidths=0.3, zorder=2)
    apply_scale(ax, scale)
    ax.set_xlabel(key)
    ax.set_ylabel(f"valid {metric}")
    ax.grid(alpha=0.3)


def axis_value(scale, value):
    """Where `value` goes on the panel's x axis: the value itself, or its category's index."""
    if scale.kind == "category":
        position = scale.position(value)
        return None if position is None else round(position * max(1, len(scale.categories) - 1))
    return value if scale.position(value) is not None else None


def apply_scale(ax, scale):
    if scale.kind == "category":
        names = [json.loads(c) for c in scale.categories]
        labels = [n if isinstance(n, str) else json.dumps(n) for n in names]
        ax.set_xticks(range(len(labels)), labels, rotation=30 if sum(map(len, labels)) > 30 else 0, fontsize=7,
                      ha="right" if sum(map(len, labels)) > 30 else "center")
        ax.set_xlim(-0.5, len(labels) - 0.5)
        return
    pad = (scale.high - scale.low) * 0.05 or abs(scale.low) * 0.1 or 0.5
    if scale.kind == "log":
        ax.set_xscale("log")
        decades = math.log10(scale.high / scale.low)
        ax.xaxis.set_major_locator(FixedLocator(scale.spaced_marks()) if scale.marks else
                                   LogLocator(subs=scale.log_subs()))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels are what overprinted each other
        ax.set_xlim(scale.low / 10 ** (decades * 0.05 or 0.1), scale.high * 10 ** (decades * 0.05 or 0.1))
    else:
        ax.set_xlim(scale.low - pad, scale.high + pad)
        if scale.marks:
            ax.set_xticks(scale.spaced_marks(), [f"{v:g}" for v in scale.spaced_marks()])


def outcome_handles(cells, schedule):
    present = [o for o in MARKERS if any(c.outcome == o for c in cells)]
    handles = [Line2D([], [], ls="", marker=MARKERS[o], color=COLOURS[o] if not schedule or o == "failed" else "0.4",
                      label=MEANING[o]) for o in present]
    if schedule:
        handles += [Line2D([], [], ls="", marker="o", color=colour, label=f"reached rung {k + 1} (epoch {r})")
                    for k, (r, colour) in enumerate(zip(schedule.rungs, rung_colours(schedule)))]
    return handles


def rungs_figure(path, title, runs, cells, schedule):
    """rungs.png: every cell's valid metric against epochs, the rungs, and the value a cell had to beat at each
    rung to be among the top 1/reduction_factor (the promotion cut-off once every cell reported)."""
    metric, eta = schedule.metric, schedule.reduction_factor
    fig, ax = plt.subplots(figsize=(8, 5))
    curves = []
    for cell in cells:
        for history in cell.histories:
            values = {row["epoch"]: row["val"].get(metric) for row in history}
            curves.append((cell.outcome, {e: v for e, v in values.items() if v is not None}))
    lines = [(o, sorted(v.items())) for o, v in curves if v]
    done = [points for o, points in lines if o == "completed"]
    stopped = [(o, points) for o, points in lines if o != "completed"]
    ax.add_collection(LineCollection([points for _, points in stopped], colors="0.7", linewidths=0.8))
    ax.add_collection(LineCollection(done, colors=[f"C{i % 10}" for i in range(len(done))], linewidths=1.5))
    if done:
        ax.scatter(*zip(*[p for points in done for p in points]), s=6, color="0.3", zorder=2)
    for outcome in {o for o, _ in stopped}:
        ends = [points[-1] for o, points in stopped if o == outcome]
        ax.scatter(*zip(*ends), marker=MARKERS[outcome], s=22, color=COLOURS[outcome], zorder=3)
    ax.autoscale_view()
    for rung in schedule.rungs:
        ax.axvline(rung, color="0.4", ls=":", lw=1)
        reached = sorted((v[rung] for _, v in curves if v.get(rung) is not None), key=schedule.better)
        keep = len(reached) // eta
        if rung != schedule.rungs[-1] and keep:
            ax.plot([rung - 0.3, rung + 0.3], [reached[keep - 1]] * 2, color="red", lw=2.5)
    handles = [Line2D([], [], color="red", lw=2.5, label=f"cut-off: top 1/{eta} of the cells at the rung"),
               Line2D([], [], color="C0", lw=1.5, label="completed (one colour each)")]
    handles += [Line2D([], [], color="0.7", lw=0.8, marker=MARKERS[o], mfc=COLOURS[o], mec=COLOURS[o],
                       label=f"{o}: stopped there") for o in ("pruned", "paused", "failed", "running")
                if any(outcome == o for outcome, _ in curves)]
    epoch_axis(ax)
    ax.set_xticks(schedule.rungs)  # the rungs are the epochs that matter here
    ax.set_ylabel(f"valid {metric}")
    ax.grid(alpha=0.3)
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    ax.set_title(f"{title}: successive halving, rungs at {schedule.rungs}\n{budget_line(*budget_of(runs))}",
                 fontsize=9)
    save_figure(fig, path)
