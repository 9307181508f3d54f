"""Cells on disk: what each child folder needs (skip, run, resume), and a local pool that trains them.

Rerunning a search is always safe: the folders are the state. Finished cells are skipped, interrupted ones
resume from last.pth.tar, failed ones wait for --retry_failed, and a folder whose params.json no longer matches
the grid is reported and left untouched.
"""

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field

from tqdm import tqdm

from core.run import is_locked, read_status, write_status
from utils import UserError, read_json, write_json

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(ROOT, "train.py")

# what a cell's folder says about it -> what the search does with it
TODO = ("new", "resume")


@dataclass
class Cell:
    name: str
    folder: str
    params: dict
    state: str = "new"  # new, resume, done, failed, locked, mismatch
    result: str = ""  # after running: completed, failed, diverged, interrupted, locked
    extra: dict = field(default_factory=dict)


def cell_state(folder, params):
    path = os.path.join(folder, "params.json")
    if not os.path.exists(path):
        return "new"
    try:
        if read_json(path) != params:
            return "mismatch"
    except UserError:
        return "mismatch"
    status = read_status(folder).get("status")
    if status == "completed":
        return "done"
    if is_locked(folder):
        return "locked"
    if status in ("failed", "diverged"):
        return "failed"
    return "resume" if os.path.exists(os.path.join(folder, "last.pth.tar")) else "new"


def train_command(cell, data_dir):
    cmd = [sys.executable, TRAIN, "--model_dir", cell.folder, "--data_dir", data_dir]
    if os.path.exists(os.path.join(cell.folder, "last.pth.tar")):
        cmd += ["--restore_file", "last"]
    return cmd


def die_with_parent():
    """Linux: a child gets SIGKILL when the search dies, so a killed search leaves no orphan training."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def cell_env(slot, workers, gpus):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = str(gpus[slot % len(gpus)])  # each running cell sees exactly one GPU
    else:
        threads = str(max(1, (os.cpu_count() or 1) // workers))  # split the cores, not oversubscribe them
        env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, CUDA_VISIBLE_DEVICES="")
    return env


def log_tail(folder, n=15):
    try:
        with open(os.path.join(folder, "train.log"), errors="replace") as f:
            return f.read().splitlines()[-n:]
    except OSError:
        return []


def launch(cell, data_dir, slot, workers, gpus):
    os.makedirs(cell.folder, exist_ok=True)
    if not os.path.exists(os.path.join(cell.folder, "params.json")):
        write_json(os.path.join(cell.folder, "params.json"), cell.params)
    # train.py logs to train.log itself; its stderr (errors, tracebacks) is appended there too
    with open(os.path.join(cell.folder, "train.log"), "a") as err:
        return subprocess.Popen(train_command(cell, data_dir), stdout=subprocess.DEVNULL, stderr=err,
                                env=cell_env(slot, workers, gpus), preexec_fn=die_with_parent, cwd=ROOT)


def collect(cell, returncode):
    """Read the outcome from the folder; record a failure train.py could not record itself."""
    status = read_status(cell.folder).get("status")
    if returncode == 0 and status == "completed":
        return "completed"
    if status in ("diverged", "interrupted"):
        return status
    tail = log_tail(cell.folder)
    reason = tail[-1] if tail else f"exit code {returncode}"
    write_status(cell.folder, "failed", reason=reason, exit_code=returncode, log_tail=tail)
    return "failed"


def run_pool(cells, data_dir, workers, gpus, fail_fast):
    """Train `cells` with at most `workers` at a time; the next starts as soon as one ends."""
    pending, running, free = deque(cells), {}, list(range(workers))
    bar = tqdm(total=len(cells), desc="cells", unit="cell", dynamic_ncols=True, disable=None)
    failed, stop = 0, False
    try:
        while pending or running:
            while pending and free and not stop:
                cell = pending.popleft()
                if is_locked(cell.folder):
                    cell.result = "locked"
                    bar.update()
                    continue
                slot = free.pop(0)
                running[launch(cell, data_dir, slot, workers, gpus)] = (cell, slot)
                bar.set_postfix(running=len(running), failed=failed)
            time.sleep(0.2)
            for proc in [p for p in running if p.poll() is not None]:
                cell, slot = running.pop(proc)
                free.append(slot)
                cell.result = collect(cell, proc.returncode)
                failed += cell.result != "completed"
                bar.update()
                bar.set_postfix(running=len(running), failed=failed)
                tqdm.write(f"[{bar.n}/{len(cells)}] {cell.name}: {cell.result}")
                if failed and fail_fast and not stop:
                    stop = True
                    for p in running:
                        p.send_signal(signal.SIGINT)  # train.py records 'interrupted' and exits
    except KeyboardInterrupt:
        for p in running:
            p.send_signal(signal.SIGINT)
        for p in running:
            p.wait()
        raise
    finally:
        bar.close()
    for cell in pending:
        cell.result = "not started"
    return failed
