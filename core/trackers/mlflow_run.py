"""One folder's MLflow run (params key loggers: ["mlflow"]), through MlflowClient: no global active run, no atexit.

The store: MLFLOW_TRACKING_URI when set; else a sqlite database in a folder `mlflow/` beside the experiment
folder (experiments/mlflow/mlflow.db for experiments/base_model, artifacts in experiments/mlflow/artifacts), not
MLflow's file store, which MLflow >= 3.13 refuses. A resume uses the store its run is in (trackers.json); a search
cell the store of its search. The experiment: MLFLOW_EXPERIMENT_NAME, else the name of the folder holding the
experiment folders ("experiments").
"""

import contextlib
import logging
import os
import tempfile
import time

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from core.trackers.rows import END_STATE, check_metrics, check_step, default_name, epoch_metrics
from utils import dead_writers_temp_files, writer

logging.getLogger("mlflow").setLevel(logging.WARNING)  # not "Creating initial MLflow database tables" in train.log
logging.getLogger("alembic").setLevel(logging.WARNING)

STORE_DIR = "mlflow"
PARENT_TAG, KEY_TAG = "mlflow.parentRunId", "run_key"
MAX_PARAM, MAX_BATCH, MAX_METRICS = 6000, 100, 1000  # MLflow's limits: a param value, params and metrics per call
RETRIES = 8  # cells running at once share a sqlite file: "database is locked" waits and retries


def default_store(model_dir):
    """sqlite:///<the folder holding MODEL_DIR>/mlflow/mlflow.db"""
    return f"sqlite:///{os.path.join(os.path.dirname(os.path.abspath(model_dir)), STORE_DIR, 'mlflow.db')}"


def artifact_folder(uri):
    """A sqlite store's artifacts go beside its database (not ./mlruns of whatever folder the run started in); a
    server's, where the server puts them."""
    return os.path.join(os.path.dirname(uri.removeprefix("sqlite:///")), "artifacts") if uri.startswith(
        "sqlite:///") else None


def retried(fn, *args, **kwargs):
    """fn(...), retried while sqlite says the database is locked (several cells writing at one instant)."""
    for attempt in range(RETRIES):
        try:
            return fn(*args, **kwargs)
        except MlflowException as e:
            if "locked" not in str(e) or attempt == RETRIES - 1:
                raise
            time.sleep(0.1 * 2 ** attempt)


def connect(uri, experiment_name):
    """(client, experiment id): the store created and the experiment made if new (two processes racing to make
    them: the loser reads the winner's)."""
    if uri.startswith("sqlite:///"):
        create_store(uri.removeprefix("sqlite:///"))
    client = retried(MlflowClient, uri)
    found = retried(client.get_experiment_by_name, experiment_name)
    if found is not None:
        return client, found.experiment_id
    try:
        return client, retried(client.create_experiment, experiment_name,
                                   artifact_location=artifact_folder(uri))
    except MlflowException:
        found = retried(client.get_experiment_by_name, experiment_name)
        if found is None:
            raise
        return client, found.experiment_id


def create_store(db):
    """A new sqlite store is made under a temp name, then linked into place (never over one another process made
    meanwhile): MLflow creates its tables in many steps, and a run SIGKILLed among them left a store that no later
    run could open ("duplicate column name")."""
    if os.path.exists(db):
        return
    folder = os.path.dirname(db)
    os.makedirs(folder, exist_ok=True)
    for path in dead_writers_temp_files(folder):  # what creations killed before us left
        with contextlib.suppress(OSError):
            os.remove(path)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".tmp-{writer()}-", suffix=os.path.basename(db))
    os.close(fd)
    try:
        retried(MlflowClient(f"sqlite:///{tmp}").search_experiments)
        with contextlib.suppress(FileExistsError):
            os.link(tmp, db)
    finally:
        os.remove(tmp)


def store_of(model_dir, saved, parent):
    """(tracking URI, experiment name) of a run: its own (a resume), its search's, the environment's, the
    default."""
    if saved or parent:
        known = saved or parent
        return known["tracking_uri"], known["experiment"]
    uri = os.environ.get("MLFLOW_TRACKING_URI") or default_store(model_dir)
    return uri, os.environ.get("MLFLOW_EXPERIMENT_NAME") or default_name(model_dir)


class MlflowRun:
    def __init__(self, model_dir, facts, saved, parent, key):
        """key: trackers.json's run_key, a tag of the run: a session killed between creating the run and writing its
        id finds it by the key."""
        uri, experiment = store_of(model_dir, saved, parent)
        self.client, experiment_id = connect(uri, experiment)
        run_id = (saved or {}).get("run_id") or self.run_with_key(experiment_id, key)
        run = self.reopened(run_id) if run_id else None
        if run is None:
            tags = dict(facts["tags"], **{KEY_TAG: key}, **({PARENT_TAG: parent["run_id"]} if parent else {}))
            run = retried(self.client.create_run, experiment_id, run_name=facts["name"], tags=tags)
        self.id = run.info.run_id
        self.saved = {"run_id": self.id, "tracking_uri": uri, "experiment": experiment}
        self.log_params(facts["params"], run.data.params)
        self.logged = {"epoch": self.steps("epoch"), "val_checks/epoch": self.steps("val_checks/epoch")}

    def run_with_key(self, experiment_id, key):
        found = retried(self.client.search_runs, [experiment_id], filter_string=f"tags.{KEY_TAG} = '{key}'",
                        max_results=1)
        return found[0].info.run_id if found else None

    @classmethod
    def attach(cls, saved):
        """The run trackers.json names, as it is (to end it from another process: the search's)."""
        run = cls.__new__(cls)
        run.client, run.id = retried(MlflowClient, saved["tracking_uri"]), saved["run_id"]
        return run

    def is_running(self):
        return retried(self.client.get_run, self.id).info.status == "RUNNING"

    def reopened(self, run_id):
        """The run of an earlier session set RUNNING again (it may have been left RUNNING by a SIGKILL, or ended
        KILLED by a pause); None when the store no longer has it (a new run is made)."""
        try:
            run = retried(self.client.get_run, run_id)
        except MlflowException:
            return None
        retried(self.client.update_run, run_id, status="RUNNING")
        return run

    def log_params(self, params, logged):
        """Params are write-once in MLflow: the first session logs them all; a resume that changed a resumable
        key (num_epochs raised) records the new value as a tag resumed_with.<key>."""
        values = {k: str(v)[:MAX_PARAM] for k, v in params.items()}
        new = [Param(k, v) for k, v in values.items() if k not in logged]
        changed = [RunTag(f"resumed_with.{k}", v) for k, v in values.items() if k in logged and logged[k] != v]
        for i in range(0, max(len(new), len(changed)), MAX_BATCH):
            retried(self.client.log_batch, self.id, params=new[i:i + MAX_BATCH], tags=changed[i:i + MAX_BATCH])

    def steps(self, key):
        return {m.step for m in retried(self.client.get_metric_history, self.id, key)}

    def sync(self, epochs, checks):
        """Log the rows the store lacks, one call per row (a row is in the store whole or not at all)."""
        for rows, marker, metrics, step in ((epochs, "epoch", epoch_metrics, lambda r: r["epoch"]),
                                            (checks, "val_checks/epoch", check_metrics, check_step)):
            for row in rows:
                if step(row) in self.logged[marker]:
                    continue
                stamp, values = int(time.time() * 1000), metrics(row)
                values[marker] = values.pop(marker)
                batch = [Metric(k, float(v), stamp, step(row)) for k, v in values.items()]
                for i in range(0, len(batch), MAX_METRICS):  # the marker last: a row cut in two is logged again
                    retried(self.client.log_batch, self.id, metrics=batch[i:i + MAX_METRICS])
                self.logged[marker].add(step(row))

    def end(self, status, reason, files):
        for path in files:
            retried(self.client.log_artifact, self.id, path)
        retried(self.client.set_tag, self.id, "status_reason", reason or status)
        retried(self.client.set_terminated, self.id, status=END_STATE[status])
