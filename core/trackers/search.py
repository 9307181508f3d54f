"""A search's trackers: one parent run per search, its cells' runs its children.

search_hyperparams.py opens the parent run before any cell starts (which also makes the MLflow store and
experiment once, so cells starting together never race on creating them) and writes its ids into
PARENT_DIR/trackers.json with "search": true. A cell finds that file beside its folder, whatever launched it (the
local pool, warm cells, Slurm, Ray; a container gets it mounted), and opens its run as a child: MLflow's
mlflow.parentRunId tag, a W&B group named after the search folder. At the end the parent run keeps results.md and
the search's figures.
"""

import logging
import os
import secrets

from core.config import upgrade
from core.trackers import check_installed, read_record, write_record
from core.trackers.rows import END_STATE
from utils import one_line, read_json_object

log = logging.getLogger(__name__)
PARENT_TRACKERS = ("mlflow", "wandb")  # TensorBoard has no runs to nest


def search_loggers(parent_dir):
    """The trackers a search's params.json asks for (a retired `tensorboard` key read as today's `loggers`)."""
    params = upgrade(dict(read_json_object(os.path.join(parent_dir, "params.json")) or {}))
    loggers = params.get("loggers") or []
    return [name for name in loggers if isinstance(name, str)]


def open_search(parent_dir):
    """Open (or reopen) the search's parent run in each tracker its params name; write PARENT_DIR/trackers.json.
    A tracker that fails is one warning: the cells then run as runs of their own."""
    loggers = [n for n in search_loggers(parent_dir) if n in PARENT_TRACKERS]
    if not loggers:
        return
    check_installed(loggers, os.path.join(parent_dir, "params.json"))
    saved = read_record(parent_dir)
    record = {"search": True, "run_key": saved.get("run_key") or secrets.token_hex(6)}
    for name in loggers:
        try:
            record[name] = open_parent(name, parent_dir, saved.get(name), record["run_key"])
        except Exception as e:
            log.warning(f"warning: {name}: {one_line(e)[:300]}; the cells are logged without a parent run")
    write_record(parent_dir, record)


def open_parent(name, parent_dir, saved, key):
    folder = os.path.basename(os.path.abspath(parent_dir).rstrip("/"))
    if name == "wandb":
        from core.trackers.wandb_run import default_project

        return saved or {"group": folder, "project": default_project(parent_dir)}
    from core.trackers.mlflow_run import MlflowRun

    facts = {"name": folder, "tags": {"model_dir": os.path.abspath(parent_dir), "search": "1"}, "params": {}}
    return MlflowRun(parent_dir, facts, saved, None, key).saved


def search_files(parent_dir):
    """What the parent run keeps: results.md and .csv, and the search's figures."""
    names = sorted(os.listdir(parent_dir))
    return [os.path.join(parent_dir, n) for n in names if n.startswith("results.") or n.endswith((".png", ".html"))]


def close_search(parent_dir, status, files):
    """The parent run keeps `files` (results.md, the figures) and ends in `status` (a status.json word)."""
    mlflow = read_record(parent_dir).get("mlflow")
    if not mlflow:
        return
    try:
        from core.trackers.mlflow_run import MlflowRun

        MlflowRun.attach(mlflow).end(status, None, files)
    except Exception as e:
        log.warning(f"warning: mlflow: {one_line(e)[:300]}; the search's parent run was not closed")


def given_up(cell_dir, status, reason):
    """A cell the search recorded as ended when its process could not (killed, lost): its MLflow run, left
    RUNNING, ends too."""
    mlflow = read_record(cell_dir).get("mlflow")
    if not mlflow or status not in END_STATE:
        return
    try:
        from core.trackers.mlflow_run import MlflowRun

        run = MlflowRun.attach(mlflow)
        if run.is_running():
            run.end(status, reason, [])
    except Exception as e:
        log.warning(f"warning: mlflow: {one_line(e)[:300]}; {cell_dir}'s run was left as it was")
