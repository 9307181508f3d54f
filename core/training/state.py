"""The training state: what a checkpoint holds and a resume restores, written down once.

    state = build_state(params, classes, runtime, train_loader, where)     # model on its device, optimizer, ...
    ckpt = state.checkpoint(epoch, params, classes, stop_reason)             # a plain dict for torch.save
    next_epoch = state.load(ckpt, path)                                      # the inverse, RNG states included
    weights = evaluated_weights(ckpt)                                        # what validation saw: raw or EMA

Shared by train.py and the search's smoke test (core/search/smoke.py); evaluate.py, predict.py and export.py load a
trained run through core/training/trained.py.
"""

from dataclasses import asdict, dataclass

import torch

from core import tasks
from core.config import Params
from core.paths import repo_path
from core.stages import stage_of, stage_params
from core.training import distributed
from core.training.activations import checkpoint_blocks
from core.training.engine import rng_state, set_rng_state
from core.training.optim import (
    PER_BATCH,
    build_optimizer,
    build_scheduler,
    freeze,
    layer_groups,
    learning_rates,
    optimizer_steps,
)
from utils import UserError, load_checkpoint, one_line


@dataclass
class BestTracker:
    """Best value of the monitored validation metric, and the early-stopping count since it improved."""

    metric: str
    minimize: bool
    min_delta: float
    patience: int
    best: float | None = None
    best_epoch: int = 0
    bad_epochs: int = 0

    @classmethod
    def from_params(cls, es):
        return cls(es.monitor_metric, bool(es.minimize), es.min_delta, es.patience)

    def update(self, value, epoch):
        """Record this epoch's value; True when it is a new best."""
        sign = -1 if self.minimize else 1
        if self.best is None or sign * (value - self.best) > self.min_delta:
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self):
        return self.patience > 0 and self.bad_epochs >= self.patience

    def summary(self):
        return f"best val {self.metric} {self.best:.4f} at epoch {self.best_epoch}" if self.best_epoch else ""

    def state(self):
        return asdict(self)


EMA_PREFIX = "module."  # AveragedModel's state_dict: the averaged model's keys under "module.", and n_averaged


@dataclass
class TrainingState:
    task: object  # the Task (model/task.py): its metrics, loss and data
    model: object  # torch.nn.Module, on the run's device
    optimizer: object
    scheduler: object  # None for scheduler "none"
    tracker: BestTracker  # best validation metric so far and the early-stopping count
    per_batch: bool  # the scheduler steps after every optimizer step (one_cycle, cosine), not once per epoch
    criterion: object  # the training loss, the task's build_loss
    mix: object = None  # MixUp/CutMix on training batches (the task's build_batch_mix), or None
    ema: object = None  # torch.optim.swa_utils.AveragedModel of the weights, or None
    accumulate_steps: int = 1  # batches per optimizer step
    grad_clip: float = 0.0  # max gradient norm (0: no clipping)
    stage: int = 0  # the stage of the plan being trained (core/stages.py; 0 for a run without stages)
    stage_params: object = None  # the params that stage trains with
    frozen_norms: tuple = ()  # BatchNorm layers of frozen parts: kept in eval mode, their statistics unchanged
    counts: tuple = ()  # images (or pixels) per class, for a stage's "balanced" class weights
    n_classes: int = 0
    ranks: object = None  # core/training/distributed.py Ranks: this process's place among several, or None
    ddp: object = None  # the DistributedDataParallel wrapper that trains `model` across ranks, or None

    @property
    def train_model(self):
        """What the training step calls: DDP (which averages the gradients across ranks) or the model itself."""
        return self.ddp if self.ddp is not None else self.model

    @property
    def eval_model(self):
        """The weights validation sees and best.pth.tar is chosen by: the EMA when there is one."""
        return self.ema.module if self.ema is not None else self.model

    def checkpoint(self, epoch, params, classes, stop_reason=None):
        """Everything a resume needs, and what the run was (params, classes), as one self-describing dict.

        Checkpoints are written at epoch ends, where gradient accumulation is never half way (it restarts with
        each epoch), so there is no accumulation position to save; the RNG states cover dropout and mixing (every
        rank's, with several: called on every rank)."""
        rngs = distributed.gathered(rng_state(), self.ranks or distributed.Ranks())
        return {"epoch": epoch, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict() if self.scheduler else None,
                "ema": self.ema.state_dict() if self.ema is not None else None,
                "weights": "ema" if self.ema is not None else "raw",  # which weights were validated
                "tracker": self.tracker.state(), "rng": rngs[0], "params": params.to_dict(), "classes": classes,
                "stop_reason": stop_reason, "stage": self.stage,
                **({"world_size": len(rngs), "rng_ranks": rngs} if len(rngs) > 1 else {})}

    def load(self, ckpt, path):
        """Restore a checkpoint's training state in place; returns the epoch to continue from."""
        try:
            self.model.load_state_dict(ckpt["model"])
            # at a stage's first epoch the optimizer and schedule are the new stage's, fresh, as they would be
            # in a run that never stopped; within a stage they continue from the checkpoint
            if ckpt.get("stage", 0) == self.stage:
                self.optimizer.load_state_dict(ckpt["optimizer"])
                if self.scheduler is not None and ckpt.get("scheduler"):
                    self.scheduler.load_state_dict(ckpt["scheduler"])
            if self.ema is not None and ckpt.get("ema") is not None:
                self.ema.load_state_dict(ckpt["ema"])
            elif self.ema is not None:  # the EMA begins with this stage: an average of the weights as they are now
                self.ema = build_ema(self.model, self.stage_params.ema_decay)
        except (KeyError, ValueError, RuntimeError, TypeError) as e:
            raise UserError(f"{path}: does not fit the model as the code builds it now (model/{self.task.name}/ "
                            f"edited since?): {one_line(e)[:200]}") from None
        # only the tracker's progress: its settings (patience, metric) are checked equal by check_resume
        for key in ("best", "best_epoch", "bad_epochs"):
            setattr(self.tracker, key, ckpt["tracker"][key])
        set_rng_state(ckpt["rng_ranks"][self.ranks.rank] if "rng_ranks" in ckpt else ckpt["rng"])
        return ckpt["epoch"] + 1


def evaluated_weights(ckpt):
    """The model weights a checkpoint's validation metrics belong to: the EMA's when the run kept one."""
    if ckpt.get("weights") != "ema":
        return ckpt["model"]
    return {k[len(EMA_PREFIX):]: v for k, v in ckpt["ema"].items() if k.startswith(EMA_PREFIX)}


def run_checkpoint(path, needs=("params", "classes", "model", "epoch")):
    """A checkpoint train.py wrote, holding `needs` (a resume: RESUME_NEEDS), or a one-line error: a foreign or
    truncated file is named, not a KeyError's traceback."""
    ckpt = load_checkpoint(path)
    if not isinstance(ckpt, dict) or not set(needs) <= set(ckpt):
        raise UserError(f"{path}: not a checkpoint written by train.py (needs {', '.join(needs)})")
    return ckpt


RESUME_NEEDS = ("params", "classes", "model", "epoch", "optimizer", "tracker")


def load_init_weights(model, path):
    """Copy every tensor whose name and shape match from another run's checkpoint (the weights it validated: its
    EMA when it kept one); report what was skipped."""
    ckpt = load_checkpoint(path)
    source = evaluated_weights(ckpt) if isinstance(ckpt, dict) and "model" in ckpt else ckpt
    if not isinstance(source, dict):
        raise UserError(f"params key 'init_weights_path': {path} holds no model weights")
    own = model.state_dict()
    matched = {k: v for k, v in source.items() if k in own and getattr(v, "shape", None) == own[k].shape}
    if not matched:
        raise UserError(f"params key 'init_weights_path': no tensor in {path} matches this model")
    model.load_state_dict(matched, strict=False)
    return sorted(set(own) - set(matched))


def build_ema(model, decay):
    """An exponential moving average of `model`'s weights, BatchNorm statistics included (use_buffers)."""
    from torch.optim.swa_utils import AveragedModel

    return AveragedModel(model, multi_avg_fn=ema_update(decay), use_buffers=True)


def ema_update(decay):
    """AveragedModel's update: w_ema <- d * w_ema + (1 - d) * w after each optimizer step, with
    d = min(decay, (1 + n) / (10 + n)) after n updates (TensorFlow's ExponentialMovingAverage warm-up). Without the
    warm-up, a decay of 0.999 would keep the first weights (near the random start) for thousands of steps, and a
    short run's average would be useless. Integer buffers (BatchNorm's batch counter) are copied."""

    @torch.no_grad()
    def update(ema_params, params, n_averaged):
        if not torch.is_floating_point(ema_params[0]):
            torch._foreach_copy_(ema_params, params)
            return
        d = ((1 + n_averaged) / (10 + n_averaged)).clamp(max=decay).to(ema_params[0].dtype)  # on the device: no sync
        torch._foreach_mul_(ema_params, d)
        torch._foreach_add_(ema_params, torch._foreach_mul(params, 1 - d))

    return update


def build_state(params, classes, runtime, train_loader, where, init_weights=True, epoch=1, ranks=None):
    """A fresh training state for `classes` at the stage that trains `epoch`, and notes to log. train_loader: its
    batches per epoch size the schedule, its images per class weigh class_weights "balanced". init_weights: copy
    init_weights_path's weights (not when a checkpoint is about to replace them)."""
    task = tasks.load(params.task)
    for i in range(max(1, len(params.stages))):  # every stage's keys must suit the task (mixup for boxes: no)
        task.check_params(params_of_stage(params, i), classes, where)
    # counting each class (images, or a segmentation's pixels: every mask read) matters only to "balanced" weights
    counts = (task.class_counts(train_loader.dataset, len(classes)) if params.class_weights == "balanced"
              else [1] * len(classes))
    try:
        model, notes = task.build_model(params, len(classes)), []
    except UserError as e:  # "params key 'arch': ...": which params file says so
        raise UserError(f"{where}: {one_line(e)}") from None
    check_stages(params, model, task, where)
    if params.grad_checkpointing:
        notes.append(recompute_activations(model, task, params, where))
    if params.init_weights_path and init_weights:
        skipped = load_init_weights(model, repo_path(params.init_weights_path))
        notes.append(f"initial weights from {params.init_weights_path}; not matched: {skipped or 'none'}")
    model = runtime.prepare(model)
    ranks = ranks or distributed.Ranks()
    if ranks.active and params.sync_bn:  # before the optimizer and the EMA see the model's modules
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    i = stage_of(params.to_dict(), epoch)
    state = TrainingState(task=task, model=model, tracker=BestTracker.from_params(params.early_stopping),
                          counts=counts, n_classes=len(classes), ranks=ranks,
                          **stage_parts(task, model, params, i, train_loader, counts, len(classes), ranks))
    if state.ema is not None:
        notes.append(f"validating the EMA of the weights (ema_decay {state.stage_params.ema_decay}); best.pth.tar "
                     f"holds both")
    return state, notes


def recompute_activations(model, task, params, where):
    """grad_checkpointing: 1. Returns the note to log."""
    try:
        head = task.head_of(model)
    except UserError:  # a model without a recognisable head: its blocks are recomputed all the same
        head = None
    n = checkpoint_blocks(model, head)
    if not n:
        raise UserError(f"{where}: grad_checkpointing 1: {params.arch or task.arch} has no blocks to recompute (no "
                        f"nn.Sequential or nn.ModuleList of modules; core/training/activations.py)")
    return f"gradient checkpointing: {n} blocks recompute their activations in backward"


def check_stages(params, model, task, where):
    """Build every later stage's layer groups and augmentation once, before epoch 1: a mistake in stage N (more
    rates than layer groups, an unknown transform) is found now, named stages.N, not after stage 0 has trained."""
    for i in range(1, len(params.stages or [])):
        sp = params_of_stage(params, i)
        try:
            layer_groups(model, len(learning_rates(sp)), task)
            task.build_transforms(sp)
        except UserError as e:
            raise UserError(f"{where}: stages.{i}: {one_line(e)}") from None


def params_of_stage(params, i):
    return Params(stage_params(params.to_dict(), i))


def stage_parts(task, model, params, i, train_loader, counts, n_classes, ranks, ema=None):
    """{TrainingState field: value} of what stage i of the run's plan trains with: its frozen parts, a fresh
    optimizer and its own schedule over its own epochs, its loss (the task's build_loss: model/<task>/loss.py),
    mixing, EMA decay, accumulation and clipping. `ema`: the average the stage before kept, which carries over."""
    sp = params_of_stage(params, i)
    frozen_norms = freeze(model, task, sp.freeze, len(learning_rates(sp)))
    ddp = distributed.wrap(model, ranks)  # it reduces the gradients of what trains when built: one for each stage
    optimizer = build_optimizer(sp, model, task)
    scheduler = build_scheduler(sp, optimizer, optimizer_steps(len(train_loader), sp.accumulate_steps))
    criterion = task.build_loss(sp, list(counts))
    mix = None if sp.overfit_batches else task.build_batch_mix(sp, n_classes)  # the overfit check: batches as they are
    if not sp.ema_decay:
        ema = None
    elif ema is None:
        ema = build_ema(model, sp.ema_decay)
    else:
        ema.multi_avg_fn = ema_update(sp.ema_decay)
    return {"stage": i, "stage_params": sp, "frozen_norms": frozen_norms, "ddp": ddp, "optimizer": optimizer,
            "scheduler": scheduler, "per_batch": sp.scheduler in PER_BATCH, "criterion": criterion, "mix": mix,
            "ema": ema, "accumulate_steps": sp.accumulate_steps, "grad_clip": sp.grad_clip}


def enter_stage(state, params, i, train_loader):
    """Set `state` up for stage i of the run's plan (stage_parts). The weights, their EMA, the best so far and the
    early-stopping count carry over."""
    parts = stage_parts(state.task, state.model, params, i, train_loader, state.counts, state.n_classes,
                        state.ranks, state.ema)
    for name, value in parts.items():
        setattr(state, name, value)


def advance_stage(state, params, epoch, train_loader, reload):
    """Before `epoch`: enter its stage if it begins a new one. Returns the train loader for it, from reload(stage
    params) when the stage changes the batch size or the augmentation."""
    i = stage_of(params.to_dict(), epoch)
    if i == state.stage:
        return train_loader
    sp, now = params_of_stage(params, i), state.stage_params
    if (sp.batch_size, sp.augmentation) != (now.batch_size, now.augmentation):
        train_loader = reload(sp)
    enter_stage(state, params, i, train_loader)
    return train_loader


def detached_copy(obj):
    """A copy of a state dict's tensors (on the CPU) in the same containers, keeping state_dict's _metadata."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        out = type(obj)((k, detached_copy(v)) for k, v in obj.items())
        if hasattr(obj, "_metadata"):  # module versions, which load_state_dict reads
            out._metadata = obj._metadata
        return out
    if isinstance(obj, (list, tuple)):
        return type(obj)(detached_copy(v) for v in obj)
    return obj
