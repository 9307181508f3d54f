"""One table over every run folder under a parent: varied hyperparameters, status and metrics, best first.

    python synthesize_results.py --parent_dir experiments/learning_rate [--metric accuracy] [--split val|test] [--all]

Writes PARENT/results.md (GitHub markdown, repetitions as mean ± std, then which searched keys mattered: see
docs/search.md) and PARENT/results.csv (one row per run folder, in the same order), and prints the markdown. Runs
of several tasks, or validated on several data sets, get a table each: their metrics are not comparable.
"""

import argparse
import csv
import io
import json
import os

from tabulate import tabulate

import model.tasks  # noqa: F401  (registers the tasks in core/tasks.py)
from core.rundir.folder import Status
from core.search.asha import rung_reached, schedule_of
from core.search.folders import shown_folders
from core.search.importance import importance_markdown
from core.search.results import (
    budget_line,
    budget_of,
    build_rows,
    data_set_name,
    data_sets,
    data_sets_note,
    gather,
    numbers,
    points_of,
    ranking_metric,
    read_optional,
    runs_by_data_set,
    runs_by_task,
    varied_keys,
)
from core.search.space import axis_scales
from core.tasks import TASKS
from utils import UserError, atomic_write, run_cli


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parent_dir", default="experiments", help="folder searched recursively for runs")
    ap.add_argument("--metric", help="sort by this metric (loss sorts ascending; default: the monitored one)")
    ap.add_argument("--split", default="val", choices=["val", "test"], help="metrics file the rows are ranked by")
    ap.add_argument("--all", action="store_true", help="a search parent: every run folder under it, not only the "
                                                       "cells its hyper_search block names now")
    ap.add_argument("--budget", action="store_true",
                    help="add a line: epochs trained against training every run to num_epochs")
    return ap.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    markdown = synthesize(args.parent_dir, args.metric, args.split, args.budget, args.all)
    print(markdown)
    return 0


def synthesize(parent_dir, metric=None, split="val", budget=False, every=False):
    """Write results.md and results.csv in `parent_dir`; return the markdown table."""
    if not os.path.isdir(parent_dir):
        raise UserError(f"--parent_dir {parent_dir}: not a folder")
    folders, left_out = shown_folders(parent_dir, every)
    runs = gather(parent_dir, split, folders)
    if not runs:
        raise UserError(f"--parent_dir {parent_dir}: no run folders (folders with a params.json) found")
    parent = read_optional(os.path.join(parent_dir, "params.json"), []) or {}
    schedule = schedule_of(parent, parent_dir)
    by_task, sets = runs_by_task(runs), data_sets(runs)
    sections, ranked = [], []
    for task, task_runs in by_task.items():
        # --metric ranks the tasks that report it; each other task ranks by its monitored metric
        own = metric if len(by_task) == 1 or (task in TASKS and metric in TASKS[task].metrics) else None
        for data, group in runs_by_data_set(task_runs).items():
            markdown, order = task_markdown(group, own, parent, parent_dir, split, schedule)
            heading = ", ".join(([task] if len(by_task) > 1 else [])
                                + ([f"data set {data_set_name(data)}"] if len(sets) > 1 else []))
            sections.append(f"## {heading}\n\n{markdown}" if heading else markdown)
            ranked += order
    markdown = "\n\n".join(([data_sets_note(sets)] if len(sets) > 1 else []) + sections)
    if budget:
        markdown += "\n\n" + budget_line(*budget_of(runs))
    if left_out:
        markdown += "\n\n" + left_out
    csv = csv_text(ranked, varied_keys(runs), with_data=len(sets) > 1)
    atomic_write(os.path.join(parent_dir, "results.md"), lambda f: f.write(markdown + "\n"))
    atomic_write(os.path.join(parent_dir, "results.csv"), lambda f: f.write(csv), mode="w")
    return markdown


def task_markdown(runs, metric, parent, parent_dir, split, schedule):
    """(the table of runs of one task and one data set, ranked by `metric` when the task reports it, else by its
    monitored one, then which searched keys mattered; the runs in the table's order)."""
    metric = ranking_metric(runs, metric)
    keys, metrics, rows = build_rows(runs, metric)
    markdown = markdown_table(rows, keys, metrics, parent_dir, split, schedule)
    cells = points_of(runs, keys, metric, schedule, read_histories=schedule is not None)  # rung values only
    mattered = importance_markdown(cells, axis_scales(parent, keys, runs), metric, schedule, split, parent_dir)
    return markdown + ("\n\n" + mattered if mattered else ""), [r for row in rows for r in row["runs"]]


def cell_text(value):
    return value if isinstance(value, str) else json.dumps(value)


def stat_text(mean, std, n):
    if mean is None:
        return ""
    return f"{mean:.4f}" if n <= 1 else f"{mean:.4f} ± {std:.4f}"


def markdown_table(rows, keys, metrics, parent_dir, split, schedule=None):
    """One line per row; a successive-halving search adds the epochs each cell trained and the rung it reached."""
    with_n = any(r["n"] > 1 for r in rows)
    with_epochs = schedule is not None or any(r["status"] in (Status.PAUSED, Status.PRUNED) for r in rows)
    prefix = {"best": split, "test": "test"}
    headers = ["folder", *keys, "status"] + (["n"] if with_n else []) + (["epochs"] if with_epochs else [])
    headers += (["rung"] if schedule else []) + [f"{prefix[s]}_{m}" for s, m in metrics]
    if any(r["code"] for r in rows):
        headers.append("code")
    if any(r["note"] for r in rows):
        headers.append("note")
    table = []
    for r in rows:
        values = ["" if k in r["unknown"] else cell_text(r["values"][k]) for k in keys]
        line = [os.path.relpath(r["folder"], parent_dir), *values, r["status"]]
        line += [r["n"]] if with_n else []
        line += [r["epochs"]] if with_epochs else []
        line += [rung_reached(schedule, r["epochs"])] if schedule else []
        line += [stat_text(*r["stats"][f"{s}_{m}"]) for s, m in metrics]
        line += [r["code"]] if "code" in headers else []
        line += [r["note"]] if "note" in headers else []
        table.append(line)
    return tabulate(table, headers=headers, tablefmt="github", disable_numparse=True)


def csv_text(runs, keys, with_data=False):
    """One line per run folder, in the order given (results.md's); with_data adds the data set each validated on."""
    buf = io.StringIO()
    names = sorted({f"{src}_{k}" for r in runs for src in ("best", "test") for k in numbers(r[src])})
    writer = csv.writer(buf)
    data = ["data_set"] if with_data else []
    writer.writerow(["folder", *data, *keys, "status", "epoch", *names, "code", "note"])
    for r in runs:
        values = ["" if k not in r["params"] else json.dumps(r["params"][k])
                  if not isinstance(r["params"][k], (int, float, str)) else r["params"][k] for k in keys]
        flat = {f"{src}_{k}": v for src in ("best", "test") for k, v in numbers(r[src]).items()}
        data = [data_set_name(r["data"])] if with_data else []
        writer.writerow([r["folder"], *data, *values, r["status"], r["epoch"], *(flat.get(n, "") for n in names),
                         r["code"], r["note"]])
    return buf.getvalue()


if __name__ == "__main__":
    run_cli(main)
