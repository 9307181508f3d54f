"""Experiment trackers (params key `loggers`: tensorboard, mlflow, wandb) that show a run exactly as its folder has it.

The folder stays the source of truth; a tracker mirrors it. Each tracker's run id is written into
MODEL_DIR/trackers.json before epoch 1, so a resume, a requeued Slurm job or a search rerun reopens the same run.
What a tracker is handed is always the folder's whole history (history.json's epochs and checks): it logs the rows
it does not hold yet, so an epoch a resume trains again is never logged twice and whatever a tracker missed (a
SIGKILL, a store that was down) is logged by the next session. A search writes its parent run's ids into the
parent's trackers.json; a cell beside it finds them there and becomes its child. docs/trackers.md says more.

All tracker work runs on one background thread: a slow store never slows training, and a failing one is one
warning, after which the run goes on without that tracker.
"""

import importlib.util
import logging
import os
import queue
import threading

from utils import UserError, one_line, read_json_object, write_json

log = logging.getLogger(__name__)

RECORD = "trackers.json"
# name: (module to import, pip command): an optional install each (requirements-trackers.txt has all three)
PACKAGES = {
    "tensorboard": ("tensorboard", "pip install tensorboard"),
    "mlflow": ("mlflow", "pip install 'mlflow>=3.13'"),
    "wandb": ("wandb", "pip install 'wandb>=0.31'"),
}
# a container's folders as the host names them (core/search/container.py passes them): what a tracker shows
HOST_MODEL_DIR, HOST_DATA_DIR = "TRACKER_HOST_MODEL_DIR", "TRACKER_HOST_DATA_DIR"
OPEN_TIMEOUT_S, CLOSE_TIMEOUT_S = 60, 120  # a store that hangs longer is given up, with a warning


def check_installed(loggers, where):
    """A one-line UserError naming the pip command for a tracker that is not installed: before anything is written."""
    for name in loggers:
        module, pip = PACKAGES[name]
        if importlib.util.find_spec(module) is None:
            raise UserError(f"{where}: params key 'loggers' names {name}, which is not installed ({pip})")


def read_record(folder):
    """MODEL_DIR/trackers.json: {tracker: what reopens its run}; {} when missing or unreadable."""
    return read_json_object(os.path.join(folder, RECORD)) or {}


def write_record(folder, record):
    if record != read_record(folder):  # a rerun that changes nothing leaves the file as it was
        write_json(os.path.join(folder, RECORD), record)


def parent_record(model_dir):
    """The search's trackers.json beside this folder (the parent's), when this folder is a cell of a search that
    tracks: {tracker: parent run's facts}; {}."""
    record = read_record(os.path.dirname(os.path.abspath(model_dir)))
    return record if record.get("search") else {}


def default_name(model_dir):
    """A new run's MLflow experiment and W&B project, unless the environment names one: the name of the folder
    holding the experiment folder (experiments/base_model: "experiments")."""
    return os.path.basename(os.path.dirname(os.environ.get(HOST_MODEL_DIR) or os.path.abspath(model_dir)))


def backend(name):
    """The class that logs to tracker `name` (imported only when asked for)."""
    if name == "mlflow":
        from core.trackers.mlflow_run import MlflowRun
        return MlflowRun
    if name == "wandb":
        from core.trackers.wandb_run import WandbRun
        return WandbRun
    from core.trackers.tensorboard_run import TensorboardRun
    return TensorboardRun


class Trackers:
    """The run's trackers, driven from one worker thread. Created early (importing mlflow takes seconds, overlapped
    with building the data and the model); open() is the one call that waits, for the run ids to be on disk."""

    def __init__(self, model_dir, loggers):
        self.dir, self.names = model_dir, list(loggers)
        self.runs, self.jobs = {}, queue.Queue()
        self.thread = threading.Thread(target=self.work, name="trackers", daemon=True) if loggers else None
        if self.thread:
            self.jobs.put((self.import_backends, ()))
            self.thread.start()

    def __bool__(self):
        return bool(self.names)

    def work(self):
        while True:
            fn, args = self.jobs.get()
            try:
                fn(*args)
            finally:
                self.jobs.task_done()

    def submit(self, fn, *args):
        if self.thread and self.names:
            self.jobs.put((fn, args))

    def wait(self, timeout):
        """Wait for the queued work, at most `timeout` s (a store that hangs is left behind, with a warning)."""
        done = threading.Event()
        self.submit(done.set)
        if self.names and not done.wait(timeout):
            log.warning(f"warning: trackers: {', '.join(self.names)} did not answer in {timeout} s; left behind "
                        f"(the folder has everything; a resume logs what they missed)")
            self.names = []

    def guarded(self, name, fn, *args):
        """fn(*args) for tracker `name`; its first error is one warning and the end of that tracker in this run."""
        if name not in self.names:
            return
        try:
            fn(*args)
        except Exception as e:
            self.names.remove(name)
            self.runs.pop(name, None)
            log.warning(f"warning: {name}: {one_line(e)[:300]}; training goes on without it (the folder has "
                        f"everything; a resume logs what it missed)")

    def import_backends(self):
        self.classes = {}
        for name in list(self.names):
            self.guarded(name, lambda n=name: self.classes.setdefault(n, backend(n)))

    def open(self, facts, epochs, checks):
        """Open (or reopen) each tracker's run and write their ids into trackers.json; then log the rows of the
        history a resume keeps that a tracker lacks. Waits for the ids (at most OPEN_TIMEOUT_S)."""
        self.submit(self.open_runs, facts)
        self.wait(OPEN_TIMEOUT_S)
        self.sync(epochs, checks)

    def open_runs(self, facts):
        saved, parent = read_record(self.dir), parent_record(self.dir)
        for name in list(self.names):
            self.guarded(name, self.open_one, name, facts, saved.get(name), parent.get(name))
        record = {**saved, **{name: run.saved for name, run in self.runs.items()}}
        self.guarded_all(write_record, self.dir, record)

    def open_one(self, name, facts, saved, parent):
        self.runs[name] = self.classes[name](self.dir, facts, saved, parent)

    def guarded_all(self, fn, *args):
        try:
            fn(*args)
        except OSError as e:
            log.warning(f"warning: {RECORD}: {one_line(e)}; a resume will open new tracker runs")

    def sync(self, epochs, checks):
        """Log the rows of history.json (epochs, checks) that each tracker does not have yet."""
        self.submit(self.sync_runs, list(epochs), list(checks))

    def sync_runs(self, epochs, checks):
        before = {name: dict(run.saved) for name, run in self.runs.items()}
        for name, run in list(self.runs.items()):
            self.guarded(name, run.sync, epochs, checks)
        if any(run.saved != before.get(name) for name, run in self.runs.items()):
            self.guarded_all(write_record, self.dir, {**read_record(self.dir),
                                                      **{n: r.saved for n, r in self.runs.items()}})

    def end(self, status, reason, files):
        """The run's figures and metrics files (`files`) as artifacts, then the run's end state; waits (at most
        CLOSE_TIMEOUT_S) so that nothing is lost when the process exits."""
        for name, run in list(self.runs.items()):
            self.submit(self.guarded, name, run.end, status, reason, files)
        self.wait(CLOSE_TIMEOUT_S)


def artifact_files(model_dir, checkpoints):
    """What a run's tracker keeps at its end: figures, metrics and history files (and the checkpoints when
    log_checkpoints is 1)."""
    names = sorted(os.listdir(model_dir))
    keep = [n for n in names if n.endswith(".png") or (n.endswith(".json") and n.startswith(("metrics_", "history",
                                                                                               "params_effective")))]
    if checkpoints:
        keep += [n for n in names if n.endswith(".pth.tar")]
    return [os.path.join(model_dir, n) for n in keep if not n.startswith(".")]


# ---------------------------------------------------------------- what every tracker logs

# a run's status.json word -> the end state trackers know (MLflow's names; W&B and TensorBoard map them)
END_STATE = {"completed": "FINISHED", "paused": "KILLED", "pruned": "KILLED", "interrupted": "KILLED",
             "failed": "FAILED", "diverged": "FAILED"}


def epoch_metrics(row):
    """{name: value} of one history.json epoch row, as every tracker names them (step: the epoch)."""
    out = {"epoch": row["epoch"], "time/images_per_s": row["images_per_s"], "time/epoch_s": row["epoch_s"]}
    for split in ("train", "val"):
        out |= {f"{split}/{k}": v for k, v in (row.get(split) or {}).items()}
    out |= {f"lr/group{i}": lr for i, lr in enumerate(row["lr"])}
    for kind in ("grad_norm", "update_ratio"):
        out |= {f"{kind}/{k}": v for k, v in row.get(kind, {}).items()}
    return out


def check_metrics(row):
    """{name: value} of a validation within an epoch (history.json 'checks'); its step is row['step'], the batches
    trained so far."""
    return {"val_checks/epoch": row["epoch"], **{f"val_checks/{k}": v for k, v in row["val"].items()}}


def check_step(row):
    return row.get("step", row["batch"])  # history written before checks carried their step: the batch


def run_facts(model_dir, params, data_dir, record_session):
    """What identifies a run in a tracker besides its metrics: its name (the folder's), tags (where the folder is,
    the code version, the data set and its fingerprint) and the effective params flattened to dotted keys."""
    from core.config import flatten

    git = record_session.get("git") or {}
    image = record_session.get("container") or {}
    code = (git.get("commit") or "")[:12] + ("+dirty" if git.get("dirty") else "") or image.get("digest") or \
        image.get("id") or "unknown"
    host_dir = os.environ.get(HOST_MODEL_DIR) or os.path.abspath(model_dir)
    tags = {"model_dir": host_dir, "code_version": code,
            "model_code": (record_session.get("model_code") or {}).get("sha1", ""),
            "data_set": os.environ.get(HOST_DATA_DIR) or os.path.abspath(data_dir), "data_fingerprint":
            data_fingerprint(data_dir), "task": params["task"]}
    return {"name": os.path.basename(host_dir.rstrip("/")), "tags": tags, "params": flatten(params)}




def data_fingerprint(data_dir):
    """A short hash of the data set's verified-image manifest (each image's path, size and mtime: core/data/
    imagecache.py), so two runs on differently edited copies of a set are told apart; '' where there is none."""
    import hashlib

    from core.data.imagecache import CACHE_DIR, MANIFEST

    try:
        with open(os.path.join(data_dir, CACHE_DIR, MANIFEST), "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()[:16]
    except OSError:
        return ""
