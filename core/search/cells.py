"""A search's cells: what each trains, which folder holds it, and the words for where it stands.

A cell is recognised by what it trains, never by how its block was spelled. Its identity is its effective params in
a canonical form: defaults resolved, blocks flattened, keys sorted, 1 and 1.0 the same number, and only the keys that
change what it computes (a resumable key such as `loggers` or `num_workers` does not). A folder's identity is read
from what train.py recorded it ran with (params_effective.json), else from the params.json the search wrote. Before
planning, each cell is matched to the existing folder of its identity, whatever that folder is called; a folder that
matches no cell is left alone, as not in this search.
"""

import hashlib
import json
import os
from dataclasses import dataclass

from core.config import KEYS, flatten, resolve
from core.rundir.folder import EFFECTIVE, Status, checkpoint_path, is_locked, read_status
from core.search.squeue import queue_snapshot, queued_elsewhere
from utils import UserError, read_json

# where a cell stands, in one vocabulary: its folder's Status, or one of these two
NOT_STARTED = "not started"  # no folder, or no status in it yet
LOCKED = "locked"  # another process (a search, a Slurm job, a hand-run train.py) trains it now
FAILED = (Status.FAILED, Status.DIVERGED)  # ended badly: trained again only with --retry_failed
SUFFIX = 8  # hex digits of an identity that tell two cells apart when their readable names clash


@dataclass
class Cell:
    """One folder of a search: the params it trains, where it stands, and how this search's job of it ended."""

    name: str
    folder: str
    params: dict
    status: str = NOT_STARTED  # before the search runs it: a Status, NOT_STARTED or LOCKED
    result: str = ""  # after a job of it: a Status, LOCKED, or NOT_STARTED (due, never started)
    stop_at: int | None = None  # successive halving: the rung (epoch) this job trains to
    found: dict | None = None  # the status record as the last job of it found it (set when it starts)


def canonical(resolved):
    """The identity of a resolved params dict: a string equal for two cells exactly when they train the same."""
    kept = {k: v for k, v in flatten(resolved).items() if k in KEYS and KEYS[k].hyperparam and not KEYS[k].resumable}
    return json.dumps(normal(kept), sort_keys=True, separators=(",", ":"))


def normal(value):
    """Numbers as one spelling: 1.0 is 1 (JSON already makes 1e-3 and 0.001 one float); lists and dicts throughout."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [normal(v) for v in value]
    if isinstance(value, dict):
        return {k: normal(v) for k, v in value.items()}
    return value


def identity(params, where):
    return canonical(resolve(params, where))


def short_id(ident):
    return hashlib.sha1(ident.encode()).hexdigest()[:SUFFIX]


def folder_identity(folder):
    """What a folder trains: params_effective.json (train.py's record of what it ran with), else its params.json;
    None when neither is a valid params file."""
    for name in (EFFECTIVE, "params.json"):
        path = os.path.join(folder, name)
        if os.path.exists(path):
            try:
                return identity(read_json(path), path)
            except UserError:  # written by another version, or by hand: the next record may still say
                pass
    return None


def child_path(parent, name):
    path = os.path.join(parent, name)
    if os.path.dirname(os.path.abspath(path)) != os.path.abspath(parent):  # belt and braces after folder_name
        raise UserError(f"hyper_search: folder name {name!r} would leave {parent}")
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"{path}: is a file, where the search puts cell {name}'s folder; move it away")
    return path


def run_folders(parent):
    """The sub-folders of a search parent that hold a params.json, by name."""
    names = sorted(n for n in os.listdir(parent) if not n.startswith("."))
    return [n for n in names if os.path.isfile(os.path.join(parent, n, "params.json"))]


def place(planned, parent):
    """[(canonical name, params, identity)] -> ([Cell], names of the folders that are no cell of this search).

    Each cell goes to the existing folder of its identity (the one of its own name if several), else to a new folder
    of its canonical name, or, where that name is taken by a folder that trains something else, the name plus its
    identity's short hash."""
    existing = {}
    for name in run_folders(parent):
        existing.setdefault(folder_identity(os.path.join(parent, name)), []).append(name)
    existing.pop(None, None)  # unreadable params: no cell's
    chosen = {}
    for name, _, ident in planned:  # matches first, so that no new cell takes a folder another cell owns
        if ident in existing:
            folders = existing[ident]
            chosen[ident] = name if name in folders else folders[0]
    taken = set(os.listdir(parent)) | set(chosen.values())
    cells = []
    for name, params, ident in planned:
        if ident not in chosen:
            chosen[ident] = name if name not in taken else f"{name}__{short_id(ident)}"
            taken.add(chosen[ident])
        cells.append(Cell(chosen[ident], child_path(parent, chosen[ident]), params))
    return cells, not_in_search(parent, cells)


def cells_of_search(parent, params, path):
    """(plan, cells, names of the folders not in the search) of a search parent: the plan's cells placed in their
    folders, or for method "tpe" the folders of its space so far."""
    from core.search.grid import base_params, plan, tpe_block  # they build on this module
    from core.search.tpe import existing_cells

    planned, tpe = plan(params, path), tpe_block(params["hyper_search"], path)
    cells = existing_cells(parent, base_params(params), tpe[0]) if tpe else place(planned, parent)[0]
    return planned, cells, not_in_search(parent, cells)


def shown_folders(parent_dir, every=False):
    """(the run folders synthesize and plot show, or None for every one under parent_dir; a line on what is left
    out): a search parent's cells, not the folders its block no longer names."""
    path = os.path.join(parent_dir, "params.json")
    try:
        params = read_json(path) if os.path.isfile(path) and not every else None
        if not isinstance(params, dict) or "hyper_search" not in params:
            return None, ""
        _, cells, others = cells_of_search(os.path.abspath(parent_dir), params, path)
    except UserError as e:  # a block being edited: the folders are still worth a look
        return None, f"{e}: every folder shown"
    # a folder whose params cannot be read may be a cell: shown, with the note that says why it is unreadable
    unknown = [n for n in others if folder_identity(os.path.join(parent_dir, n)) is None]
    folders = [os.path.join(parent_dir, n) for n in [c.name for c in cells if os.path.isdir(c.folder)] + unknown]
    others = [n for n in others if n not in unknown]
    return folders, (f"{len(others)} folders are not cells of this search (--all shows them): {', '.join(others)}"
                     if others else "")


def not_in_search(parent, cells):
    """The folders under `parent` holding a params.json that are none of `cells`: kept, never deleted."""
    used = {c.name for c in cells}
    return [n for n in run_folders(parent) if n not in used]


def read_statuses(cells):
    """Set each cell's status as it stands now, Slurm's queue read once, afresh."""
    queue_snapshot.cache_clear()
    for cell in cells:
        cell.status = status_now(cell)


def status_now(cell):
    """Where a cell stands before the search runs it."""
    if not os.path.exists(os.path.join(cell.folder, "params.json")):
        return NOT_STARTED
    record = read_status(cell.folder)
    status = record.get("status")
    if status == Status.COMPLETED:
        return Status.COMPLETED
    if is_locked(cell.folder) or queued_elsewhere(record):
        return LOCKED
    return Status(status) if status in set(Status) else NOT_STARTED


def wants_training(cell, retry_failed=False):
    """Whether a plain search trains the cell now: anything not finished, not failed and not trained elsewhere."""
    if cell.status in FAILED:
        return retry_failed
    return cell.status not in (Status.COMPLETED, LOCKED)


def resumes(cell):
    return os.path.exists(checkpoint_path(cell.folder))
