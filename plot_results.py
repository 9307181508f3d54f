"""Figures over every run folder under a parent, written into it.

    python plot_results.py --parent_dir experiments/learning_rate [--metric accuracy] [--top_k 8] [--all]

history_plots.png  train (dashed) and valid (solid) curves of the loss, the ranking metric and the task's next
                   metric: the top-k cells in colour, the rest grey (repetitions: mean line, min-max band). Below,
                   the metric against each searched key, on the axis its search space implies, each cell marked by
                   how it ended (completed, pruned, failed).
parallel.png       one axis per searched key plus the metric, one line per cell coloured by the metric;
                   parallel.html is the same as one self-contained file: hover a line to see its cell.
rungs.png          successive halving only: every cell's metric against epochs, the rungs and each cut-off.

Cells validated on different data sets are never ranked against each other: the top k of each set are in colour,
and parallel coordinates colour the lines by data set.
"""

import argparse
import os

import model.tasks  # noqa: F401  (registers the tasks in core/tasks.py)
from core.search.asha import schedule_of
from core.search.figures import history_figure, rungs_figure
from core.search.folders import shown_folders
from core.search.parallel import parallel_figure, parallel_html
from core.search.results import (
    data_sets,
    data_sets_note,
    gather,
    points_of,
    ranking_metric,
    read_optional,
    task_of,
    varied_keys,
)
from core.search.space import axis_scales
from core.tasks import TASKS
from utils import UserError, run_cli

CURVES = 3


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parent_dir", default="experiments")
    ap.add_argument("--metric", help="ranks the cells (loss ranks ascending; default: the monitored one)")
    ap.add_argument("--top_k", type=int, default=8, help="cells drawn in colour with a legend entry")
    ap.add_argument("--all", action="store_true", help="a search parent: every run folder under it, not only the "
                                                       "cells its hyper_search block names now")
    return ap.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    for path in plot(args.parent_dir, args.metric, args.top_k, args.all):
        print(f"wrote {path}")
    return 0


def plot(parent_dir, metric=None, top_k=8, every=False):
    """Write the figures; return their paths, history_plots.png first."""
    if not os.path.isdir(parent_dir):
        raise UserError(f"--parent_dir {parent_dir}: not a folder")
    folders, left_out = shown_folders(parent_dir, every)
    runs = gather(parent_dir, folders=folders)
    if left_out:
        print(left_out)
    parent = read_optional(os.path.join(parent_dir, "params.json"), []) or {}
    schedule = schedule_of(parent, parent_dir)
    metric = ranking_metric(runs, metric)
    keys = varied_keys(runs)
    cells = points_of(runs, keys, metric, schedule)
    for r in runs:
        if r["note"]:
            print(f"{r['folder']}: {r['note']}")
    sets = data_sets(runs)
    if len(sets) > 1:
        print(data_sets_note(sets))
    if not any(c.histories and all(c.histories) for c in cells):
        raise UserError(f"--parent_dir {parent_dir}: no run with a history.json yet")
    scales = axis_scales(parent, keys, runs)
    # a parent of several tasks: each task's metrics, each curve drawn for the runs that report it
    names = dict.fromkeys(m for t in TASKS.values() if task_of(runs) in (None, t.name) for m in t.metrics)
    reported = [m for m in names if any(m in row["val"] for c in cells for h in c.histories for row in h)]
    curves = sorted(reported, key=lambda m: (m != "loss", m != metric))[:CURVES]  # one row: loss, metric, the next
    out = [os.path.join(parent_dir, name) for name in ("history_plots.png", "parallel.png", "parallel.html",
                                                       "rungs.png")]
    history_figure(out[0], parent_dir, cells, scales, curves, metric, schedule, top_k)
    if keys:
        parallel_figure(out[1], parent_dir, cells, scales, metric)
        parallel_html(out[2], parent_dir, cells, scales, metric)
    if schedule:
        rungs_figure(out[3], parent_dir, runs, cells, schedule)
    return [out[0], *(out[1:3] if keys else []), *(out[3:] if schedule else [])]


if __name__ == "__main__":
    run_cli(main)
