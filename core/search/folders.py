"""A search parent's cells and the folders under it that are none of them: what the search trains, and what
synthesize_results.py and plot_results.py show."""

import os

from core.search.grid import base_params, plan, tpe_block
from core.search.identity import folder_identity, not_in_search, place
from core.search.tpe import existing_cells
from utils import UserError, read_json


def cells_of_search(parent, params, path):
    """(plan, cells, names of the folders not in the search) of a search parent: the plan's cells placed in their
    folders, or for method "tpe" the folders of its space so far."""
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
