"""method "tpe": Optuna's TPE sampler proposes each new cell from the results so far (ask and tell).

    "hyper_search": {"method": "tpe", "n_samples": 30, "learning_rate": {"loguniform": [1e-4, 1e-1]},
                     "ps": {"uniform": [0, 0.5]}, "schedule": {"type": "asha", ...}}       # schedule optional

The folders are the truth. Each time a cell is wanted, a fresh in-memory study is built from the cell folders —
finished cells with their best validation metric, paused and pruned ones as pruned trials with their per-epoch
values, running ones as running, failed ones as failed — and asked for one more. No study database exists to drift
from the folders, lock on a network filesystem, or be written by anyone but the search. Optuna is an optional extra
(pip install -r requirements-tpe.txt).
"""

import json
import os

from core.config import flatten
from core.rundir.folder import Status, metrics_file
from core.search.asha import read_progress
from core.search.cells import Cell
from core.search.grid import base_params, child_params, folder_name
from core.search.identity import child_path, folder_identity, identity, place, run_folders
from core.search.results import read_optional
from core.search.sampling import round_sig
from core.stages import stage_flat
from utils import UserError

TRIES, RANDOM_TRIES = 20, 200  # TPE proposals, then random ones, before concluding the space is exhausted


def need_optuna():
    try:
        import optuna
    except ImportError:
        raise UserError("method 'tpe' needs the 'optuna' package: pip install -r requirements-tpe.txt") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


class Tpe:
    """Proposes new cells of one search space."""

    def __init__(self, parent_dir, parent_params, dims, n_samples, seed, metric, mode):
        self.optuna = need_optuna()
        self.parent, self.base = parent_dir, base_params(parent_params)
        self.dims, self.n_samples, self.seed = dims, n_samples, seed
        self.metric, self.direction = metric, "maximize" if mode == "max" else "minimize"
        self.dists = self.distributions()

    def distributions(self):
        d = self.optuna.distributions
        out = {}
        for key, kind, args in self.dims:
            if kind == "choice":  # by index: Optuna's categories must be scalars, a value may be a list
                out[key] = d.CategoricalDistribution(list(range(len(args))))
            elif kind == "int":
                out[key] = d.IntDistribution(*args)
            else:
                out[key] = d.FloatDistribution(*args, log=kind == "loguniform")
        return out

    def existing(self):
        return existing_cells(self.parent, self.base, self.dims)

    def as_trial_params(self, values):
        """Folder values -> Optuna's (choice indices); None when a value lies outside today's space."""
        out = {}
        for key, kind, args in self.dims:
            v = values[key]
            if kind == "choice":
                if v not in args:
                    return None
                out[key] = args.index(v)
            elif not args[0] <= v <= args[1]:
                return None
            else:
                out[key] = v
        return out

    def trial(self, cell):
        """The cell's folder as an Optuna trial, or None for a cell outside today's space."""
        params = self.as_trial_params(space_values(cell.params, self.dims))
        if params is None:
            return None
        progress = read_progress(cell.folder, self.metric)
        status, history = progress.status, progress.values
        best = read_optional(os.path.join(cell.folder, metrics_file("val", "best")), []) or {}
        state = self.optuna.trial.TrialState
        kw = {"params": params, "distributions": self.dists}
        if status == Status.COMPLETED and self.metric in best:
            return self.optuna.trial.create_trial(value=best[self.metric], intermediate_values=history, **kw)
        if status in (Status.PAUSED, Status.PRUNED) and history:
            return self.optuna.trial.create_trial(state=state.PRUNED, intermediate_values=history, **kw)
        if status in (Status.FAILED, Status.DIVERGED):
            return self.optuna.trial.create_trial(state=state.FAIL, **kw)
        return self.optuna.trial.create_trial(state=state.RUNNING, **kw)  # running, queued or not started

    def propose(self, cells):
        """A new Cell for the next free worker, or None once n_samples cells exist (or TPE only repeats). Cells in
        training are in `cells` as running trials, so parallel workers are not all sent to the same spot."""
        if len(cells) >= self.n_samples:
            return None
        trials = [t for t in (self.trial(c) for c in cells) if t is not None]
        for attempt in range(TRIES + RANDOM_TRIES):
            seed = self.seed + 1000 * attempt + len(trials)
            # TPE first; when it keeps proposing cells that exist (a small discrete space), random untried points
            sampler = self.optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(2, min(10, self.n_samples // 3)),
                                                      constant_liar=True) if attempt < TRIES else \
                self.optuna.samplers.RandomSampler(seed=seed)  # constant_liar: running cells count as promised
            study = self.optuna.create_study(direction=self.direction, sampler=sampler)
            study.add_trials(trials)
            values = self.from_trial_params(study.ask(self.dists).params)
            params = child_params(self.base, values)
            ident = identity(params, "hyper_search")
            # a cell this search has (under whatever name): ask again; a folder of its name that trains something
            # else: place() names it apart
            if all(identity(c.params, c.folder) != ident for c in cells):
                return place([(folder_name(values), params, ident)], self.parent)[0][0]
        print(f"tpe: {TRIES + RANDOM_TRIES} proposals in a row repeat existing cells; the space looks exhausted")
        return None

    def from_trial_params(self, asked):
        values = {}
        for key, kind, args in self.dims:
            v = asked[key]
            if kind == "choice":
                values[key] = json.loads(json.dumps(args[v]))
            elif kind == "int":
                values[key] = int(v)
            else:  # rounded for a readable folder name, kept inside the range
                values[key] = min(max(round_sig(v), args[0]), args[1])
        return values



def existing_cells(parent, base, dims):
    """The cells of this space already in the parent folder, in the order they were made (their params.json's
    mtime): the folders whose identity is that of the base params plus one value per searched key."""
    cells = []
    for name in run_folders(parent):
        path = os.path.join(parent, name, "params.json")
        params = read_optional(path, [])
        values = space_values(params, dims) if params is not None else None
        if values is not None and folder_identity(os.path.dirname(path)) == identity(child_params(base, values), path):
            cells.append((os.path.getmtime(path), Cell(name, child_path(parent, name), params)))
    return [c for _, c in sorted(cells, key=lambda t: t[0])]


def space_values(params, dims):
    """{key: value} of each searched key in a folder's params, or None when one is missing."""
    flat = flatten(params) | stage_flat(params, flatten)  # stage keys of a plan: stages.1.learning_rate
    values = {key: flat.get(key) for key, _, _ in dims}
    return None if any(v is None for v in values.values()) else values
