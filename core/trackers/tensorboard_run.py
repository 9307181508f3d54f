"""One folder's TensorBoard scalars (params key loggers: ["tensorboard"]) in MODEL_DIR/tensorboard.

Each session opens its writers with purge_step=1, which hides every event an earlier session wrote, and logs the
folder's whole history again: TensorBoard shows each epoch once, exactly as history.json has it, whatever a kill
cut short. Epochs are at step = epoch; validations within an epoch (val_every_batches) are in the run `checks`
at step = batches trained so far.
"""

import os

from torch.utils.tensorboard import SummaryWriter

from core.trackers.rows import check_metrics, check_step, epoch_metrics

FOLDER = "tensorboard"


class TensorboardRun:
    def __init__(self, model_dir, facts, saved, parent, key):
        folder = os.path.join(model_dir, FOLDER)
        self.writers = {"epochs": SummaryWriter(folder, purge_step=1),
                        "checks": SummaryWriter(os.path.join(folder, "checks"), purge_step=1)}
        self.logged = {"epochs": set(), "checks": set()}
        self.saved = {"log_dir": FOLDER}

    def sync(self, epochs, checks):
        for kind, rows, metrics, step in (("epochs", epochs, epoch_metrics, lambda r: r["epoch"]),
                                          ("checks", checks, check_metrics, check_step)):
            new = [r for r in rows if step(r) not in self.logged[kind]]
            for row in new:
                for name, value in metrics(row).items():
                    if name not in ("epoch", "val_checks/epoch"):  # the step already says it
                        self.writers[kind].add_scalar(name, value, step(row))
                self.logged[kind].add(step(row))
            if new:
                self.writers[kind].flush()

    def end(self, status, reason, files):
        for writer in self.writers.values():
            writer.close()
