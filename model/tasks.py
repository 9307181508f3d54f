"""The tasks this template trains: the `task` params key picks one.

A task is one package of model/: everything that depends on what a sample's target is (how a split is found and
checked, the Dataset and its augmentation, collate, the architectures, the losses, what an epoch accumulates and its
metrics, the evaluation report and the prediction figure). The machinery in core/ calls the same functions of every
task and never asks which one it has. To add a task, write model/<name>/ after model/segmentation/ (its task.py
lists what a task provides) and add one line to TASKS.

No torch import here, nor in a task's metrics.py: params validation, the search and the result tables read the
metrics without loading a task.
"""

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache


@dataclass(frozen=True)
class Metric:
    formula: Callable  # (cm, sums) -> float; cm: float64 confusion matrix (rows: true, columns: predicted) on the CPU
    minimize: bool = False  # True when lower is better
    min_classes: int = 2  # computed only with at least this many classes


@dataclass(frozen=True)
class Task:
    package: str  # model.<name>: the task itself
    data: str  # the default data set, built offline on first use (data/build_dataset.py)
    arch: str  # the default architecture
    monitor: str  # the default early_stopping.monitor_metric: the headline metric that picks best.pth.tar


TASKS = {
    "classification": Task("model.classification", data="data/digits", arch="small_cnn", monitor="accuracy"),
    "segmentation": Task("model.segmentation", data="data/digit_scenes", arch="unet", monitor="miou"),
    "keypoints": Task("model.keypoints", data="data/digit_points", arch="heatmap_unet", monitor="point_error"),
    "detection": Task("model.detection", data="data/digit_boxes", arch="small_fcos", monitor="map"),
}


def load(name):
    """The task's interface (model/<name>/task.py), imported on first use."""
    return importlib.import_module(TASKS[name].package + ".task")


@cache
def metrics_of(name):
    """{metric name: Metric} of one task, in the order an epoch reports them (model/<name>/metrics.py)."""
    return importlib.import_module(TASKS[name].package + ".metrics").METRICS


@cache
def all_metrics():
    """Every task's metrics in one registry, for what reads folders of any task (tables, plots, schedules). A
    name two tasks share (loss) has one direction in both."""
    out = {}
    for name in TASKS:
        for metric, m in metrics_of(name).items():
            if metric in out and out[metric].minimize != m.minimize:
                raise AssertionError(f"metric {metric}: tasks disagree on its direction")
            out.setdefault(metric, m)
    return out


def plain_forward(model, x, targets):
    """A training step's forward pass, for tasks whose model needs only the images (all but detection, whose
    losses are computed inside the model)."""
    return model(x)


# keys that only classification or segmentation honour, and what each does there: refused by the other tasks
IMAGE_LABEL_KEYS = {"mixup_alpha": "mixes images", "cutmix_alpha": "mixes images", "label_smoothing": "smooths labels",
                    "class_weights": "weighs classes", "eval_window": "tiles segmentation masks",
                    "eval_stride": "tiles segmentation masks"}


def refuse_keys(params, where, task, refused):
    """One line naming the first key of `refused` ({key: what it does}) that params set: `task` cannot honour it."""
    from utils import UserError

    for key, what in refused.items():
        if getattr(params, key):
            raise UserError(f"{where}: key '{key}' {what}; not for {task} (leave it out)")


def check_plain_loss(params, where, why):
    """params.loss left at its default (ce 1, every other term 0), for a task whose loss is not the loss block's
    weighted terms; `why` says what it trains on instead."""
    from utils import UserError

    for term, value in vars(params.loss).items():
        if value != (1 if term == "ce" else 0):
            raise UserError(f"{where}: key 'loss.{term}' is {value}, but {why}")


def check_classes(params, classes, where, found="classes"):
    """n_clas and a class_weights list against the data's classes (`found`: how the data names them), for any
    task whose targets are class indices."""
    from utils import UserError

    if params.n_clas is not None and params.n_clas != len(classes):
        raise UserError(f"{where}: key 'n_clas' is {params.n_clas} but the data has {len(classes)} {found}")
    weights = params.class_weights
    if isinstance(weights, list) and len(weights) != len(classes):
        raise UserError(f"{where}: key 'class_weights' has {len(weights)} weights but the data has {len(classes)} "
                        f"classes")


def metric_names(task, n_clas=None):
    """The metrics an epoch of `task` reports, in order; with n_clas, only those that make sense for that many
    classes."""
    return [name for name, m in metrics_of(task).items() if n_clas is None or n_clas >= m.min_classes]
