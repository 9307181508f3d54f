"""Metrics over a whole epoch, weighted by sample count (not a mean of batch means).

To add a metric: accumulate what it needs in `update`, derive it in `compute`, and add its name to METRIC_NAMES
(and to core/config.py's CHOICES if it should be usable as early_stopping.monitor_metric).
"""

import torch

METRIC_NAMES = ("loss", "accuracy", "top5", "f1")


class EpochMetrics:
    """Running sums kept on the device, so a GPU epoch syncs once at `compute`, not once per batch."""

    def __init__(self, n_clas, device):
        self.n_clas = n_clas
        self.confusion = torch.zeros(n_clas, n_clas, dtype=torch.long, device=device)  # rows: true, cols: predicted
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.top5_hits = torch.zeros((), dtype=torch.long, device=device)

    @torch.no_grad()
    def update(self, logits, targets, loss):
        """`loss` is the batch mean, so it is weighted back by the batch size."""
        k = self.n_clas
        self.loss_sum += loss.detach().double() * targets.numel()
        preds = logits.argmax(1)
        self.confusion += torch.bincount(targets * k + preds, minlength=k * k).view(k, k)
        if k >= 5:
            self.top5_hits += (logits.topk(5, dim=1).indices == targets[:, None]).any(1).sum()

    def compute(self):
        cm = self.confusion.double().cpu()  # the one sync of the epoch
        n = cm.sum().item()
        if n == 0:
            return {}
        tp = cm.diag()
        true_count, pred_count = cm.sum(1), cm.sum(0)
        precision = tp / pred_count.clamp(min=1)
        recall = tp / true_count.clamp(min=1)
        f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall), torch.zeros_like(tp))
        seen = (true_count + pred_count) > 0  # macro over labels present, as scikit-learn does
        out = {
            "loss": self.loss_sum.item() / n,
            "accuracy": tp.sum().item() / n,
            "f1": f1[seen].mean().item(),
        }
        if self.n_clas >= 5:
            out["top5"] = self.top5_hits.item() / n
        return out
