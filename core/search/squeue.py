"""What Slurm's queue says now: which submissions are still pending or running (squeue; no slurmdbd needed)."""

import functools
import subprocess

from core.rundir.folder import Status


def squeue_ids():
    """Every job id squeue lists now (pending, running or requeued); None when squeue failed or is absent."""
    try:
        proc = subprocess.run(["squeue", "-h", "-r", "-o", "%i"], capture_output=True, text=True)
    except OSError:  # no squeue here: this machine is not the cluster that ran it
        return None
    return frozenset(proc.stdout.split()) if proc.returncode == 0 else None


def slurm_alive(job_ids):
    """The subset of `job_ids` that squeue lists now; None if squeue failed."""
    listed = squeue_ids()
    return None if listed is None else set(job_ids) & listed


def queued_elsewhere(status):
    """True when a cell's status names a Slurm job that squeue still lists (pending, running, requeued, held),
    whatever the status says but 'completed': the cell is that job's, and a rerun must not submit it again (two jobs
    would train one folder). The status alone cannot tell: a requeued job's train.py recorded 'interrupted', and the
    job waits in the queue to resume the cell; a job requeued after it failed trains the folder again too."""
    job_id = status.get("slurm_job_id")
    return bool(job_id) and status.get("status") != Status.COMPLETED and job_id in queue_snapshot()


@functools.lru_cache(maxsize=1)
def queue_snapshot():
    """squeue_ids(), read once while a search plans (not once per cell of a large grid); empty when unavailable."""
    return squeue_ids() or frozenset()
