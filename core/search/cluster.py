"""Cells beyond one machine, on engines users already have: a Slurm job array (submitit) or Ray tasks.

Both train each cell with train.py in its folder (on a shared filesystem), exactly as the local pool does, so
rerun-is-resume holds everywhere: the folders are the state, not the scheduler.
"""

import contextlib
import os
import shutil
import signal
import subprocess
import time

from core import tasks
from core.paths import ROOT
from core.rundir.folder import Status, is_locked, read_status, write_status
from core.search.cells import LOCKED
from core.search.pool import cell_env, collect, launch, prepare, procs_per_cell, train_cell
from core.search.progress import Progress
from core.search.squeue import slurm_alive
from core.trackers.search import given_up
from utils import UserError, one_line

EXTRA = "pip install -r requirements-cluster.txt"
PACKAGE = {"slurm": "submitit", "ray": "ray"}


def need(module):
    try:
        return __import__(module)
    except ImportError:
        raise UserError(f"--launcher needs the '{module}' package: {EXTRA}") from None


# ------------------------------------------------------------------ Slurm


class SlurmCell:
    """The callable each array task runs. Checkpointable: on preemption or time limit submitit requeues it, and the
    requeued task resumes from last.pth.tar because launch passes --restore_file last when a checkpoint exists."""

    STOP_GRACE_S = 60  # what checkpoint() waits for train.py to write its checkpoint within the epoch

    def __init__(self, data_dir, threads, max_requeues, container=None):
        self.data_dir, self.threads, self.max_requeues, self.container = data_dir, threads, max_requeues, container
        self.tasks = tuple(tasks.PATHS)  # the search's tasks, registered again in the array task's own process
        self.proc = None  # the cell's train.py while it runs (never pickled: __getstate__)

    def __getstate__(self):
        return {**self.__dict__, "proc": None}

    def __call__(self, cell):
        tasks.register(*self.tasks)
        if procs_per_cell([cell]) > 1:  # one Slurm task a rank (srun): torch.distributed's environment from Slurm's
            import submitit

            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
            if os.environ["RANK"] != "0":  # rank 0 keeps the folder's status and lock; the others just train
                return launch(cell, self.data_dir, cell_env(threads=self.threads), self.container).wait()
        if is_locked(cell.folder):  # a hand-run train.py or another search trains it: its status is not ours
            return LOCKED
        restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
        job = os.environ.get("SLURM_ARRAY_JOB_ID", os.environ.get("SLURM_JOB_ID", "?"))
        task = os.environ.get("SLURM_ARRAY_TASK_ID")
        write_status(cell.folder, Status.RUNNING, slurm_job_id=f"{job}_{task}" if task else job, restarts=restarts)
        if restarts > self.max_requeues:
            write_status(cell.folder, Status.FAILED, reason=f"requeued {restarts} times (limit {self.max_requeues})")
            return Status.FAILED
        # a container is given the GPUs Slurm gave this task (core/search/container.py reads SLURM_JOB_GPUS)
        self.proc = launch(cell, self.data_dir, cell_env(threads=self.threads), self.container)
        try:
            return collect(cell, self.proc.wait())
        finally:
            self.proc = None

    def checkpoint(self, cell):
        """submitit calls this on preemption or before the time limit (its signal), then requeues the task. The
        cell's train.py is asked to stop (SIGTERM: a checkpoint at its next batch) and waited for, so that the
        requeued task resumes from that batch rather than from a checkpoint the task's end cut short."""
        import submitit

        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=self.STOP_GRACE_S)
        return submitit.helpers.DelayedSubmission(self, cell)


def slurm_executor(parent_dir, opts, nproc=1):
    """The array's executor. A cell of nproc processes (DDP) is one job of nproc tasks over --nodes_per_cell nodes,
    each task one rank with --cpus_per_cell CPUs (and --gpus_per_cell GPUs a node)."""
    submitit = need("submitit")
    nodes = max(1, opts.nodes_per_cell)
    if nproc % nodes:
        raise UserError(f"--nodes_per_cell {nodes}: does not divide the {nproc} processes of each cell (nproc)")
    executor = submitit.AutoExecutor(folder=os.path.join(parent_dir, ".slurm", "%j"), cluster="slurm")
    params = {"timeout_min": opts.time_min, "cpus_per_task": opts.cpus_per_cell, "tasks_per_node": nproc // nodes,
              "nodes": nodes,
              "name": f"search-{os.path.basename(os.path.abspath(parent_dir))}",
              "slurm_array_parallelism": opts.array_parallelism,
              "slurm_additional_parameters": {"chdir": ROOT}}  # tasks import core/ from the repository root
    if opts.gpus_per_cell:
        params["gpus_per_node"] = opts.gpus_per_cell
    if opts.mem_gb:
        params["mem_gb"] = opts.mem_gb
    if opts.partition:
        params["slurm_partition"] = opts.partition
    executor.update_parameters(**params)
    return executor


def describe_slurm(cells, opts):
    gpus = f", {opts.gpus_per_cell} GPU(s)" if opts.gpus_per_cell else ""
    mem = f", {opts.mem_gb} GB" if opts.mem_gb else ""
    part = f"partition {opts.partition}, " if opts.partition else ""
    nproc = procs_per_cell(cells)
    ranks = f", each cell {nproc} tasks (DDP) on {opts.nodes_per_cell} node(s)" if nproc > 1 else ""
    return (f"slurm: one job array of {len(cells)} task(s) ({part}{opts.time_min} min, {opts.cpus_per_cell} CPU(s)"
            f"{gpus}{mem} per task{ranks}, at most {opts.array_parallelism} at once)")


def check_partition(name):
    """--partition names one of the cluster's (before any cell folder is written: sbatch would refuse the array)."""
    if not name or shutil.which("sinfo") is None:
        return
    known = subprocess.run(["sinfo", "-h", "-o", "%R"], capture_output=True, text=True).stdout.split()
    if known and name not in known:
        raise UserError(f"--partition {name}: not a partition of this cluster ({', '.join(sorted(set(known)))})")


def run_slurm(cells, data_dir, parent_dir, opts):
    """Submit one array (one task per cell); wait and show progress unless opts.no_wait. Returns failures."""
    if not cells:
        return 0
    check_partition(opts.partition)
    executor = slurm_executor(parent_dir, opts, procs_per_cell(cells))
    for cell in cells:
        prepare(cell)
    before = [read_status(cell.folder) for cell in cells]
    jobs = executor.map_array(SlurmCell(data_dir, opts.cpus_per_cell, opts.max_requeues, opts.container), cells)
    for cell, job, record in zip(cells, jobs, before):
        if read_status(cell.folder) == record:  # untouched since submitting: a fast task may already be ahead
            write_status(cell.folder, Status.QUEUED, slurm_job_id=job.job_id)  # a rerun sees it queued, not lost
    print(f"submitted Slurm array {jobs[0].job_id.split('_')[0]}; logs in {os.path.join(parent_dir, '.slurm')}")
    if opts.no_wait:
        print("not waiting: rerun the same command later to collect results (finished cells are skipped)")
        return 0
    return wait_slurm(cells, jobs)


def outcome_of_gone_task(cell, task):
    """A scheduler's task that is gone (ended, lost, failed): what its folder says; 'failed' written only where
    train.py left none of its ends (a status of 'queued' or 'running', or none)."""
    if is_locked(cell.folder):  # trained by another process now: neither ours nor failed
        return LOCKED
    status = read_status(cell.folder).get("status")
    ended = (Status.COMPLETED, Status.PAUSED, Status.PRUNED, Status.DIVERGED, Status.INTERRUPTED, Status.FAILED)
    if status in ended:
        return Status(status)
    reason = f"{task} ended with status '{status}'"
    write_status(cell.folder, Status.FAILED, reason=reason)
    given_up(cell.folder, Status.FAILED, reason)
    return Status.FAILED


def wait_slurm(cells, jobs):
    progress = Progress(len(cells))
    waiting = dict(zip([j.job_id for j in jobs], cells))
    try:
        while waiting:
            time.sleep(2)
            alive = slurm_alive(waiting)
            if alive is None:  # squeue hiccup (controller busy): ask again, do not declare cells lost
                continue
            for job_id in [j for j in waiting if j not in alive]:
                cell = waiting.pop(job_id)
                cell.result = outcome_of_gone_task(cell, f"Slurm task {job_id}")
                progress.finished(cell, len(waiting))
            progress.update(len(waiting))
    finally:
        progress.close()
    return progress.failed


# ------------------------------------------------------------------ Ray


def run_ray(cells, data_dir, opts):
    """One Ray task per cell with its CPU/GPU needs; Ray places them wherever resources are free."""
    if not cells:
        return 0
    ray = need("ray")
    try:
        ray.init(address=opts.ray_address or None, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
    except ConnectionError as e:  # before any cell folder is written
        raise UserError(f"--ray_address {opts.ray_address}: no Ray cluster there ({one_line(e)[:200]})") from None
    try:
        for cell in cells:
            prepare(cell)
        remote = ray.remote(num_cpus=opts.cpus_per_cell, num_gpus=opts.gpus_per_cell or 0)(ray_train_cell)
        pending = {remote.remote(cell, data_dir, opts.cpus_per_cell, opts.container, tuple(tasks.PATHS)): cell
                   for cell in cells}
        progress = Progress(len(cells))
        progress.update(len(pending))
        try:
            return wait_ray(ray, pending, progress)
        finally:
            progress.close()
    finally:
        ray.shutdown()


def wait_ray(ray, pending, progress):
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        cell = pending.pop(done[0])
        try:
            cell.result = ray.get(done[0])
        except Exception as e:  # a lost node or a crashed worker: the folder says how far it got
            cell.result = outcome_of_gone_task(cell, f"Ray task ({type(e).__name__})")
        progress.finished(cell, len(pending))
    return progress.failed


def ray_train_cell(cell, data_dir, threads, container=None, task_paths=()):
    tasks.register(*task_paths)  # the search's tasks, in the Ray task's own process
    # Ray sets CUDA_VISIBLE_DEVICES for the GPUs it assigned; the child (or the container, given those) inherits it
    return train_cell(cell, data_dir, cell_env(threads=max(1, threads // procs_per_cell([cell]))), container)
