"""What happens between two training batches beside training (model/loop.py calls check(done, n, metrics) after
each), and how a run stops and resumes within an epoch:

- validations within an epoch (val_every_batches);
- checkpoints within an epoch (checkpoint_every_s or checkpoint_every_batches): last.pth.tar as at an epoch's end,
  plus where the epoch stands (`within`: the batches done, the epoch's metric sums, the gradient monitor's);
- stopping: SIGTERM, SIGUSR1, SIGUSR2 (a scheduler's preemption or time-limit warning) and Ctrl-C ask the run to
  stop; it writes a checkpoint at the next optimizer step (or at the end of the epoch, after validating) and ends
  `interrupted`, exit code 130. A second Ctrl-C of a single process stops it at once, from the last checkpoint.

Checkpoints are written only where an optimizer step just ended (every accumulate_steps batches), so no gradient
is ever half accumulated in one. With several processes every rank takes the same decision at the same batch
(agree): rank 0's clock decides checkpoint_every_s, and a signal any rank got stops them all.
"""

import contextlib
import os
import signal
import time

import torch

from core.training import distributed
from core.training.optim import layer_lrs
from core.training.state import detached_copy

STOPPING = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)
REASONS = {signal.SIGINT: "Ctrl-C"}
stop_requested, signalled_at = None, None  # the reason, once a stopping signal arrived; when (time.monotonic)


@contextlib.contextmanager
def stop_on_signals():
    """While training: the first stopping signal asks the run to stop after the batch under way, with a checkpoint.
    A second one of a single process stops it at once (status 'interrupted', the last checkpoint to resume from); a
    rank under torchrun ignores the rest: Slurm signals every process of a job and torchrun passes the same signal
    on, so each rank gets it twice, and the second would cut short the writes that close the run. The handlers that
    were there before come back after (train.main called in a process that goes on: tests, a notebook)."""
    global stop_requested, signalled_at
    stop_requested, signalled_at = None, None
    under_torchrun = "TORCHELASTIC_RUN_ID" in os.environ

    def on_signal(signum, frame):
        global stop_requested, signalled_at
        reason = REASONS.get(signum, signal.Signals(signum).name)
        if stop_requested is None:
            stop_requested, signalled_at = reason, time.monotonic()
        elif not under_torchrun:
            raise KeyboardInterrupt(reason)

    before = {sig: signal.signal(sig, on_signal) for sig in STOPPING}
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def agree(ranks, device, *flags):
    """Each flag as any rank has it (one all-reduce), so that every rank stops or checkpoints at the same batch."""
    if not ranks.active:
        return flags
    t = torch.tensor([int(bool(f)) for f in flags], device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return tuple(bool(x) for x in t.tolist())


def stop_if_asked(ranks, device):
    """At an epoch's end, after its checkpoint: stop there when a signal asked (every rank, if any rank was)."""
    (stop,) = agree(ranks, device, stop_requested)
    if stop:
        raise KeyboardInterrupt(stop_requested or "SIGTERM")


class Clock:
    """When the next checkpoint within an epoch is due: at the first optimizer step `checkpoint_every_batches`
    batches or `checkpoint_every_s` seconds (on rank 0's clock) after the last checkpoint, the epoch's end's
    included."""

    def __init__(self, params, ranks, batches=0):
        self.every_s, self.every_batches = params.checkpoint_every_s, params.checkpoint_every_batches
        self.is_main, self.last, self.last_batch = ranks.is_main, time.monotonic(), batches

    def written(self, batches=0):
        """A checkpoint after `batches` of this epoch's batches (0: at the end of an epoch)."""
        self.last, self.last_batch = time.monotonic(), batches

    def due(self, done):
        if self.every_batches:
            return done - self.last_batch >= self.every_batches
        return bool(self.every_s) and self.is_main and time.monotonic() - self.last >= self.every_s


def between_batches(run, folder, epoch, monitor, clock, validate):
    """check(done, n_batches, metrics) for train_one_epoch: validate(done, n_batches) when a validation within the
    epoch is due (val_every_batches), then, at an optimizer step, a checkpoint when due or asked for by a signal
    (then the stop). Returns the seconds spent beside training."""
    state, params, device = run.state, run.params, run.rt.device
    ranks = state.ranks or distributed.Ranks()
    every = params.val_every_batches

    def check(done, n_batches, metrics):
        spent = 0.0
        if every and not done % every and done < n_batches:  # the end of the epoch validates anyway
            spent += validate(done, n_batches)
        if done == n_batches or done % state.accumulate_steps:  # the epoch's end, or gradients half accumulated
            return spent
        due, stop = agree(ranks, device, clock.due(done), stop_requested)
        if due or stop:
            start = time.perf_counter()
            ckpt = state.checkpoint(epoch - 1, params, folder.classes)
            ckpt["within"] = position(epoch, done, metrics, monitor, ranks)
            folder.record_within(ckpt, epoch, done)
            clock.written(done)
            spent += time.perf_counter() - start
        if stop:
            folder.flush()  # on disk before the run says it stopped: what a scheduler's grace period must cover
            if signalled_at is not None:
                folder.note_stop(done, time.monotonic() - signalled_at)
            raise KeyboardInterrupt(stop_requested or "SIGTERM")
        return spent

    return check


def check_row(run, epoch, done, n_batches, val_m):
    """history.json's row of a validation within an epoch. step: the batches trained so far (the x of a tracker),
    while a plan's stages keep the batch size."""
    return {"epoch": round(epoch - 1 + done / n_batches, 4), "batch": done, "step": (epoch - 1) * n_batches + done,
            "lr": layer_lrs(run.state.optimizer), "val": val_m}


# ---------------------------------------------------------------- where an epoch stands


def plain(value):
    """Data a checkpoint holds and torch.load(weights_only=True) reads back: tensors, numbers, strings and
    containers of them (an epoch's metrics also hold functions: not state)."""
    if isinstance(value, (list, tuple)):
        return all(plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and plain(v) for k, v in value.items())
    return value is None or isinstance(value, (torch.Tensor, bool, int, float, str))


def sums_of(obj):
    """An object's state as plain data: its attributes that are."""
    return sums_of_dict(vars(obj))


def sums_of_dict(d):
    return detached_copy({k: v for k, v in d.items() if plain(v)})


def restore(obj, sums, device):
    """Put sums_of's data back: tensors in place (a view of one, as segmentation's confusion matrix is of its
    bins, stays one), on this run's device; the rest as it was saved."""
    for name, value in sums.items():
        current = getattr(obj, name, None)
        if isinstance(value, torch.Tensor) and isinstance(current, torch.Tensor) and current.shape == value.shape:
            current.copy_(value)
        else:
            setattr(obj, name, moved(value, device))


def moved(value, device):
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, (list, tuple)):
        return type(value)(moved(v, device) for v in value)
    if isinstance(value, dict):
        return {k: moved(v, device) for k, v in value.items()}
    return value


def position(epoch, done, metrics, monitor, ranks):
    """A checkpoint's `within`: where epoch `epoch` stands after `done` batches, on each rank (each sums the
    metrics and gradient norms of its share; called on every rank)."""
    sums = {"metrics": sums_of(metrics), "monitor": sums_of_dict(monitor.state_dict()) if monitor else None}
    return {"epoch": epoch, "batches": done, "ranks": distributed.gathered(sums, ranks),
            "monitor_start": monitor.start if monitor is not None else None}


def resumed_position(within, state, rt, monitor):
    """(batches done, the epoch's metrics over them) for train_one_epoch's start, with the gradient monitor set as
    it was: this rank's, from a checkpoint's `within`."""
    mine = within["ranks"][state.ranks.rank if state.ranks else 0]
    metrics = state.task.epoch_metrics(state.n_classes, rt.device)
    restore(metrics, mine["metrics"], rt.device)
    if monitor is not None and mine["monitor"]:
        monitor.load_state_dict(mine["monitor"], within["monitor_start"], rt.device)
    return within["batches"], metrics
