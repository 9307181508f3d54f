"""A search's cells and the words for where each stands: its folder's Status, or NOT_STARTED, or LOCKED.

What a cell trains and which folder holds it: core/search/identity.py; a search parent's cells and the folders that
are none of them: core/search/folders.py.
"""

import os
from dataclasses import dataclass

from core.rundir.folder import Status, checkpoint_path, is_locked, read_status
from core.search.squeue import queue_snapshot, queued_elsewhere

# where a cell stands, in one vocabulary: its folder's Status, or one of these two
NOT_STARTED = "not started"  # no folder, or no status in it yet
LOCKED = "locked"  # another process (a search, a Slurm job, a hand-run train.py) trains it now
FAILED = (Status.FAILED, Status.DIVERGED)  # ended badly: trained again only with --retry_failed


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
