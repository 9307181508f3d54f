"""Gather run folders under a parent into rows: varied hyperparameters, status and metrics.

Only JSON files are read (never logs, never torch), so thousands of cells take well under a second. A missing or
corrupt file is reported on its row, never raised.
"""

import functools
import json
import math
import os
import statistics
from dataclasses import dataclass, field

from core.config import KEYS, hyperparams, resolve
from core.paths import ROOT, repo_path
from core.rundir.folder import EFFECTIVE, STATUS, Status, load_history, metrics_file
from core.rundir.record import provenance, trained_on
from core.search.cells import NOT_STARTED
from core.tasks import load, registered
from utils import UserError, read_json


def find_runs(parent):
    """Every folder under `parent` (itself included) holding a params.json that is not a search parent's."""
    runs = []
    for folder, dirs, files in os.walk(parent):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        if "params.json" in files:
            runs.append(folder)
    return runs


def resolved(params, folder):
    """Flattened params with defaults filled in, so a key left out and the same key set to its default agree."""
    try:
        return hyperparams(resolve(params, folder))
    except UserError:  # a params.json train.py would reject: show what it says
        return hyperparams(params)


def read_optional(path, notes):
    """JSON content, or None when absent; a corrupt file adds a note instead of raising."""
    if not os.path.exists(path):
        return None
    try:
        data = read_json(path)
        if not isinstance(data, dict):
            raise UserError(f"{path}: not a JSON object")
        return data
    except UserError:
        notes.append(f"unreadable {os.path.basename(path)}")
        return None


def load_run(folder, split="val"):
    notes = []
    params = read_optional(os.path.join(folder, "params.json"), notes)
    if params is not None and "hyper_search" in params:
        return None  # a search parent: its cells are rows, it is not
    status = read_optional(os.path.join(folder, STATUS), notes) or {}
    best = read_optional(os.path.join(folder, metrics_file(split, "best")), notes)
    test = read_optional(os.path.join(folder, metrics_file("test", "best")), notes) if split != "test" else None
    state = status.get("status") or (NOT_STARTED if best is None else "unknown")
    if params is None:  # unreadable or gone: what train.py recorded it ran with, else blanks, never the defaults
        ran = read_optional(os.path.join(folder, EFFECTIVE), [])
        flat = hyperparams(ran) if ran else {}
    else:
        flat = resolved(params, folder)
    return {"folder": folder, "params": flat, "status": state, "epoch": status.get("epoch"),
            "best": best or {}, "test": test or {}, "note": "; ".join(notes), "code": provenance(folder),
            "data": data_set_of(folder, flat)}


def data_set_of(folder, params):
    """The data set a run validated on, one name per folder whatever the spelling (`./data/x`, `data/x` and its
    absolute path agree): record.json's (what train.py used, a --data_dir included), else the params' data_dir;
    None when neither says (not started with no data_dir, or its params unreadable). Relative to the repository
    when inside it. folder None: the params' alone."""
    path = (trained_on(folder) if folder else None) or params.get("data_dir")
    if not isinstance(path, str) or not path:
        return None
    real = os.path.realpath(repo_path(path))
    inside = os.path.relpath(real, os.path.realpath(ROOT))
    return real if inside == os.pardir or inside.startswith(os.pardir + os.sep) else inside


def gather(parent, split="val", folders=None):
    """The runs of `folders` (default: every run folder under `parent`)."""
    folders = find_runs(parent) if folders is None else folders
    runs = [r for r in (load_run(f, split) for f in folders) if r is not None]
    known = data_sets(runs)
    if len(known) == 1:  # a run that names no set (not started, params unreadable) is taken to share the only one
        for r in runs:
            r["data"] = known[0]
    return runs


def data_sets(runs):
    """The data sets the runs validated on, sorted. Metrics on different validation sets are not comparable: with
    more than one, every table and figure ranks each set's runs on their own."""
    return sorted({r["data"] for r in runs if r["data"]})


def runs_by_data_set(runs):
    """{data set: its runs}, in data_sets' order; runs that name none (None) last."""
    out = {}
    for r in sorted(runs, key=lambda r: (r["data"] is None, r["data"] or "")):
        out.setdefault(r["data"], []).append(r)
    return out


def data_set_name(data):
    return data or "data set not recorded"


def data_sets_note(sets):
    """What results.md, the figures and stdout say when runs validated on several sets."""
    return (f"The validation sets differ (data_dir: {len(sets)} data sets, {', '.join(sets)}): each data set is "
            f"ranked on its own, best first, and nothing is ranked across them.")


def task_of(runs):
    """The task the runs train, or None when they train several (then a metric's direction is the one all tasks
    that report it agree on)."""
    tasks = set(runs_by_task(runs)) or {KEYS["task"].default}
    return tasks.pop() if len(tasks) == 1 else None


def runs_by_task(runs):
    """{task: its runs}: metric names mean different things in different tasks, so each gets its own table."""
    out = {}
    for r in runs:
        out.setdefault(r["params"].get("task", KEYS["task"].default), []).append(r)
    return out


def ranking_metric(runs, metric=None):
    """`metric`, or the metric the runs monitor (their early_stopping.monitor_metric: accuracy, miou, ...)."""
    monitored = [r["params"].get("early_stopping.monitor_metric") for r in runs]
    return metric or next((m for m in monitored if m), "accuracy")


def varied_keys(runs):
    """Hyperparameters that differ between runs (the table's columns), in first-seen order; seed excluded, and
    data_dir where every run validated on one set (`data/x` and `./data/x` differ as text only). A run whose params
    are unreadable (blank) differs from the others in the keys they set away from their task's defaults, the values
    it may have had; not in every key, which would make every key a column."""
    known = [r for r in runs if r["params"]]
    blank = len(known) < len(runs)
    one_set = len({r["data"] for r in runs}) == 1
    keys = []
    for r in known:
        keys += [k for k in r["params"] if k not in keys]
    def varies(k):
        first = known[0]["params"].get(k)
        return any(r["params"].get(k) != first or (blank and chosen(r, k)) for r in known)
    return [k for k in keys if k != "seed" and not (k == "data_dir" and one_set) and varies(k)]


def chosen(run, key):
    """Whether the run holds `key` at another value than its task's default (or a key no default covers: a stage's)."""
    defaults = task_defaults(run["params"].get("task", KEYS["task"].default))
    return key in run["params"] and (key not in defaults or run["params"][key] != defaults[key])


@functools.cache
def task_defaults(task):
    """The flattened params of a run of `task` that sets nothing else."""
    return resolved({"task": task}, f"the defaults of task {task}")


def group_repetitions(runs, keys):
    """Runs with the same varied values on the same data set (differing only in seed) form one group; a run whose
    values are unknown (its params unreadable) is a group of its own."""
    groups = {}
    for r in runs:
        unknown = [r["folder"]] if any(k not in r["params"] for k in keys) else []
        sig = json.dumps([r["params"].get(k) for k in keys] + [r["data"], *unknown], sort_keys=True)
        groups.setdefault(sig, []).append(r)
    return list(groups.values())


def summarize(values):
    """(mean, std, n) of the numbers in `values`."""
    nums = [v for v in values if isinstance(v, (int, float))]
    if not nums:
        return None, None, 0
    return statistics.fmean(nums), (statistics.stdev(nums) if len(nums) > 1 else 0.0), len(nums)


def common_name(folders):
    """'ps_0.5__rep0', 'ps_0.5__rep1' -> 'ps_0.5__rep*': a name that says which folders a row stands for."""
    names = [os.path.basename(f) for f in folders]
    return os.path.join(os.path.dirname(folders[0]), os.path.commonprefix(names) + "*")


def group_row(group, keys, metrics, metric):
    """One table row: the varied values, status, n, and mean/std of each metric."""
    first = group[0]
    statuses = sorted({r["status"] for r in group})
    row = {"folder": first["folder"] if len(group) == 1 else common_name([r["folder"] for r in group]),
           "values": {k: first["params"].get(k) for k in keys},
           "unknown": [k for k in keys if k not in first["params"]],  # unreadable params: shown blank
           "status": statuses[0] if len(statuses) == 1 else "/".join(statuses),
           "n": len(group), "epochs": max(r["epoch"] or 0 for r in group),
           "note": "; ".join(r["note"] for r in group if r["note"]),
           "code": ", ".join(sorted({r["code"] for r in group if r["code"]})),
           "stats": {}, "runs": group}
    for source, name in metrics:
        row["stats"][f"{source}_{name}"] = summarize(r[source].get(name) for r in group)
    mean = row["stats"].get(f"best_{metric}", (None,))[0]
    row["sort"] = mean if mean is not None and math.isfinite(mean) else None  # a NaN ranks last, not anywhere
    return row


def build_rows(runs, metric):
    keys = varied_keys(runs)
    metrics = [("best", m) for m in metric_names(runs, "best")] + [("test", m) for m in metric_names(runs, "test")]
    rows = [group_row(g, keys, metrics, metric) for g in group_repetitions(runs, keys)]
    sign = 1 if minimized(metric, task_of(runs)) else -1
    # finished rows first, best first; rows without the metric (failed, not started) last
    rows.sort(key=lambda r: (r["sort"] is None, r["status"] != Status.COMPLETED, sign * (r["sort"] or 0)))
    return keys, metrics, rows


def minimized(metric, task=None):
    """Whether smaller is better for `task`'s metric (its metrics.py says); without a task, when every task that
    reports the name says so. An unknown name sorts as larger-is-better."""
    found = [t.metrics[metric].minimize for t in ([load(task)] if task in registered() else registered().values())
             if metric in t.metrics]
    return bool(found) and all(found)


def metric_names(runs, source):
    names = []
    for r in runs:
        names += [k for k in numbers(r[source]) if k != "epoch" and k not in names]
    return names


def budget_of(runs):
    """(epochs trained, epochs if every run trained to its num_epochs) over gathered runs."""
    default = KEYS["num_epochs"].default
    return sum(r["epoch"] or 0 for r in runs), sum(r["params"].get("num_epochs", default) for r in runs)


def budget_line(trained, full):
    """What a search has spent against its full grid: successive halving's point."""
    share = f" ({100 * trained / full:.0f} %)" if full else ""
    return f"budget: {trained} epochs trained of the {full} that training every cell to the end costs{share}"


def numbers(metrics):
    """The numeric entries of a metrics file: evaluate.py's also holds per-class tables and labels (tta, weights)."""
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


# how a cell's point is marked in the search figures: the state it ended in, and what its value means there
OUTCOMES = {Status.COMPLETED: Status.COMPLETED, Status.PRUNED: Status.PRUNED, Status.PAUSED: Status.PAUSED,
            Status.FAILED: Status.FAILED, Status.DIVERGED: Status.FAILED}


@dataclass
class Point:
    """A point of the search space as the tables and figures show it: the cells (run folders) that repeat it, its
    searched values, how it ended and its value. (core/search/cells.py's Cell is one folder the search trains.)"""

    runs: list
    values: dict
    outcome: str  # a Status: completed, pruned, paused, failed (diverged too) or running (interrupted, queued too)
    value: float = None  # mean over repetitions: best valid metric, or for a stopped cell its value at its last rung
    epochs: int = 0
    histories: list = field(default_factory=list)
    data: str = None  # the data set it validated on: cells of different sets are never ranked against each other


def value_at_last_rung(history, schedule, metric, epochs):
    """The valid metric at the deepest rung `epochs` reached: what successive halving compared the cell by."""
    rungs = [r for r in schedule.rungs if r <= epochs] if schedule else []
    by_epoch = {row["epoch"]: row["val"].get(metric) for row in history if isinstance(row.get("val"), dict)}
    return by_epoch.get(rungs[-1]) if rungs else None


def cell_value(run, history, schedule, metric):
    if run["status"] in (Status.PRUNED, Status.PAUSED):
        stopped = value_at_last_rung(history, schedule, metric, run["epoch"] or 0)
        if stopped is not None:
            return stopped
    value = run["best"].get(metric)
    return value if isinstance(value, (int, float)) and math.isfinite(value) else None


def checked_history(run):
    """The run's history rows, or [] with a note on the run when a row is not one train.py writes (no epoch, no
    train or val metrics): one bad cell is reported and left out of the curves, the others are still drawn."""
    rows = load_history(run["folder"])
    bad = next((n for n, r in enumerate(rows, start=1) if not (isinstance(r, dict) and isinstance(r.get("epoch"), int)
                and isinstance(r.get("train"), dict) and isinstance(r.get("val"), dict))), None)
    if bad is None:
        return rows
    note = f"history.json row {bad} lacks epoch, train or val: curves left out"
    run["note"] = "; ".join(filter(None, [run.get("note"), note]))
    return []


def points_of(runs, keys, metric, schedule=None, read_histories=True):
    """Cells (repetitions grouped), best first: completed cells, then stopped ones, then those without a value.
    read_histories=False leaves history.json unread where nothing needs it (a table of a search without a schedule)."""
    cells = []
    for group in group_repetitions(runs, keys):
        histories = [checked_history(r) if read_histories else [] for r in group]
        outcomes = {OUTCOMES.get(r["status"], Status.RUNNING) for r in group}
        values = [v for r, h in zip(group, histories) if (v := cell_value(r, h, schedule, metric)) is not None]
        cells.append(Point(group, {k: group[0]["params"].get(k) for k in keys},
                          outcomes.pop() if len(outcomes) == 1 else "running",
                          statistics.fmean(values) if values else None,
                          max(r["epoch"] or 0 for r in group), histories, group[0]["data"]))
    sign = 1 if minimized(metric, task_of(runs)) else -1
    cells.sort(key=lambda c: (c.value is None, c.outcome != "completed", sign * (c.value or 0)))
    return cells


def best_of_each_data_set(cells, k):
    """The first k cells of each data set, in the order given (points_of's: best first), one set after another: the
    only cells a figure may call the best when the validation sets differ."""
    by_set = {}
    for cell in cells:
        by_set.setdefault(data_set_name(cell.data), []).append(cell)
    return [cell for name in sorted(by_set) for cell in by_set[name][:k]]
