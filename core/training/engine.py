"""The device decision and the two loops: train_one_epoch and evaluate. Each returns a metrics dict.

Both serve every task: what a batch's target is, how an epoch's metrics accumulate and what evaluation predicts
come from the task (model/<task>/): its EpochMetrics, its loss_fn and its predictor."""

import contextlib
import ctypes
import random
import time
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm


@dataclass
class Runtime:
    """Decided once per run, then used everywhere (as `rt`): where tensors live and how the forward pass runs."""

    device: torch.device
    amp_dtype: torch.dtype | None  # autocast dtype, None for full precision
    channels_last: bool

    @property
    def pin_memory(self):
        return self.device.type == "cuda"

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def to_device(self, x, y):
        # non_blocking overlaps the copy with compute when the batch sits in pinned memory
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return x.to(self.device, non_blocking=True, memory_format=fmt), y.to(self.device, non_blocking=True)

    def prepare(self, model):
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model


def pick_runtime(use_cuda):
    if use_cuda and torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True  # fixed input size: let cuDNN pick the fastest kernels once
        bf16 = torch.cuda.is_bf16_supported()
        return Runtime(torch.device("cuda"), torch.bfloat16 if bf16 else None, channels_last=True)
    return Runtime(torch.device("cpu"), None, channels_last=False)


def keep_freed_memory():
    """Have glibc keep freed memory for reuse rather than return it to the OS. Its defaults map large blocks
    afresh and trim the heap on free, so a run's activations were page-faulted in again every batch (train.py on
    the detector: 660,000 page faults and about 3 s of system time an epoch, where a bare loop took 9,000; see
    docs/detection.md). Blocks under 32 MB then come from the heap, and up to 256 MB of free heap is kept. Not glibc
    (macOS, musl): nothing to do."""
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # malloc.h
    return bool(mallopt(m_mmap_threshold, 32 << 20)) and bool(mallopt(m_trim_threshold, 256 << 20))


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def epoch_seed(seed, epoch):
    """A seed for one epoch of one run. Hashing (seed, epoch) keeps repetitions (seed, seed + 1000) from
    sharing data orders the way seed + epoch would (repetition 1's epoch 1 = repetition 0's epoch 1001...)."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def rng_state():
    """All global RNG states, as tensors and plain lists so checkpoints load with weights_only=True."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    random.setstate(tuple(x if not isinstance(x, list) else tuple(x) for x in state["python"]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def progress(loader, desc):
    # disable=None: a bar on a terminal, nothing in a redirected log (search cells)
    return tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, disable=None)


def train_one_epoch(state, loader, rt, n_clas, summary_steps=10, monitor=None, desc="train"):
    """One pass over `loader`, updating `state` (core.training.state.TrainingState).

    Per batch: mix it (state.mix: MixUp/CutMix), forward, backward of the loss scaled by the batches in its
    accumulation group. Every state.accumulate_steps batches, and at the epoch's end for a remainder, one
    optimizer step: `monitor` (a core.training.monitor.GradMonitor) samples the gradients, they are clipped to
    state.grad_clip, the optimizer steps, then a per-batch scheduler (one_cycle, cosine) and the EMA."""
    model, optimizer = state.model, state.optimizer
    scheduler = state.scheduler if state.per_batch else None
    model.train()
    for norm in state.frozen_norms:  # frozen BatchNorm keeps its running statistics
        norm.eval()
    metrics = state.task.EpochMetrics(n_clas, rt.device)
    n_seen, data_time, n_batches, accumulate = 0, 0.0, len(loader), state.accumulate_steps
    start = tick = time.perf_counter()
    bar = progress(loader, desc)
    optimizer.zero_grad(set_to_none=True)
    for step, (x, y) in enumerate(bar):
        data_time += time.perf_counter() - tick
        x, y = rt.to_device(x, y)
        x, targets = state.mix(x, y) if state.mix is not None else (x, y)  # targets: indices, or probabilities
        with rt.autocast():
            outputs = state.task.forward(model, x, targets)  # a tensor, or a dict: the task's loss reads either
            loss = state.criterion(outputs, targets)
        group_start = step - step % accumulate
        (loss / min(accumulate, n_batches - group_start)).backward()  # the group's mean: a short last one too
        if step + 1 == group_start + accumulate or step + 1 == n_batches:
            optimizer_step(state, monitor, step // accumulate, scheduler)
        metrics.update(outputs, None if state.mix is not None else y, loss)
        n_seen += x.shape[0]
        if step % summary_steps == 0 and not bar.disable:
            bar.set_postfix(loss=f"{loss.item():.4f}")  # .item() waits for the GPU: only every summary_steps
        tick = time.perf_counter()
    out = metrics.compute()  # syncs once
    elapsed = time.perf_counter() - start
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
def evaluate(model, loader, rt, task, n_clas, predict, desc="eval"):
    """Metrics over the whole of `loader` (the plain loss of the task, loss_fn), and details: what the task keeps
    per sample for its report and gallery (the confusion matrix, each sample's prediction, ...), in loader order.
    predict(model, x, y): the task's predictor (test-time augmentation, sliding windows; a detector needs the
    targets to report a loss)."""
    model.eval()
    metrics = task.EpochMetrics(n_clas, rt.device, keep_details=True)
    for x, y in progress(loader, desc):
        x, y = rt.to_device(x, y)
        with rt.autocast():
            outputs = predict(model, x, y)
            loss = task.loss_fn(outputs, y)
        metrics.update(outputs, y, loss)
    return metrics.compute(), metrics.details()
