"""Successive halving (ASHA) over cell folders: train every cell to a rung, promote the best, pause the rest.

    "hyper_search": {..., "schedule": {"type": "asha", "min_epochs": 1, "reduction_factor": 3,
                                       "metric": "accuracy", "mode": "max"}}

Rungs are epochs: min_epochs, then x reduction_factor, up to num_epochs (1, 3, 9 for 9 epochs). A cell trains to its
rung with `train.py --stop_at_epoch RUNG` and pauses there (status 'paused', checkpoint kept, schedule still over
num_epochs). Asynchronous promotion (Li et al., 2018): whenever a worker is free, a paused cell in the top
1/reduction_factor of the cells that reached its rung goes on to the next rung, in place, from its checkpoint; else
a new cell starts. A promoted cell's history is the one an uninterrupted run would have produced.

The folders are the state: every decision is recomputed from status.json and history.json, so killing the search at
any moment and rerunning it retrains nothing and loses nothing, and a rerun with more cells promotes more.
"""

import hashlib
import json
from dataclasses import dataclass

from core.config import resolve
from core.rundir.folder import Status, is_locked, load_history, read_status, write_status
from core.search.cells import LOCKED
from core.search.grid import base_params
from core.search.results import data_set_of
from core.tasks import metrics_of
from utils import UserError

SCHEDULE_KEYS = ("type", "min_epochs", "reduction_factor", "metric", "mode")


@dataclass(frozen=True)
class Schedule:
    min_epochs: int
    reduction_factor: int
    metric: str
    mode: str  # "max" or "min"
    num_epochs: int

    @property
    def rungs(self):
        """Epochs at which cells are compared: min_epochs x eta^k while a whole factor eta still fits below
        num_epochs, then num_epochs (1, 3, 10 for 10 epochs: no rung of 9 one epoch before the end)."""
        eta, rungs = self.reduction_factor, [self.min_epochs]
        while rungs[-1] * eta * eta <= self.num_epochs:
            rungs.append(rungs[-1] * eta)
        return rungs if rungs[-1] == self.num_epochs else [*rungs, self.num_epochs]

    def better(self, value):
        """Sort key: smaller is better."""
        return -value if self.mode == "max" else value

    def survivors(self, n_cells):
        """Cells reaching each rung when every rung keeps exactly 1/eta (what asynchronous promotion converges to)."""
        out = []
        for _ in self.rungs:
            out.append(n_cells)
            n_cells //= self.reduction_factor
        return out

    def planned_epochs(self, n_cells):
        starts = [0, *self.rungs[:-1]]
        return sum(n * (rung - start) for n, rung, start in zip(self.survivors(n_cells), self.rungs, starts))

    def describe(self, n_cells):
        per_rung = self.survivors(n_cells)
        planned, full = self.planned_epochs(n_cells), n_cells * self.num_epochs
        return (f"successive halving: rungs at epochs {', '.join(map(str, self.rungs))} (keep the top "
                f"1/{self.reduction_factor} by val {self.metric}, {self.mode}); cells per rung "
                f"{', '.join(map(str, per_rung))}: about {planned} epochs, {100 * planned / max(full, 1):.0f} % of the "
                f"full grid's {full} (worst case {full}, if every cell were promoted)")


def find_schedule(hyper_search, where):
    """The search's one schedule dict, or None. In a union of blocks, the blocks that give one must agree."""
    blocks = hyper_search if isinstance(hyper_search, list) else [hyper_search]
    found = {json.dumps(b["schedule"], sort_keys=True) for b in blocks if isinstance(b, dict) and "schedule" in b}
    if len(found) > 1:
        raise UserError(f"{where}: the blocks of hyper_search give different 'schedule's; a search has one")
    return json.loads(found.pop()) if found else None


def schedule_of(parent_params, where):
    """The Schedule of a search parent's params.json, or None (what synthesize and plot need to draw rungs)."""
    if not isinstance(parent_params, dict) or "hyper_search" not in parent_params:
        return None
    try:
        spec = find_schedule(parent_params["hyper_search"], where)
        return parse_schedule(spec, [base_params(parent_params)], where) if spec else None
    except UserError:  # a broken block: the tables still show what the folders hold
        return None


def rung_reached(schedule, epochs):
    """'2/3' when `epochs` reached the second of three rungs; '-' before the first."""
    k = sum(r <= (epochs or 0) for r in schedule.rungs)
    return f"{k}/{len(schedule.rungs)}" if k else "-"


def parse_schedule(spec, cells, where):
    """Validate the schedule against the cells' params (all must train the same num_epochs); the metric defaults to
    the cells' early_stopping.monitor_metric."""
    where = f"{where}: hyper_search 'schedule'"
    if not isinstance(spec, dict):
        raise UserError(f"{where}: expected an object like {{\"type\": \"asha\", \"min_epochs\": 1}}")
    unknown = [k for k in spec if k not in SCHEDULE_KEYS]
    if unknown or spec.get("type") != "asha":
        raise UserError(f"{where}: " + (f"unknown key '{unknown[0]}' ({', '.join(SCHEDULE_KEYS)})" if unknown
                                        else f"unknown type {json.dumps(spec.get('type'))} (only \"asha\")"))
    resolved = [resolve(c, where) for c in cells]
    epochs = {c["num_epochs"] for c in resolved}
    if len(epochs) > 1:
        raise UserError(f"{where}: every cell must train the same num_epochs to be compared at the rungs "
                        f"(found {sorted(epochs)})")
    num_epochs = epochs.pop()
    min_epochs, eta = spec.get("min_epochs", 1), spec.get("reduction_factor", 3)
    for name, value, low in (("min_epochs", min_epochs, 1), ("reduction_factor", eta, 2)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise UserError(f"{where}: '{name}' must be an integer >= {low}, got {json.dumps(value)}")
    if min_epochs > num_epochs:
        raise UserError(f"{where}: 'min_epochs' {min_epochs} is more than num_epochs {num_epochs}")
    metric = spec.get("metric", resolved[0]["early_stopping"]["monitor_metric"])
    metrics = metrics_of(resolved[0]["task"])
    if not isinstance(metric, str) or metric not in metrics:
        raise UserError(f"{where}: unknown metric {json.dumps(metric)} (one of {', '.join(metrics)})")
    natural = "min" if metrics[metric].minimize else "max"
    mode = spec.get("mode", natural)
    if mode not in ("max", "min"):
        raise UserError(f"{where}: 'mode' must be \"max\" or \"min\", got {json.dumps(mode)}")
    if mode != natural:
        raise UserError(f"{where}: 'mode' {mode} contradicts metric '{metric}' ({natural} is better)")
    return Schedule(min_epochs, eta, metric, mode, num_epochs)


def start_order(cell):
    """New cells start in a fixed pseudo-random order (a hash of the name: the same on every rerun, and a cell added
    later slots in). A grid listed worst-first (the smallest learning rate first) would otherwise fill the first
    rankings with bad cells and get them promoted: simulated on 27 cells, 70 % of the grid's epochs instead of 29 %."""
    return hashlib.sha1(cell.name.encode()).hexdigest()


@dataclass
class CellProgress:
    """What a cell's folder says, as ASHA needs it."""

    epochs: int = 0  # committed epochs (status.json's epoch: never ahead of last.pth.tar)
    status: str = ""
    values: dict = None  # epoch -> val metric


def read_progress(folder, metric):
    status = read_status(folder)
    values = {r["epoch"]: r["val"][metric] for r in load_history(folder)
              if isinstance(r, dict) and isinstance(r.get("val"), dict) and metric in r["val"]}
    return CellProgress(status.get("epoch", 0) or 0, status.get("status", ""), values)


class Asha:
    """The job source of a scheduled search: next_job() says which cell to train to which epoch."""

    def __init__(self, cells, schedule, retry_failed=False, promote=0, sampler=None):
        self.schedule, self.rungs = schedule, schedule.rungs
        # done cells are ranked but never trained; locked ones are none of ours
        self.cells = [c for c in cells if c.status != LOCKED]
        self.promote, self.sampler, self.added, self.data_sets = promote, sampler, [], {}
        self.progress = {c.name: read_progress(c.folder, schedule.metric) for c in self.cells}
        # --retry_failed: the cells that had failed when the search started, once each (not one failing again now)
        self.retry = {c.name for c in self.cells if self.failed(c)} if retry_failed else set()
        total = max(len(self.cells), sampler.n_samples if sampler else 0)
        can_grow = bool(sampler) and len(self.cells) < sampler.n_samples
        # jobs still expected, for the progress bar: cells each rung should get, less those already there; none
        # when every cell is finished (then no cell server starts)
        reached = [sum(p.epochs >= r for p in self.progress.values()) for r in self.rungs]
        expected = sum(max(0, n - got) for n, got in zip(schedule.survivors(total), reached))
        self.planned = max(1, expected) if can_grow or any(map(self.trainable, self.cells)) else 0

    def not_started(self):
        return []  # every cell left is paused or pruned, and says so itself

    def refresh(self, cell):
        self.progress[cell.name] = read_progress(cell.folder, self.schedule.metric)

    def failed(self, cell):
        return self.progress[cell.name].status in (Status.FAILED, Status.DIVERGED)

    def trainable(self, cell):
        p = self.progress[cell.name]
        if p.status == Status.COMPLETED or p.epochs >= self.schedule.num_epochs:
            return False
        return not self.failed(cell) or cell.name in self.retry

    def value_at(self, cell, rung):
        """The cell's result at `rung`, or None. A cell that stopped early (early stopping) counts with its last
        value: it finished, better or worse."""
        p = self.progress[cell.name]
        if self.failed(cell):  # no result to compare, whatever it reached before
            return None
        if rung in p.values and p.epochs >= rung:
            return p.values[rung]
        if p.status == Status.COMPLETED and p.values and p.epochs < rung:
            return p.values[max(p.values)]
        return None

    def ranked(self, rung):
        """Cells with a result at `rung`, best first (ties: plan order)."""
        scored = [(self.schedule.better(v), i, c) for i, c in enumerate(self.cells)
                  if (v := self.value_at(c, rung)) is not None]
        return [c for *_, c in sorted(scored, key=lambda t: t[:2])]

    def by_data_set(self, cells):
        """`cells` in their order, in groups of one validation set each: results on different validation sets are
        never compared, so a search over data_dir promotes within each set. A cell's set is its params' data_dir
        (the search's --data_dir is every cell's), read once."""
        groups = {}
        for cell in cells:
            if cell.name not in self.data_sets:
                self.data_sets[cell.name] = data_set_of(None, cell.params)
            groups.setdefault(self.data_sets[cell.name], []).append(cell)
        return list(groups.values())

    def promotable(self, k):
        """Paused cells at rung k within the top 1/eta of every cell that reached it on the same data set."""
        eta = self.schedule.reduction_factor
        top = [c for group in self.by_data_set(self.ranked(self.rungs[k])) for c in group[:len(group) // eta]]
        return [c for c in top if self.progress[c.name].epochs == self.rungs[k] and self.trainable(c)]

    def forced(self):
        """--promote N: the N best cells of the search (highest rung reached, then value) of each data set train to
        the end."""
        if not self.promote:
            return []
        best = []
        for rung in reversed(self.rungs):  # only cells that trained to the rung (not early-stopped before it)
            best += [c for c in self.ranked(rung) if c not in best and self.progress[c.name].epochs >= rung]
        return [c for group in self.by_data_set(best) for c in group[:self.promote] if self.trainable(c)]

    def next_job(self, busy):
        """(cell, epoch to stop at) for a free worker, or None while nothing can start. `busy`: cell names in
        training now."""
        free = [c for c in self.cells if c.name not in busy and self.trainable(c)]
        for cell in self.forced():
            if cell in free:
                return self.job(cell, self.schedule.num_epochs)
        for cell in free:  # a rung left half done (killed, or failed and retried) is finished first
            e = self.progress[cell.name].epochs
            if 0 < e and (e not in self.rungs or self.failed(cell)):
                return self.job(cell, min(r for r in self.rungs if r > e))
        for k in range(len(self.rungs) - 2, -1, -1):  # promotions, highest rung first
            for cell in self.promotable(k):
                if cell in free:
                    return self.job(cell, self.rungs[k + 1])
        for cell in sorted(free, key=start_order):
            if self.progress[cell.name].epochs == 0:
                return self.job(cell, self.rungs[0])
        cell = self.sampler.propose(self.cells) if self.sampler else None  # method "tpe": a new cell on demand
        if cell:
            self.cells.append(cell)
            self.added.append(cell)
            self.progress[cell.name] = CellProgress(values={})
            return self.job(cell, self.rungs[0])
        return None if busy else self.last_resort(free)

    def last_resort(self, free):
        """Nothing runs and nothing qualifies: with fewer than reduction_factor cells at a rung its top 1/eta is
        empty, and a small search would end with no cell trained to the end. Promote the best cell of the highest
        rung that no cell of its data set has passed, so every search finishes at least one cell a data set."""
        for group in self.by_data_set(self.cells):
            for k in range(len(self.rungs) - 2, -1, -1):
                if any(self.progress[c.name].epochs > self.rungs[k] for c in group):
                    break  # a cell of this set went on from here: the rule already chose
                rung = self.rungs[k]
                paused = [c for c in self.ranked(rung) if c in group and c in free
                          and self.progress[c.name].epochs == rung]
                if paused:
                    return self.job(paused[0], self.rungs[k + 1])
        return None

    def job(self, cell, epoch):
        self.retry.discard(cell.name)
        cell.stop_at = epoch
        return cell

    def prune_rest(self):
        """At the end: cells stopped at a rung and not promoted are recorded as pruned (still resumable). Each
        folder is read again first: another search or a hand-run train.py may be training it now."""
        for cell in self.cells:
            self.refresh(cell)
            p = self.progress[cell.name]
            stopped = p.status == Status.PAUSED or (p.status == Status.INTERRUPTED and p.epochs in self.rungs)
            if stopped and not is_locked(cell.folder):
                write_status(cell.folder, Status.PRUNED, reason=f"not promoted past epoch {p.epochs} "
                             f"(successive halving)")
                self.refresh(cell)

    def epochs_trained(self):
        return sum(p.epochs for p in self.progress.values())
