"""Light bookkeeping of one experiment folder: status record, folder lock, resume decision, history.json.

No torch or matplotlib here: search_hyperparams.py reads cell folders through this module and starts fast.
"""

import contextlib
import enum
import fcntl
import glob
import json
import math
import os
import signal
import socket
import time

from core.config import KEYS, flatten
from core.keys import RETIRED
from utils import (
    LAUNCHER_PID,
    RANK_ERRORS,
    FolderBusy,
    UserError,
    dead_writers_temp_files,
    load_checkpoint,
    now,
    read_json,
    read_json_field,
    read_json_object,
    write_json,
)

# the names of a run folder's files, known here only
STATUS, EFFECTIVE, LOCK, LOG, HISTORY = "status.json", "params_effective.json", ".lock", "train.log", "history.json"
LAST, BEST = "last.pth.tar", "best.pth.tar"  # the commit point of each epoch; the best epoch's weights
GALLERY = "gallery"  # gallery/epoch_NNN.png: predictions.png as each redraw left it (core/rundir/plotter.py)


def metrics_file(split, weights, variant=None):
    """metrics_val_best_weights.json (train.py), metrics_test_best_weights.json (evaluate.py), ...; a variant of
    evaluate.py's names its options: metrics_test_best_weights_tta_hflip.json (--tta hflip),
    metrics_test_best_weights_window96_stride48.json (--eval_window 96 --eval_stride 48)."""
    return f"metrics_{split}_{weights}_weights" + (f"_{variant}" if variant else "") + ".json"


class Status(enum.StrEnum):
    """What status.json says of a run, and how train.py's exit code tells it to a search."""

    QUEUED = "queued"  # submitted to Slurm, not started
    RUNNING = "running"
    COMPLETED = "completed"  # all epochs, or early stopping: a rerun leaves it alone
    DIVERGED = "diverged"  # a non-finite loss
    INTERRUPTED = "interrupted"  # Ctrl-C, SIGTERM, a scheduler's requeue: resumable
    PAUSED = "paused"  # stopped at --stop_at_epoch (a successive-halving rung): resumable, waiting for promotion
    PRUNED = "pruned"  # a paused cell its search chose not to promote (a rerun with more budget may still)
    FAILED = "failed"  # anything else (an exception, a kill)

    def exited_with(self, code):
        """Whether `code` is the exit code train.py ends with after recording this status itself (a failure has
        none: the search adds the exit code and the log's tail to its record)."""
        if code == -signal.SIGINT:  # killed by Ctrl-C before Python could turn it into exit code 130
            return self == Status.INTERRUPTED
        return EXIT_CODES.get(self) == code

    @property
    def exit_code(self):
        return EXIT_CODES.get(self, 1)


# what train.py exits with; a pause is a normal end of the command (it did what --stop_at_epoch asked)
EXIT_CODES = {Status.COMPLETED: 0, Status.PAUSED: 0, Status.DIVERGED: 1, Status.INTERRUPTED: 130}


def checkpoint_path(model_dir, which="last"):
    return os.path.join(model_dir, {"last": LAST, "best": BEST}[which])


def check_model_dir(model_dir):
    if not os.path.exists(model_dir):
        raise UserError(f"--model_dir {model_dir}: not found (create it with a params.json)")
    if not os.path.isdir(model_dir):
        raise UserError(f"--model_dir {model_dir}: is a file, expected a folder")
    return os.path.join(model_dir, "params.json")


def read_status(model_dir):
    """The status record, or {} when absent or unreadable (a missing record must never stop a run)."""
    try:
        record = read_json(os.path.join(model_dir, STATUS))
    except UserError:
        return {}
    return record if isinstance(record, dict) else {}


def write_status(model_dir, status, **fields):
    record = read_status(model_dir)
    record.update(fields, status=status, updated_at=now(), host=socket.gethostname(), pid=os.getpid())
    if LAUNCHER_PID in os.environ:  # several processes: pid is rank 0's, this is the command the user started
        record["launcher_pid"] = int(os.environ[LAUNCHER_PID])
    if status == Status.RUNNING:
        record.setdefault("started_at", now())
        for stale in ("ended_at", "reason", "exit_code", "log_tail"):  # what an earlier session's end recorded
            record.pop(stale, None)
    else:
        record["ended_at"] = now()
    write_json(os.path.join(model_dir, STATUS), record)


HELD = set()  # the descriptors of the folder locks this process holds


def close_locks_in_child():
    """A forked child (a DataLoader worker, the figure helper) must not hold the folder's lock too: the lock would
    outlive a killed run until the child noticed."""
    while HELD:
        os.close(HELD.pop())


os.register_at_fork(after_in_child=close_locks_in_child)


@contextlib.contextmanager
def folder_lock(model_dir):
    """An exclusive lock on the folder while the block runs; the OS drops it if the process dies.

    Keeps two trainings (two searches, or a search and a hand-run train.py) out of one folder.
    """
    try:
        fd = os.open(os.path.join(model_dir, LOCK), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:  # a read-only folder or filesystem: nothing can be written there
        raise UserError(f"--model_dir {model_dir}: cannot write there ({e.strerror})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FolderBusy(f"--model_dir {model_dir}: another process is training this folder") from None
        HELD.add(fd)
        yield
    finally:
        HELD.discard(fd)
        os.close(fd)


def is_locked(model_dir, settle_s=10.0, ours_ending=False):
    """The one lock question: whether another process holds the folder's lock. A run that has written its last
    status (interrupted, failed, paused, ...) still holds the lock while it exits (in a container, until the runtime
    has torn it down): that process is waited for, up to settle_s, so a search rerun right after Ctrl-C resumes the
    cell instead of skipping it as running elsewhere. A status that says running ends the wait at once, unless the
    run that just ended was ours (ours_ending: a warm cell dying with its server may not have recorded its end)."""
    deadline = time.monotonic() + settle_s
    while _held_now(model_dir):
        if time.monotonic() > deadline or (not ours_ending and read_status(model_dir).get("status") == Status.RUNNING):
            return True
        time.sleep(0.05)
    return False


def _held_now(model_dir):
    """Whether any process holds the lock at this instant (is_locked asks what a search means). Probes with a shared
    lock on an existing lock file only, so it creates nothing (--dry_run writes nothing) and never blocks a train.py
    taking the lock."""
    try:
        fd = os.open(os.path.join(model_dir, LOCK), os.O_RDONLY)
    except OSError:  # no lock file: nobody has ever trained here
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def trained_checkpoint(model_dir, restore_file):
    """MODEL_DIR/<restore_file>.pth.tar, or a one-line error saying to train first."""
    check_model_dir(model_dir)
    path = checkpoint_path(model_dir, restore_file)
    if not os.path.isfile(path):
        raise UserError(f"--model_dir {model_dir}: no {os.path.basename(path)} (train it first: "
                        f"python train.py --model_dir {model_dir})")
    return path


def checkpoint_stamp(model_dir):
    """(mtime, size) of last.pth.tar, or None: enough to tell whether another process has trained here since."""
    try:
        st = os.stat(checkpoint_path(model_dir))
    except FileNotFoundError:
        return None
    return st.st_mtime_ns, st.st_size


def checkpoint_to_resume(model_dir, restore_file):
    """Path of the checkpoint to continue from, or None for a fresh run.

    Never silently overwrites a run: a folder that already holds a checkpoint must be resumed explicitly.
    """
    if restore_file:
        path = checkpoint_path(model_dir, restore_file)
        if not os.path.isfile(path):
            raise UserError(f"--restore_file {restore_file}: {path} not found")
        return path
    last = checkpoint_path(model_dir)
    if os.path.exists(last):
        status = read_status(model_dir)
        if status.get("status") == Status.COMPLETED:
            return last  # train.py reports it finished and does nothing
        done = f"status '{status['status']}', " if status.get("status") else ""
        raise UserError(f"--model_dir {model_dir}: already holds a run ({done}epoch {status.get('epoch', '?')}); "
                        f"continue it with --restore_file last, or move its outputs away to start over")
    kept = [name for name in (os.path.basename(checkpoint_path(model_dir, "best")), HISTORY)
            if os.path.exists(os.path.join(model_dir, name))]
    if kept:  # last.pth.tar deleted (to save space?): a fresh run would overwrite what the old one left
        raise UserError(f"--model_dir {model_dir}: holds a run's {' and '.join(kept)} but no last.pth.tar; move its "
                        f"outputs away to start over")
    return None


def nothing_to_do(model_dir, ckpt, params, path, stop_at):
    """The exit code of a run with nothing left to do (already finished, or already at its --stop_at_epoch), after
    repairing a status its end was killed before writing (unless a process holds the folder: that status is its
    own); None when training goes on. Checks a resume first."""
    if ckpt is None:
        return None
    record = read_status(model_dir)
    status = record.get("status")
    if status == Status.COMPLETED or ckpt.get("stop_reason"):  # a finished run's end may have been killed mid-write
        if status != Status.COMPLETED and not is_locked(model_dir, settle_s=0):
            write_status(model_dir, Status.COMPLETED, reason=ckpt["stop_reason"], epoch=ckpt["epoch"])
        print(f"{model_dir}: already completed (checkpoint at epoch {ckpt['epoch']}); nothing to do (to train "
              f"further, start a new folder with init_weights_path)")
        return 0
    check_resume(ckpt, params, record, path)
    if stop_at and ckpt["epoch"] >= stop_at:
        # a pause killed between its checkpoint and its status; not a run that went on past it (a promoted cell)
        if status not in (Status.PAUSED, Status.PRUNED) and not is_locked(model_dir, settle_s=0):
            write_status(model_dir, Status.PAUSED, reason=f"paused at epoch {ckpt['epoch']}", epoch=ckpt["epoch"])
        print(f"{model_dir}: already at epoch {ckpt['epoch']} (--stop_at_epoch {stop_at}); nothing to do")
        return Status.PAUSED.exit_code
    return None


@contextlib.contextmanager
def claim(model_dir, seen):
    """The folder's lock while the block runs, refused if its checkpoint changed since `seen` (checkpoint_stamp
    before the run decided what to do): someone trained here between that decision and the lock."""
    # under train.py's launcher of several processes, the launcher holds the lock for its ranks
    with contextlib.nullcontext() if os.environ.get(RANK_ERRORS) else folder_lock(model_dir):
        if checkpoint_stamp(model_dir) != seen:
            raise FolderBusy(f"--model_dir {model_dir}: another process trained this folder while this run was "
                             f"starting; run the command again")
        # what a killed run left half written: a checkpoint's temp file (only train.py writes checkpoints, and it
        # holds the lock), and any temp file whose writer is gone (its figure helper, killed with it)
        stale = glob.glob(os.path.join(glob.escape(model_dir), ".tmp-*.pth.tar*")) + dead_writers_temp_files(model_dir)
        for path in {*stale, *dead_writers_temp_files(os.path.join(model_dir, GALLERY))}:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
        yield


def check_resume(ckpt, params, status, path):
    """A resume continues the same run: same params (but the resumable ones), no later epochs thrown away, and
    the history it keeps readable."""
    reached = max(status.get("epoch", 0), later_checkpoint_epoch(path))
    if reached > ckpt["epoch"]:
        raise UserError(f"--restore_file: {path} is from epoch {ckpt['epoch']} but the run reached epoch "
                        f"{reached}; resuming would discard those epochs (start a new folder with "
                        f"init_weights_path instead)")
    history = os.path.join(os.path.dirname(path), HISTORY)
    if os.path.exists(history) and not isinstance(read_json(history), dict):  # read_json: one line if malformed
        raise UserError(f"{history}: not a JSON object; a resume keeps its rows: repair it or move it away")
    # a key the checkpoint predates counts as what runs did before it existed (wd_norm_bias: 1)
    old = {k: e.before_it_existed for k, e in KEYS.items()} | flatten(ckpt.get("params", {}))
    new = flatten(params.to_dict())
    changed = [f"{k}: {json.dumps(old.get(k))} -> {json.dumps(new.get(k))}" for k in sorted(set(old) | set(new))
               if not (k in KEYS and KEYS[k].resumable or k in RETIRED) and old.get(k) != new.get(k)]
    if changed:
        raise UserError(f"{path}: params changed since this checkpoint ({'; '.join(changed)}); resume with the "
                        f"same params, or start a new folder with init_weights_path")


def later_checkpoint_epoch(path):
    """The epoch of last.pth.tar when `path` is another checkpoint (best.pth.tar) that last.pth.tar is not a link
    of: epochs a resume from `path` would discard, whatever status.json says; else 0."""
    last = checkpoint_path(os.path.dirname(path))
    if os.path.abspath(path) == os.path.abspath(last) or not os.path.exists(last) or os.path.samefile(path, last):
        return 0
    ckpt = load_checkpoint(last)
    return ckpt.get("epoch", 0) if isinstance(ckpt, dict) else 0


def load_history(folder):
    """history.json's rows, or [] when absent or unreadable (a running or broken cell)."""
    return read_json_field(os.path.join(folder, HISTORY), "epochs", [])


def kept_rows(epochs, checks, up_to_epoch, batches=0):
    """The rows of history.json a resume keeps: the epochs up to `up_to_epoch` and the validations within them,
    and, resuming within the next epoch (a checkpoint after `batches` of its batches), its validations up to there."""
    return [r for r in epochs if r["epoch"] <= up_to_epoch], [
        r for r in checks if r["epoch"] <= up_to_epoch or (r["epoch"] < up_to_epoch + 1 and r["batch"] <= batches)]


def load_history_and_checks(folder):
    """(history.json's rows, its validations within epochs (val_every_batches)) from one read of the file, so the
    two agree even while a run rewrites it; [] for either when absent."""
    data = read_json_object(os.path.join(folder, HISTORY))
    return data.get("epochs", []), data.get("checks", [])


def is_finite(metrics):
    return all(math.isfinite(v) for v in metrics.values())
