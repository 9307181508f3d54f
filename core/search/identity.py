"""What a cell trains (its identity), and which folder under a search parent holds it.

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

from core.config import KEYS, flatten, resolve
from core.rundir.folder import EFFECTIVE
from core.search.cells import Cell
from utils import UserError, read_json

SUFFIX = 8  # hex digits of an identity that tell two cells apart when their readable names clash


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
    # a folder of the name that trains something else is passed by; a file there is an error (child_path)
    taken = {n for n in os.listdir(parent) if os.path.isdir(os.path.join(parent, n))} | set(chosen.values())
    cells = []
    for name, params, ident in planned:
        if ident not in chosen:
            chosen[ident] = name if name not in taken else f"{name}__{short_id(ident)}"
            taken.add(chosen[ident])
        cells.append(Cell(chosen[ident], child_path(parent, chosen[ident]), params))
    return cells, not_in_search(parent, cells)


def not_in_search(parent, cells):
    """The folders under `parent` holding a params.json that are none of `cells`: kept, never deleted."""
    used = {c.name for c in cells}
    return [n for n in run_folders(parent) if n not in used]
