"""Experiment trackers (params key `loggers`: tensorboard, mlflow, wandb) that show a run exactly as its folder has it.

The folder stays the source of truth; a tracker mirrors it. MODEL_DIR/trackers.json names the run before epoch 1
(a key of its own, which is also the W&B run id and an MLflow tag), so a resume, a requeued Slurm job or a search
rerun reopens the same run. What a tracker is handed is always the folder's whole history (history.json's epochs
and checks): it logs the rows it does not hold yet, so an epoch a resume trains again is never logged twice and
whatever a tracker missed (a SIGKILL, a store that was down) is logged by the next session. A search writes its
parent run's ids into the parent's trackers.json; a cell beside it finds them there and becomes its child.
docs/trackers.md says more.

All tracker work runs in a helper process forked at start-up (core/trackers/helper.py): importing MLflow holds the
GIL for a second, and a store may be slow; the training process only sends it one-line messages. A failing store
is one warning, after which the run goes on without that tracker.
"""

import importlib.util
import json
import logging
import os
import secrets
import time

from core.forked import fork
from utils import UserError, read_json_object, write_json

log = logging.getLogger(__name__)

RECORD = "trackers.json"
# name: (module to import, pip command): an optional install each (requirements-trackers.txt has all three)
PACKAGES = {
    "tensorboard": ("tensorboard", "pip install tensorboard"),
    "mlflow": ("mlflow", "pip install 'mlflow>=3.13'"),
    "wandb": ("wandb", "pip install 'wandb>=0.31'"),
}
CLOSE_TIMEOUT_S = 120  # a store that hangs longer at the end of a run is left behind, with a warning


def check_installed(loggers, where):
    """A one-line UserError naming the pip command for a tracker that is not installed: before anything is written."""
    for name in loggers:
        module, pip = PACKAGES[name]
        if importlib.util.find_spec(module) is None:
            raise UserError(f"{where}: params key 'loggers' names {name}, which is not installed ({pip})")


def read_record(folder):
    """FOLDER/trackers.json: {tracker: what reopens its run, "run_key": ...}; {} when missing or unreadable."""
    return read_json_object(os.path.join(folder, RECORD)) or {}


def write_record(folder, record):
    if record != read_record(folder):  # a rerun that changes nothing leaves the file as it was
        write_json(os.path.join(folder, RECORD), record)


def parent_record(model_dir):
    """The search's trackers.json beside this folder (the parent's), when this folder is a cell of a search that
    tracks: {tracker: parent run's facts}; {}."""
    record = read_record(os.path.dirname(os.path.abspath(model_dir)))
    return record if record.get("search") else {}


def artifact_files(model_dir, checkpoints):
    """What a run's tracker keeps at the end of a session: figures, metrics and history files (and the checkpoints
    when log_checkpoints is 1)."""
    names = sorted(n for n in os.listdir(model_dir) if not n.startswith("."))
    keep = [n for n in names if n.endswith(".png") or n.endswith(".json") and n.startswith(
        ("metrics_", "history", "params_effective"))]
    if checkpoints:
        keep += [n for n in names if n.endswith(".pth.tar")]
    return [os.path.join(model_dir, n) for n in keep]


class Trackers:
    """The run's trackers, seen from the training process: a helper process forked early (its imports overlap with
    building the data and the model), told what happened in one-line messages. Without loggers, every call does
    nothing."""

    def __init__(self, model_dir, loggers):
        self.dir, self.fd, self.pid = model_dir, None, None
        if loggers:
            from core.trackers.helper import serve

            read_end, self.fd = os.pipe()
            self.pid = fork(serve, read_end, self.fd, model_dir, list(loggers))
            os.close(read_end)

    def open(self, facts, up_to_epoch):
        """Name the run in trackers.json (now, before epoch 1), then have the helper open each tracker's run and log
        the epochs up to `up_to_epoch` (those a resume keeps) that it lacks."""
        if self.fd is None:
            return
        record = read_record(self.dir)
        write_record(self.dir, {**record, "run_key": record.get("run_key") or secrets.token_hex(6)})
        self.send({"open": facts, "up_to": up_to_epoch})

    def sync(self):
        """history.json changed: each tracker logs the rows it lacks."""
        self.send({"sync": 1})

    def end(self, status, reason, files):
        """Keep `files` as artifacts and end each run in `status` (a status.json word); wait for the helper (at most
        CLOSE_TIMEOUT_S) so that nothing is lost when the process exits."""
        self.send({"end": [status, reason, files]})
        self.close()

    def send(self, message):
        if self.fd is None:
            return
        try:  # a message is one write of a few hundred bytes: atomic, from the loop's thread or the writer's
            os.write(self.fd, (json.dumps(message) + "\n").encode())
        except BrokenPipeError:
            os.close(self.fd)
            self.fd = None
            log.warning("warning: the trackers' helper stopped (its error is above); the run goes on without them")

    def close(self):
        if self.fd is None:
            return
        self.send({"close": True})  # a message, not the pipe's end: DataLoader workers forked later hold it too
        os.close(self.fd)
        self.fd = None
        deadline = time.monotonic() + CLOSE_TIMEOUT_S
        while os.waitpid(self.pid, os.WNOHANG) == (0, 0):
            if time.monotonic() > deadline:
                os.kill(self.pid, 9)
                os.waitpid(self.pid, 0)
                log.warning(f"warning: trackers: no answer in {CLOSE_TIMEOUT_S} s; left behind (the folder has "
                            f"everything; a resume logs what they missed)")
                return
            time.sleep(0.01)
