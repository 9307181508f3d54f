"""History plots over every run folder under a parent: PARENT/history_plots.png.

    python plot_results.py --parent_dir experiments/learning_rate [--metric accuracy] [--top_k 8]

Top row: train (dashed) and valid (solid) curves per metric for the top-k cells by best valid metric, labelled by
their varied values; the other cells are thin grey lines. Repetitions are a mean line with a min-max band.
Bottom row: best valid metric against each varied hyperparameter.
A successive-halving search also gets PARENT/rungs.png: the schedule's metric against epochs for every cell, with
the rungs and each rung's promotion cut-off.
"""

import argparse
import json
import os

from core.rundir.folder import Status
from core.rundir.plots import plt, save_figure
from core.search.asha import schedule_of
from core.search.results import (
    budget_line,
    budget_of,
    gather,
    group_repetitions,
    load_history,
    minimized,
    ranking_metric,
    read_optional,
    summarize,
    varied_keys,
)
from model.tasks import all_metrics
from utils import UserError, run_cli


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parent_dir", default="experiments")
    ap.add_argument("--metric", help="ranks the cells (loss ranks ascending; default: the monitored one)")
    ap.add_argument("--top_k", type=int, default=8, help="cells drawn in colour with a legend entry")
    return ap.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    print(f"wrote {plot(args.parent_dir, args.metric, args.top_k)}")
    return 0


def curve(histories, source, name):
    """Mean, min and max over repetitions, epoch by epoch, up to the shortest history."""
    n = min(len(h) for h in histories)
    series = [[h[i][source].get(name, float("nan")) for i in range(n)] for h in histories]
    cols = list(zip(*series))
    return list(range(1, n + 1)), [sum(c) / len(c) for c in cols], [min(c) for c in cols], [max(c) for c in cols]


def label(values):
    return ", ".join(f"{k.split('.')[-1]}={json.dumps(v)}" for k, v in values.items()) or "run"


def best_value(group, metric):
    return summarize(r["best"].get(metric) for r in group)[0]


def plot(parent_dir, metric=None, top_k=8):
    if not os.path.isdir(parent_dir):
        raise UserError(f"--parent_dir {parent_dir}: not a folder")
    runs = gather(parent_dir)
    keys = varied_keys(runs)
    groups = [g for g in group_repetitions(runs, keys) if all(load_history(r["folder"]) for r in g)]
    if not groups:
        raise UserError(f"--parent_dir {parent_dir}: no run with a history.json yet")
    metric = ranking_metric(runs, metric)
    curves = [m for m in all_metrics() if any(m in row["val"] for g in groups for r in g
                                              for row in load_history(r["folder"]))]
    sign = 1 if minimized(metric) else -1
    groups.sort(key=lambda g: (best_value(g, metric) is None, sign * (best_value(g, metric) or 0)))
    ncols = max(len(curves), len(keys), 1)
    fig, axes = plt.subplots(2 if keys else 1, ncols, figsize=(5 * ncols, 4 * (2 if keys else 1)), squeeze=False)
    colours = plt.get_cmap("tab10")
    for ax, name in zip(axes[0], curves):
        for rank, group in enumerate(groups):
            histories = [load_history(r["folder"]) for r in group]
            top = rank < top_k
            style = {"color": colours(rank % 10), "lw": 1.6} if top else {"color": "0.75", "lw": 0.7}
            for source, dash in (("val", "-"), ("train", "--")):
                x, mean, lo, hi = curve(histories, source, name)
                lab = label({k: group[0]["params"].get(k) for k in keys}) if top and source == "val" else None
                ax.plot(x, mean, dash, label=lab, **style)
                if len(group) > 1 and top:
                    ax.fill_between(x, lo, hi, color=style["color"], alpha=0.15)
        ax.set_title(f"{name} (solid: valid, dashed: train)")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    if len(groups) > top_k:
        axes[0][0].plot([], [], color="0.75", label=f"{len(groups) - top_k} other cells")
    axes[0][0].legend(fontsize=7)
    for ax in axes[0][len(curves):]:
        ax.axis("off")
    if keys:
        for ax, key in zip(axes[1], keys):
            metric_vs_key(ax, runs, key, metric)
        for ax in axes[1][len(keys):]:
            ax.axis("off")
    fig.suptitle(parent_dir)
    path = os.path.join(parent_dir, "history_plots.png")
    save_figure(fig, path)
    schedule = schedule_of(read_optional(os.path.join(parent_dir, "params.json"), []), parent_dir)
    if schedule:
        plot_rungs(parent_dir, runs, schedule)
    return path


def plot_rungs(parent_dir, runs, schedule):
    """PARENT/rungs.png: every cell's val metric against epochs, the rungs, and the value a cell had to beat at
    each rung to be among the top 1/reduction_factor (the promotion cut-off once every cell reported)."""
    metric, eta = schedule.metric, schedule.reduction_factor
    fig, ax = plt.subplots(figsize=(8, 5))
    colours = plt.get_cmap("tab10")
    curves = [(r, {row["epoch"]: row["val"].get(metric) for row in load_history(r["folder"])}) for r in runs]
    finished = [c for c in curves if c[0]["status"] == Status.COMPLETED]
    for i, (run, values) in enumerate(curves):
        epochs = sorted(e for e in values if values[e] is not None)
        top = run["status"] == Status.COMPLETED
        rank = finished.index((run, values)) if top else 0
        style = {"color": colours(rank % 10), "lw": 1.5} if top else {"color": "0.7", "lw": 0.8}
        ax.plot(epochs, [values[e] for e in epochs], marker="o", ms=2.5, **style,
                label=os.path.basename(run["folder"]) if top and i < 40 else None)
    for rung in schedule.rungs:
        ax.axvline(rung, color="0.4", ls=":", lw=1)
        reached = sorted((v[rung] for _, v in curves if v.get(rung) is not None), key=schedule.better)
        keep = len(reached) // eta
        if rung != schedule.rungs[-1] and keep:
            ax.plot([rung - 0.3, rung + 0.3], [reached[keep - 1]] * 2, color="red", lw=2.5)
    ax.plot([], [], color="red", lw=2.5, label=f"cut-off: top 1/{eta} of the cells at the rung")
    ax.plot([], [], color="0.7", lw=0.8, label="paused / pruned")
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"valid {metric}")
    ax.set_xticks(schedule.rungs)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(f"{parent_dir}: successive halving, rungs at {schedule.rungs}\n{budget_line(*budget_of(runs))}",
                 fontsize=9)
    save_figure(fig, os.path.join(parent_dir, "rungs.png"))


def metric_vs_key(ax, runs, key, metric):
    """Best valid `metric` of every run against the value of `key` (categorical axis for non-numbers)."""
    pts = [(r["params"].get(key), r["best"][metric]) for r in runs if isinstance(r["best"].get(metric), (int, float))]
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v, _ in pts)
    if numeric:
        ax.scatter([v for v, _ in pts], [m for _, m in pts])
        values = [v for v, _ in pts]
        if values and min(values) > 0 and max(values) / min(values) >= 10:
            ax.set_xscale("log")
    else:
        cats = sorted({json.dumps(v) for v, _ in pts})
        ax.scatter([cats.index(json.dumps(v)) for v, _ in pts], [m for _, m in pts])
        ax.set_xticks(range(len(cats)), cats, rotation=30, fontsize=7)
    ax.set_xlabel(key)
    ax.set_ylabel(f"best valid {metric}")
    ax.grid(alpha=0.3)


if __name__ == "__main__":
    run_cli(main)
