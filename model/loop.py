"""The two loops: train_one_epoch and evaluate, each returning a metrics dict. Edit them like any training loop.

They serve every task: what a batch's target is, the forward pass, the loss, what an epoch's metrics accumulate and
what evaluation predicts come from the task (model/task.py): its forward, build_loss (as state.criterion), loss_fn,
epoch_metrics and predictor. The device, autocast and memory format come decided from core/training/engine.py
(`rt`); the model, optimizer, schedule, EMA and mixing from core/training/state.py (`state`).
"""

import time

import torch
from tqdm import tqdm


def progress(loader, desc):
    # disable=None: a bar on a terminal, nothing in a redirected log (search cells)
    return tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, disable=None)


def train_mode(state):
    state.model.train()
    for norm in state.frozen_norms:  # frozen BatchNorm keeps its running statistics
        norm.eval()


def train_one_epoch(state, loader, rt, *, monitor=None, check=None, summary_steps=10, desc="train", start=None):
    """One pass over `loader`, updating `state` (core.training.state.TrainingState).

    Per batch: mix it (state.mix: MixUp/CutMix), forward, backward of the loss scaled by the batches in its
    accumulation group. Every state.accumulate_steps batches, and at the epoch's end for a remainder, one
    optimizer step: `monitor` (a core.training.monitor.GradMonitor) samples the gradients, they are clipped to
    state.grad_clip, the optimizer steps, then a per-batch scheduler (one_cycle, cosine) and the EMA.
    check(batches done, n_batches, metrics), after each batch: a validation within the epoch when one is due
    (val_every_batches), a checkpoint within it (checkpoint_every_s/_batches, a stop signal: core/training/
    within_epoch.py), returning its seconds (0 when none), which the epoch's time leaves out.
    start: (batches done, the epoch's metrics over them) where a checkpoint within this epoch left it; the loader
    then begins at that batch (core/data/loaders.py reseed_epoch's skip)."""
    optimizer = state.optimizer
    scheduler = state.scheduler if state.per_batch else None
    train_mode(state)
    done, metrics = start or (0, state.task.epoch_metrics(state.n_classes, rt.device))
    n_seen, data_time, n_batches, accumulate, checking = 0, 0.0, len(loader), state.accumulate_steps, 0.0
    start = tick = time.perf_counter()
    bar = progress(loader, desc)
    optimizer.zero_grad(set_to_none=True)
    for step, (x, y) in enumerate(bar, start=done):
        data_time += time.perf_counter() - tick
        x, y = rt.to_device(x, y)
        x, targets = state.mix(x, y) if state.mix is not None else (x, y)  # targets: indices, or probabilities
        with rt.autocast():
            outputs = state.task.forward(state.train_model, x, targets)  # a tensor or a dict: the loss reads either
            loss = state.criterion(outputs, targets)
        group_start = step - step % accumulate
        (loss / min(accumulate, n_batches - group_start)).backward()  # the group's mean: a short last one too
        if step + 1 == group_start + accumulate or step + 1 == n_batches:
            optimizer_step(state, monitor, step // accumulate, scheduler)
        metrics.update(outputs, None if state.mix is not None else y, loss)
        n_seen += x.shape[0]
        if step % summary_steps == 0 and not bar.disable:
            bar.set_postfix(loss=f"{loss.item():.4f}")  # .item() waits for the GPU: only every summary_steps
        spent = check(step + 1, n_batches, metrics) if check is not None else 0.0
        if spent:  # a validation ran (in eval mode): back to training
            checking += spent
            train_mode(state)
        tick = time.perf_counter()
    out = metrics.compute()  # syncs once
    elapsed = time.perf_counter() - start - checking
    out.update(time_s=elapsed, data_time_s=data_time, images_per_s=n_seen / max(elapsed, 1e-9))
    return out


def optimizer_step(state, monitor, index, scheduler):
    """One update from the accumulated gradients. `index`: the optimizer step's number within the epoch."""
    if monitor is not None:
        monitor.after_backward(index)  # the gradients as computed, before clipping
    if state.grad_clip:
        torch.nn.utils.clip_grad_norm_(state.model.parameters(), state.grad_clip)
    state.optimizer.step()
    state.optimizer.zero_grad(set_to_none=True)
    if scheduler is not None:
        scheduler.step()
    if state.ema is not None:
        state.ema.update_parameters(state.model)


@torch.inference_mode()
def evaluate(model, loader, rt, task, n_clas, predict, *, desc="eval"):
    """Metrics over the whole of `loader` (the plain loss of the task, loss_fn), and details: what the task keeps
    per sample for its report and gallery (the confusion matrix, each sample's prediction, ...), in loader order.
    predict(model, x, y): the task's predictor (test-time augmentation, sliding windows; a detector needs the
    targets to report a loss)."""
    model.eval()
    metrics = task.epoch_metrics(n_clas, rt.device, keep_details=True)
    for x, y in progress(loader, desc):
        x, y = rt.to_device(x, y)
        with rt.autocast():
            outputs = predict(model, x, y)
            loss = task.loss_fn(outputs, y)
        metrics.update(outputs, y, loss)
    return metrics.compute(), metrics.details()
