"""The tasks this template trains, one line each: the `task` params key picks one.

A task is a package of model/ whose task.py subclasses model/task.py's Task (read that file first). To add one,
write model/<name>/ and add its line to REGISTRY. Importing this module imports no torch: params validation, the search
and the result tables read the tasks' facts (metrics, loss terms, defaults) cheaply.
"""

import functools
import importlib
import os

REGISTRY = (  # one line per task: model/<name>/task.py and its Task subclass
    "model.classification.task.Classification",
    "model.segmentation.task.Segmentation",
    "model.keypoints.task.Keypoints",
    "model.detection.task.Detection",
)


def instance(path):
    module, name = path.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)()


TASKS = {task.name: task for task in map(instance, REGISTRY)}


def load(name):
    """The task called `name` (a Task)."""
    return TASKS[name]


def metrics_of(name):
    """{metric name: Metric} of one task, in the order an epoch reports them."""
    return TASKS[name].metrics


@functools.cache
def loss_defaults():
    """{key of the loss block: default} over every task's terms: a run's params carry them all, another task's at
    this default (params validation refuses one set otherwise). A name two tasks share takes the first task's
    default here; each task's own terms take its own defaults (core/config.py resolve)."""
    out = {}
    for task in TASKS.values():
        for key, default in task.loss_keys().items():
            out.setdefault(key, default)
    return out


def data_dir_for(task, configured=None, given=None, trained=None):
    """The data set a run uses: `given` (--data_dir), else `trained` (what a trained run's record.json says it
    trained on: its resume and evaluation use the same), else `configured` (params data_dir: relative to the
    repository, or absolute), else the task's own; a default data set is built on first use."""
    if given:
        return ensure_data(given)
    if trained:
        if not os.path.exists(ensure_data(trained)):
            from utils import UserError

            raise UserError(f"{trained}: the data set this run trained on (its record.json) is missing; "
                            "pass --data_dir")
        return trained
    if configured:
        from core.paths import repo_path

        return ensure_data(repo_path(configured))
    return ensure_data(TASKS[task].data)


def ensure_data(data_dir):
    """Build a task's default data set on first use; any other missing folder is the user's to provide."""
    if os.path.exists(data_dir):
        return data_dir
    from core.paths import ROOT

    for task in TASKS.values():
        if task.data and os.path.abspath(data_dir) in (os.path.abspath(task.data), os.path.join(ROOT, task.data)):
            print(f"building the default {task.name} data set in {data_dir} (first use)")
            task.build_data(data_dir)
            return data_dir  # tasks may share a default folder: built once
    return data_dir
