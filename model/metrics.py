"""The metrics of an epoch: one entry each in METRICS, the only list of metric names in the project.

Everything else derives from it: the metrics in history.json and the metrics files, the curves of
train_history.png and history_plots.png, the columns of results.md, the choices of early_stopping.monitor_metric,
which way is better (early stopping, best.pth.tar, table order) and whether a metric needs 5+ classes.

To add a metric computed from the confusion matrix (precision, recall, balanced accuracy, ...): write its formula
below and add one line to METRICS. Metrics are over the whole epoch, weighted by sample count (not a mean of batch
means): core/training/engine.py accumulates the confusion matrix, the summed loss and the top-5 hits on the device
and calls each formula once per epoch. No torch import here, so the search and the result tables read METRICS cheaply.
"""

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    formula: Callable  # (cm, sums) -> float; cm: float64 confusion matrix (rows: true, columns: predicted) on the CPU
    minimize: bool = False  # True when lower is better
    min_classes: int = 2  # computed only with at least this many classes


def loss(cm, sums):
    return sums["loss"] / sums["n"]


def accuracy(cm, sums):
    return cm.diag().sum().item() / sums["n"]


def macro_f1(cm, sums):
    tp = cm.diag()
    true_count, pred_count = cm.sum(1), cm.sum(0)
    precision, recall = tp / pred_count.clamp(min=1), tp / true_count.clamp(min=1)
    f1 = (2 * precision * recall / (precision + recall)).nan_to_num(0.0)  # 0/0 for a class never seen nor predicted
    seen = (true_count + pred_count) > 0  # macro over the labels present, as scikit-learn does
    return f1[seen].mean().item()


def balanced_accuracy(cm, sums):
    """The mean of per-class recall over the classes present: what accuracy would be if every class were equally
    common, so a model that ignores a rare class cannot score high (scikit-learn's balanced_accuracy_score)."""
    true_count = cm.sum(1)
    present = true_count > 0
    return (cm.diag()[present] / true_count[present]).mean().item()


def top5(cm, sums):
    return sums["top5_hits"] / sums["n"]


METRICS = {
    "loss": Metric(loss, minimize=True),
    "accuracy": Metric(accuracy),
    "f1": Metric(macro_f1),
    "balanced_accuracy": Metric(balanced_accuracy),
    "top5": Metric(top5, min_classes=5),
}


def metric_names(n_clas=None):
    """The metrics an epoch reports, in order; with n_clas, only those that make sense for that many classes."""
    return [name for name, m in METRICS.items() if n_clas is None or n_clas >= m.min_classes]
