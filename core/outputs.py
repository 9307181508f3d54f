"""Everything train.py writes at the end of an epoch, in an order that survives a kill at any point.

history.json, the metrics files and the figures go first and last.pth.tar last: the checkpoint is the commit
point, and a resume truncates history to the checkpoint's epoch.
"""

import os

from core.monitor import confidently_wrong, gallery_indices, gallery_items
from core.plots import plot_confusion, plot_gallery, plot_gradients, plot_history
from core.results import load_history
from utils import UserError, save_checkpoint, write_json

HISTORY = "history.json"


def tensorboard_writer(model_dir, enabled):
    """A SummaryWriter on MODEL_DIR/tensorboard, or None. Checked before the run writes anything."""
    if not enabled:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError("params key 'tensorboard': needs the tensorboard package (pip install tensorboard)") from None
    return lambda: SummaryWriter(os.path.join(model_dir, "tensorboard"))


class RunFolder:
    def __init__(self, model_dir, params, classes, tensorboard=None):
        self.dir, self.params, self.classes = model_dir, params, classes
        self.tb = tensorboard() if tensorboard else None

    def path(self, name):
        return os.path.join(self.dir, name)

    def load_history(self, up_to_epoch):
        return [r for r in load_history(self.dir) if r["epoch"] <= up_to_epoch]

    def record_epoch(self, history, improved, state, details, valid_set):
        row = history[-1]
        write_json(self.path(HISTORY), {"classes": self.classes, "epochs": history})
        val = dict(row["val"], epoch=row["epoch"])
        write_json(self.path("metrics_val_last_weights.json"), val)
        if improved:
            write_json(self.path("metrics_val_best_weights.json"), val)
            self.draw_predictions(row["epoch"], details, valid_set)
        plot_history(history, self.path("train_history.png"), title=self.dir)
        if row.get("grad_norm"):
            plot_gradients(history, self.path("gradients.png"))
        self.log_tensorboard(row)
        if improved:  # best before last: a kill in between must not leave best.pth.tar an epoch behind for good
            save_checkpoint(state, self.path("best.pth.tar"))
        save_checkpoint(state, self.path("last.pth.tar"))

    def draw_predictions(self, epoch, details, valid_set):
        """At each new best: a gallery of fixed and most confidently wrong valid examples, and the confusion matrix."""
        fixed = gallery_indices(self.params, len(valid_set))
        k = max(4, len(fixed) // 2)  # slots for wrong examples, kept even when there are fewer mistakes
        wrong = confidently_wrong(details, valid_set.labels, k)
        items = gallery_items(valid_set, details, fixed, wrong, self.classes)
        plot_gallery(items, len(fixed) + k, self.path("predictions.png"),
                     title=f"{self.dir}: valid predictions (fixed, then most confidently wrong), epoch {epoch}")
        plot_confusion(details["confusion"].numpy(), self.classes, self.path("confusion_valid_best.png"),
                       title=f"valid, best epoch {epoch}")

    def log_tensorboard(self, row):
        if self.tb is None:
            return
        step = row["epoch"]
        for split in ("train", "val"):
            for name, value in row[split].items():
                self.tb.add_scalar(f"{split}/{name}", value, step)
        for i, lr in enumerate(row["lr"]):
            self.tb.add_scalar(f"lr/group{i}", lr, step)
        for kind in ("grad_norm", "update_ratio"):
            for name, value in row.get(kind, {}).items():
                self.tb.add_scalar(f"{kind}/{name}", value, step)
        self.tb.add_scalar("time/images_per_s", row["images_per_s"], step)
        self.tb.flush()

    def close(self):
        if self.tb is not None:
            self.tb.close()
