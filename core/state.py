"""The training state: what a checkpoint holds and a resume restores, written down once.

    state = build_state(params, classes, runtime, steps_per_epoch, where)   # model on its device, optimizer, ...
    ckpt = state.checkpoint(epoch, params, classes, stop_reason)            # a plain dict for torch.save
    next_epoch = state.load(ckpt, path)                                     # the inverse, RNG states included

Shared by train.py and the search's smoke test (core/smoke.py).
"""

from dataclasses import dataclass

from core.engine import rng_state, set_rng_state
from core.optim import PER_BATCH, build_optimizer, build_scheduler
from core.run import BestTracker
from core.tv_models import load_init_weights
from model.metrics import METRICS
from model.net import build_model
from utils import UserError, one_line


@dataclass
class TrainingState:
    model: object  # torch.nn.Module, on the run's device
    optimizer: object
    scheduler: object  # None for scheduler "none"
    tracker: BestTracker  # best validation metric so far and the early-stopping count
    per_batch: bool  # the scheduler steps after every batch (one_cycle, cosine), not once per epoch

    def checkpoint(self, epoch, params, classes, stop_reason=None):
        """Everything a resume needs, and what the run was (params, classes), as one self-describing dict."""
        return {"epoch": epoch, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict() if self.scheduler else None,
                "tracker": self.tracker.state(), "rng": rng_state(), "params": params.to_dict(), "classes": classes,
                "stop_reason": stop_reason}

    def load(self, ckpt, path):
        """Restore a checkpoint's training state in place; returns the epoch to continue from."""
        try:
            self.model.load_state_dict(ckpt["model"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
            if self.scheduler is not None and ckpt.get("scheduler"):
                self.scheduler.load_state_dict(ckpt["scheduler"])
        except (KeyError, ValueError, RuntimeError) as e:
            raise UserError(f"{path}: does not match params.json (arch or learning_rate changed?): "
                            f"{one_line(e)[:200]}") from None
        # only the tracker's progress: its settings (patience, metric) are checked equal by check_resume
        for key in ("best", "best_epoch", "bad_epochs"):
            setattr(self.tracker, key, ckpt["tracker"][key])
        set_rng_state(ckpt["rng"])
        return ckpt["epoch"] + 1


def build_state(params, classes, runtime, steps_per_epoch, where, init_weights=True):
    """A fresh training state for `classes`, and notes to log. init_weights: copy init_weights_path's weights
    (not when a checkpoint is about to replace them)."""
    check_classes(params, classes, where)
    model, notes = build_model(params, len(classes)), []
    if params.init_weights_path and init_weights:
        skipped = load_init_weights(model, params.init_weights_path)
        notes.append(f"initial weights from {params.init_weights_path}; not matched: {skipped or 'none'}")
    model = runtime.prepare(model)
    optimizer = build_optimizer(params, model)
    scheduler = build_scheduler(params, optimizer, steps_per_epoch)
    state = TrainingState(model, optimizer, scheduler, BestTracker.from_params(params.early_stopping),
                          per_batch=params.scheduler in PER_BATCH)
    return state, notes


def check_classes(params, classes, where):
    if params.n_clas is not None and params.n_clas != len(classes):
        raise UserError(f"{where}: key 'n_clas' is {params.n_clas} but the data has {len(classes)} class folders")
    metric = params.early_stopping.monitor_metric
    if len(classes) < METRICS[metric].min_classes:
        raise UserError(f"{where}: key 'early_stopping.monitor_metric' is {metric} but the data has only "
                        f"{len(classes)} classes (it needs {METRICS[metric].min_classes})")
