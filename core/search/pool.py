"""Cells on disk: what each child folder needs (skip, run, resume), and a local pool that trains them.

Rerunning a search is always safe: the folders are the state. Finished cells are skipped, interrupted ones
resume from last.pth.tar, failed ones wait for --retry_failed, and a folder whose params.json no longer matches
the grid is reported and left untouched.
"""

import functools
import os
import signal
import statistics
import subprocess
import sys
import time
from collections import deque
from typing import Protocol

from tqdm import tqdm

from core.config import KEYS, resolve
from core.paths import ROOT, TRAIN
from core.rundir.folder import (
    LOG,
    Status,
    checkpoint_path,
    is_locked,
    load_history,
    read_status,
    write_status,
)
from core.search.asha import find_schedule, parse_schedule
from core.search.cells import LOCKED, NOT_STARTED, Cell
from core.search.container import POOL_GPUS, run_command
from core.search.folders import cells_of_search
from core.search.forkserver import ForkServer, ServerGone
from core.search.grid import base_params, child_params, corners, tpe_block
from core.search.progress import Progress
from core.tasks import data_dir_for, load
from core.trackers.search import given_up
from utils import FolderBusy, UserError, die_with_parent, read_json, write_json


class Queue:
    """The job source of a plain search: every cell of `todo` once, in plan order, then (method "tpe") the cells
    `sampler` proposes. core/search/asha.py's Asha is the other source."""

    def __init__(self, cells, todo, sampler=None):
        self.cells, self.pending, self.sampler, self.added = list(cells), deque(todo), sampler, []
        self.planned = len(todo) + (max(0, sampler.n_samples - len(cells)) if sampler else 0)  # jobs expected

    def next_job(self, busy):
        if self.pending:
            return self.pending.popleft()
        cell = self.sampler.propose(self.cells) if self.sampler else None
        if cell:
            self.cells.append(cell)
            self.added.append(cell)
        return cell

    def refresh(self, cell):
        pass

    def not_started(self):
        return list(self.pending)


def load_search(parent_dir):
    """PARENT_DIR/params.json -> (cells, successive-halving Schedule or None, Tpe sampler or None, names of the
    folders that are no cell of this search), validated."""
    path = os.path.join(parent_dir, "params.json")
    if not os.path.isdir(parent_dir):
        raise UserError(f"--parent_dir {parent_dir}: not a folder")
    params = read_json(path)
    if not isinstance(params, dict) or "hyper_search" not in params:
        raise UserError(f"{path}: no 'hyper_search' block (e.g. \"hyper_search\": {{\"learning_rate\": [1e-3, 1e-2]}})")
    # absolute paths: children run from the repository root, Ray and Slurm tasks from wherever they land
    parent = os.path.abspath(parent_dir)
    planned, cells, others = cells_of_search(parent, params, path)
    spec = find_schedule(params["hyper_search"], path)
    tpe = tpe_block(params["hyper_search"], path)
    # what the schedule is checked against (one num_epochs for all): the cells, or the corners of TPE's space
    examples = [child for _, child, _ in planned]
    if tpe:
        examples += [child_params(base_params(params), c) for c in corners(tpe[0])]
    schedule = parse_schedule(spec, examples, path) if spec else None
    if not tpe:
        return cells, schedule, None, others
    from core.search.tpe import Tpe  # imports optuna: only for a tpe search

    es = resolve(base_params(params), path)["early_stopping"]
    metric, mode = (schedule.metric, schedule.mode) if schedule else (es["monitor_metric"],
                                                                       "min" if es["minimize"] else "max")
    return cells, schedule, Tpe(parent, params, *tpe, metric, mode), others


def estimate_hours(cells, epochs):
    """Compute hours for `epochs` still to train: the mean measured epoch time of every cell with a history x
    epochs. None if nothing is measured yet."""
    times = [r.get("epoch_s", r.get("time_s")) for c in cells for r in load_history(c.folder)]
    times = [t for t in times if isinstance(t, (int, float))]
    if not times:
        return None, "no trained epoch to measure yet"
    mean = statistics.fmean(times)
    return mean * epochs / 3600, f"mean epoch {mean:.1f} s over {len(times)} measured epochs, {epochs} epochs to run"


def cell_data(cell, data_dir=None):
    """The data set of a cell: the search's --data_dir for every cell, else the cell's own params data_dir (a
    searched key too), else its task's; absolute, as cells run from elsewhere."""
    task = cell.params.get("task", KEYS["task"].default)
    return os.path.abspath(data_dir_for(task, cell.params.get("data_dir"), data_dir))


def train_command(cell, data_dir):
    return [sys.executable, TRAIN, "--model_dir", cell.folder, "--data_dir", cell_data(cell, data_dir),
            *train_args(cell)]


def train_args(cell):
    """What train.py is told beyond the folders: resume the cell if it has a checkpoint, stop at its rung."""
    args = ["--restore_file", "last"] if os.path.exists(checkpoint_path(cell.folder)) else []
    if cell.stop_at and cell.stop_at < cell.params.get("num_epochs", KEYS["num_epochs"].default):
        args += ["--stop_at_epoch", str(cell.stop_at)]
    return args


def cell_command(cell, data_dir, env, container=None):
    """The command that trains `cell`: train.py here, or one run of `container`'s image (core/search/container.py)."""
    if container is None:
        return train_command(cell, data_dir)
    return run_command(container, cell.folder, cell_data(cell, data_dir), cell.params, train_args(cell), env)


def cell_env(gpus=None, threads=None, pool=False):
    """Environment of one cell: the GPUs it may see, or how many CPU threads each of its processes may use. pool:
    the local pool's choice of GPUs (none: a CPU cell), which a container maps to its allocation's."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if gpus is not None:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, gpus))  # the cell sees exactly these, as devices 0, 1, ...
    if pool:
        env[POOL_GPUS] = ",".join(map(str, gpus or []))
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return env


def log_tail(folder, n=15):
    try:
        with open(os.path.join(folder, LOG), errors="replace") as f:
            return f.read().splitlines()[-n:]
    except OSError:
        return []


def prepare(cell):
    """Create the cell folder and its params.json (never rewriting an existing one); note the status record the
    job finds, so that collect() tells an earlier session's from this job's."""
    os.makedirs(cell.folder, exist_ok=True)
    cell.found = read_status(cell.folder)
    if not os.path.exists(os.path.join(cell.folder, "params.json")):
        write_json(os.path.join(cell.folder, "params.json"), cell.params)


def launch(cell, data_dir, env, container=None):
    """Start a cell cold: a fresh interpreter that imports everything itself, or a container run."""
    prepare(cell)
    # train.py logs to train.log itself; its stderr (errors, tracebacks, the runtime's own) is appended there too.
    # A container outlives a SIGKILLed client: its runtime gets SIGTERM instead, which it passes on to train.py
    signum = signal.SIGKILL if container is None else signal.SIGTERM
    with open(os.path.join(cell.folder, LOG), "a") as err:
        return subprocess.Popen(cell_command(cell, data_dir, env, container), stdout=subprocess.DEVNULL, stderr=err,
                                env=env, preexec_fn=functools.partial(die_with_parent, signum), cwd=ROOT)


class Launcher:
    """Starts the local pool's cells: warm (forked from a server that has imported torch & co. once, see
    core/search/forkserver.py) or cold (launch()). Without a server, because it would not start or it died, cells start
    cold: slower, never different. Containers always start cold: each is its own interpreter in its own image."""

    def __init__(self, warm, env, torchvision=True, container=None):
        warm = warm and sys.platform.startswith("linux") and container is None
        self.server = ForkServer(env, torchvision) if warm else None  # a failed start shows at the first cell
        self.container = container

    def start(self, cell, data_dir, env):
        if self.server:
            prepare(cell)
            try:
                return self.server.spawn(train_command(cell, data_dir)[1:], env, os.path.join(cell.folder, LOG))
            except ServerGone as e:
                self.fall_back(e)
        return launch(cell, data_dir, env, self.container)

    def fall_back(self, error):
        tqdm.write(f"{error}; cells start cold (--cold)", file=sys.stderr)
        if self.server:
            self.server.close()
        self.server = None

    def sleep(self, seconds):
        """Wait up to `seconds` for a cell to end; a warm cell's end wakes us at once."""
        if self.server and not self.server.gone:
            self.server.pump(0 if self.server.exits else seconds)  # an end heard while spawning: no wait
        else:
            time.sleep(seconds)

    def close(self):
        if self.server:
            self.server.close()


def train_cell(cell, data_dir, env, container=None):
    """Train one cell to the end and return its result (what a Slurm task or a Ray task runs)."""
    proc = launch(cell, data_dir, env, container)
    return collect(cell, proc.wait())


def collect(cell, returncode, lost=None):
    """Read the outcome from the folder; record an end train.py could not record itself. `lost`: why the process
    was killed from outside (its warm-cell server died): resumable, none of the cell's doing."""
    # another process trains it (its exit code said so, or it took the folder since): its status is not ours
    if returncode == FolderBusy.exit_code or is_locked(cell.folder, settle_s=5, ours_ending=True):
        return LOCKED
    # the exit code decides, the status confirms; a status this job left as it found it is an earlier session's (a
    # completed run is never stale: a folder that holds one is never trained again)
    record = read_status(cell.folder)
    status = record.get("status") if record != cell.found or record.get("status") == Status.COMPLETED else None
    if status == Status.COMPLETED or status in set(Status) and Status(status).exited_with(returncode):
        return Status(status)
    if lost or Status.INTERRUPTED.exited_with(returncode):  # stopped from outside, or before it recorded anything
        write_status(cell.folder, Status.INTERRUPTED, reason=lost or "interrupted while starting",
                     exit_code=returncode)
        return Status.INTERRUPTED
    tail = log_tail(cell.folder)
    reason = tail[-1] if tail else f"exit code {returncode}"
    if returncode in (-signal.SIGKILL, 128 + signal.SIGKILL):  # its log ends mid-run: say what stopped it
        reason = f"killed (SIGKILL, exit code {returncode}): out of memory, a `kill -9`/`podman kill`, or a lost node"
    write_status(cell.folder, Status.FAILED, reason=reason, exit_code=returncode, log_tail=tail)
    given_up(cell.folder, Status.FAILED, reason)  # its tracker run, left RUNNING, ends too
    return Status.FAILED


def threads_per_worker(workers):
    """CPU threads for each of `workers` cells on this machine: split our cores, not oversubscribe them."""
    return max(1, len(os.sched_getaffinity(0)) // workers)


def procs_per_cell(cells):
    """How many processes train each cell (params key nproc: the parent's, which a search cannot vary)."""
    return max([int(c.params.get("nproc", 1) or 1) for c in cells] + [1])


def run_pool(source, data_dir, workers, gpus, fail_fast, warm=True, meanwhile=None, container=None):
    """Train the jobs `source` hands out (a JobSource) with at most `workers` at a time; the next starts as soon as
    one ends. `meanwhile()` runs while the cell server imports: what the search does then costs no time, the server
    uses a single core. A cell of nproc processes (DDP) holds nproc GPUs, or nproc shares of its cores, and runs
    cold (torchrun starts its processes). Returns the number of failed jobs."""
    nproc = procs_per_cell(source.cells)
    threads = None if gpus else max(1, threads_per_worker(workers) // nproc)
    pool = Pool(source, data_dir, workers, gpus, threads, nproc)
    try:
        # the server imports with the cells' thread settings, so libraries that size their pools then agree too
        pool.launcher = Launcher(warm and nproc == 1 and source.planned > 0, cell_env(threads=threads),
                                 needs_torchvision(source), container)
        if meanwhile:
            meanwhile()
        while pool.start_free() or pool.running:
            pool.launcher.sleep(0.2)
            pool.reap()
            if pool.progress.failed and fail_fast:
                pool.stop()
    except BaseException:  # Ctrl-C, or an error starting a later cell: the running ones stop resumable, not killed
        pool.stop(wait=True)
        raise
    finally:
        pool.close()
    for cell in source.not_started():
        cell.result = NOT_STARTED
    return pool.progress.failed


class JobSource(Protocol):
    """Where run_pool's jobs come from: Queue (a plain search) or core/search/asha.py's Asha (successive halving,
    whose next job depends on the results so far)."""

    cells: list  # every cell of the search, the ones proposed while it runs too
    planned: int  # the jobs expected, for the progress bar

    def next_job(self, busy: set) -> Cell | None: ...  # busy: names of the cells running or locked elsewhere
    def refresh(self, cell: Cell) -> None: ...  # a job of `cell` ended (cell.result says how)
    def not_started(self) -> list: ...  # cells that were due but never started


def needs_torchvision(source):
    """Whether a cell asks for a torchvision architecture: a task's default arch (its own net.py's) needs none, and
    importing it would cost every search ~1 s."""
    return any(c.params.get("arch") not in (None, load(c.params.get("task", KEYS["task"].default)).arch)
               for c in source.cells)


class Pool:
    """The worker slots of run_pool: which process runs which cell in which slot (a GPU, or a share of the cores)."""

    def __init__(self, source, data_dir, workers, gpus, threads, nproc=1):
        self.source, self.data_dir, self.gpus, self.threads, self.nproc = source, data_dir, gpus, threads, nproc
        self.running, self.free, self.locked, self.stopped = {}, list(range(workers)), set(), False
        self.progress, self.launcher = Progress(source.planned), None

    def start_free(self):
        """Start a job in every free slot while the source has one; whether any job is running now."""
        while self.free and not self.stopped and (cell := self.source.next_job(self.busy())):
            if is_locked(cell.folder):  # someone else trains it now: not ours to start, nor to offer again
                cell.result = LOCKED
                self.locked.add(cell.name)
                self.progress.finished(cell, len(self.running))
                continue
            slot = self.free.pop(0)
            env = cell_env(self.slot_gpus(slot), self.threads, pool=True)
            self.running[self.launcher.start(cell, self.data_dir, env)] = (cell, slot)
            self.progress.started(len(self.running))
        return bool(self.running)

    def slot_gpus(self, slot):
        """The GPUs of a slot: one, or nproc of them for a cell that several processes train."""
        if not self.gpus:
            return None
        groups = len(self.gpus) // self.nproc
        return self.gpus[(slot % groups) * self.nproc:(slot % groups + 1) * self.nproc]

    def busy(self):
        return {c.name for c, _ in self.running.values()} | self.locked

    def reap(self):
        """Collect the jobs that ended: their slots free up, their cells get a result the source hears of."""
        for proc in [p for p in self.running if p.poll() is not None]:
            cell, slot = self.running.pop(proc)
            self.free.append(slot)
            cell.result = collect(cell, proc.returncode, getattr(proc, "lost", None))
            self.source.refresh(cell)
            self.progress.finished(cell, len(self.running))

    def stop(self, wait=False):
        """No new jobs; the running ones get SIGINT (train.py records 'interrupted' and exits)."""
        if not self.stopped:
            self.stopped = True
            for p in self.running:
                p.send_signal(signal.SIGINT)
        if wait:
            for p in self.running:
                p.wait()

    def close(self):
        self.progress.close()
        if self.launcher:
            self.launcher.close()
