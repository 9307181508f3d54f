"""The task registry: the tasks the machinery knows, by name. model/tasks.py fills it, one line per task, and every
entry point (train.py, evaluate.py, ..., search_hyperparams.py) imports model.tasks before it asks core/ for a task;
core/ itself never imports model/.

    register("model.classification.task.Classification")   # model/tasks.py, once per task
    task = load(params.task)                                  # a Task (model/task.py)

Registering imports a task's task.py, which imports no torch: params validation, the search and the result tables
read the tasks' facts (metrics, loss terms, defaults) cheaply.
"""

import functools
import importlib
import os

TASKS = {}  # {name: Task}, in registration order
PATHS = []  # what register was given: a cell's own process on Slurm or Ray registers the same (core/search/cluster.py)


def register(*paths):
    """Add the Task subclass at each dotted path ("package.module.ClassName"), by its name; once per path."""
    for path in paths:
        if path not in PATHS:
            module, name = path.rsplit(".", 1)
            task = getattr(importlib.import_module(module), name)()
            TASKS[task.name] = task
            PATHS.append(path)


def registered():
    """{name: Task} of every registered task; a clear error when none is (model.tasks was not imported)."""
    if not TASKS:
        raise RuntimeError("no task registered: model/tasks.py registers them in core/tasks.py when imported; "
                           "import it before asking core/ for a task")
    return TASKS


def load(name):
    """The task called `name` (a Task)."""
    return registered()[name]


def metrics_of(name):
    """{metric name: Metric} of one task, in the order an epoch reports them."""
    return load(name).metrics


@functools.cache
def loss_defaults():
    """{key of the loss block: default} over every task's terms: a run's params carry them all, another task's at
    this default (params validation refuses one set otherwise). A name two tasks share takes the first task's
    default here; each task's own terms take its own defaults (core/config.py resolve)."""
    out = {}
    for task in registered().values():
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
    return ensure_data(load(task).data)


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
