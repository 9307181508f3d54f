"""The metrics of a classification epoch: one entry each in METRICS, the only list of this task's metric names.

Everything else derives from it (through the task, model/task.py): the metrics in history.json and the metrics
files, the curves of train_history.png and history_plots.png, the columns of results.md, the values
early_stopping.monitor_metric may take for this task, which way is better (early stopping, best.pth.tar, table
order) and whether a metric needs 5+ classes.

To add a metric computed from the confusion matrix (precision, recall, balanced accuracy, ...): write its formula
below and add one line to METRICS. Metrics are over the whole epoch, weighted by sample count (not a mean of batch
means): EpochMetrics below accumulates the confusion matrix, the summed loss and the top-5 hits on the device and
calls each formula once per epoch. No torch import at the top, so the search and the result tables read METRICS
cheaply.
"""

from model.task import LOSS, EpochSums, Metric, metric_names


def accuracy(s):
    return s["cm"].diag().sum().item() / s["n"]


def macro_f1(s):
    cm = s["cm"]
    tp = cm.diag()
    true_count, pred_count = cm.sum(1), cm.sum(0)
    precision, recall = tp / pred_count.clamp(min=1), tp / true_count.clamp(min=1)
    f1 = (2 * precision * recall / (precision + recall)).nan_to_num(0.0)  # 0/0 for a class never seen nor predicted
    seen = (true_count + pred_count) > 0  # macro over the labels present, as scikit-learn does
    return f1[seen].mean().item()


def balanced_accuracy(s):
    """The mean of per-class recall over the classes present: what accuracy would be if every class were equally
    common, so a model that ignores a rare class cannot score high (scikit-learn's balanced_accuracy_score)."""
    cm = s["cm"]
    true_count = cm.sum(1)
    present = true_count > 0
    return (cm.diag()[present] / true_count[present]).mean().item()


def top5(s):
    return s["top5_hits"] / s["n"]


METRICS = {
    "loss": LOSS,
    "accuracy": Metric(accuracy),
    "f1": Metric(macro_f1),
    "balanced_accuracy": Metric(balanced_accuracy),
    "top5": Metric(top5, min_classes=5),
}


class EpochMetrics(EpochSums):
    """What the formulas above need, summed over an epoch on the device: a GPU epoch syncs once, in `compute`, not
    once per batch. With keep_details, also each sample's predicted class and confidence, for the gallery and the
    report (`details`)."""

    def __init__(self, n_clas, device, keep_details=False):
        import torch

        super().__init__(device)
        self.n_clas = n_clas
        self.confusion = torch.zeros(n_clas, n_clas, dtype=torch.long, device=device)  # rows: true, cols: predicted
        self.top5_hits = torch.zeros((), dtype=torch.long, device=device)
        self.kept = {"prediction": [], "confidence": []} if keep_details else None

    def update(self, logits, targets, loss):
        """`loss` is the batch mean, so it is weighted back by the batch size. `targets` None: a batch without one
        label per image (mixed by MixUp/CutMix), which counts for the loss only."""
        import torch

        with torch.no_grad():
            if not self.add_loss(loss, logits.shape[0], targets):
                return
            k = self.n_clas
            self.confusion += torch.bincount(targets * k + logits.argmax(1), minlength=k * k).view(k, k)
            if k >= 5:
                self.top5_hits += (logits.topk(5, dim=1).indices == targets[:, None]).any(1).sum()
            if self.kept is not None:
                conf, pred = logits.softmax(1).max(1)
                self.kept["prediction"].append(pred)
                self.kept["confidence"].append(conf)

    def compute(self):
        """The metrics above. Only the loss when a batch was mixed: accuracy against blended labels would be
        neither the model's accuracy nor comparable with validation, so it is not reported."""
        if (alone := self.loss_alone()) is not None:
            return alone
        cm = self.confusion.double().cpu()  # the one sync of the epoch
        sums = {"cm": cm, **self.sums(), "top5_hits": self.top5_hits.item()}
        return {name: METRICS[name].formula(sums) for name in metric_names(METRICS, self.n_clas)}

    def details(self):
        """The confusion matrix (rows: true class, columns: predicted) and each sample's predicted class and
        confidence, in loader order, on the CPU."""
        import torch

        return {"confusion": self.confusion.cpu(), **{k: torch.cat(v).cpu() for k, v in self.kept.items()}}

