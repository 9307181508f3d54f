"""Train the model of one experiment folder.

    python train.py --model_dir experiments/base_model [--data_dir data/digits] [--restore_file last] [KEY=VALUE ...]

Reads MODEL_DIR/params.json (KEY=VALUE overrides it: `num_epochs=3 early_stopping.patience=2`), trains on
DATA_DIR/train, validates on DATA_DIR/valid each epoch and writes everything into MODEL_DIR.
"""

import argparse
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

import model.tasks  # noqa: F401  (registers the tasks in core/tasks.py)
from core.config import Params, load_params
from core.data.loaders import fetch_dataloader, reseed_epoch
from core.rundir import record
from core.rundir.folder import (
    EFFECTIVE,
    LOG,
    Status,
    check_model_dir,
    checkpoint_stamp,
    checkpoint_to_resume,
    claim,
    is_finite,
    nothing_to_do,
    read_status,
    write_status,
)
from core.rundir.outputs import Bystander, RunFolder
from core.stages import stage_of
from core.tasks import TASKS, data_dir_for
from core.trackers import Trackers, artifact_files, check_installed
from core.trackers.rows import run_facts
from core.training import distributed
from core.training.compiling import compile_model
from core.training.engine import epoch_seed, keep_freed_memory, pick_runtime, rank_seed, seed_everything
from core.training.monitor import GradMonitor, gradient_warnings
from core.training.optim import layer_lrs, step_per_epoch
from core.training.state import RESUME_NEEDS, advance_stage, build_state, params_of_stage, run_checkpoint
from core.training.within_epoch import (
    Clock,
    between_batches,
    check_row,
    resumed_position,
    stop_if_asked,
    stop_on_signals,
)
from model.loop import evaluate, train_one_epoch
from utils import UserError, one_line, run_cli, set_logger, write_json

log = logging.getLogger(__name__)
OVERFIT_TARGET = 0.99


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model_dir", default="experiments/base_model", help="experiment folder with params.json")
    ap.add_argument("--data_dir", help="data set with train/ and valid/ (default: a resume's, the one its run trained "
                                       "on; else params data_dir; else the task's own, built on first use: "
                                       + ", ".join(t.data for t in TASKS.values() if t.data) + ")")
    ap.add_argument("--restore_file", choices=["last", "best"], help="continue from MODEL_DIR/<name>.pth.tar")
    ap.add_argument("--stop_at_epoch", type=int, metavar="E",
                    help="pause after epoch E (status 'paused', exit 0): what a successive-halving search runs to "
                         "reach a rung; --restore_file last continues the same run later")
    ap.add_argument("--nproc", type=int, metavar="N",
                    help="train on N processes of this machine (N GPUs, or N CPU processes), as params key nproc: "
                         "relaunches this command under torchrun (docs/training.md)")
    ap.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="override params.json (dotted keys for nested)")
    args = ap.parse_intermixed_args(argv)  # KEY=VALUE overrides before and after options alike
    if args.stop_at_epoch is not None and args.stop_at_epoch < 1:
        raise UserError(f"--stop_at_epoch {args.stop_at_epoch}: must be >= 1")
    if args.nproc is not None and args.nproc < 1:
        raise UserError(f"--nproc {args.nproc}: must be >= 1")
    return args


@dataclass
class Run:
    """One run of this command as main() assembles it: what the functions below share, rather than ten arguments."""

    args: argparse.Namespace
    command: list  # the command line, as record.json keeps it
    params: Params
    params_path: str
    ranks: distributed.Ranks  # this process's place among several (one process: rank 0 of 1)
    launch: bool  # nproc > 1 and not yet under torchrun: this process launches the ranks
    seen: tuple  # the checkpoint's stamp when the run decided what to do: claim() refuses a folder trained since
    resume_path: str | None
    ckpt: dict | None  # the checkpoint a resume continues
    rt: object = None  # core/training/engine.py Runtime: device, autocast, memory format
    data_dir: str = None
    loaders: dict = None  # {"train": ..., "valid": ...}
    classes: list = None
    state: object = None  # core/training/state.py TrainingState: model, optimizer, schedule, EMA, best so far
    notes: list = field(default_factory=list)  # what building the state and compiling have to say, logged
    start_epoch: int = 1
    trackers: Trackers = None  # MLflow, W&B, TensorBoard (params loggers): rank 0's, started early (imports take s)

    @property
    def model_dir(self):
        return self.args.model_dir

    def reload(self, stage_params):
        """The train loader of a stage whose batch size or augmentation differ from the one before."""
        return fetch_dataloader(["train"], self.data_dir, stage_params, self.rt.pin_memory, ranks=self.ranks)[0][
            "train"]


class Outcome(NamedTuple):
    status: Status
    reason: str
    history: list  # history.json's epoch rows
    timing: dict  # wall_time_s, closing_s: the session's record


def main(argv=None):
    run = read_run(parse_args(argv), argv)  # params, this process's place, what a resume continues: reads only
    done = nothing_to_do(run.model_dir, run.ckpt, run.params, run.resume_path, run.args.stop_at_epoch)
    if done is not None:  # finished, or paused there
        return done
    run.rt = pick_runtime(run.params.cuda, run.ranks.local_rank, run.params.deterministic)
    distributed.check(run.params, run.ranks, run.ckpt, run.params_path, run.rt.device.type)
    if run.launch:
        return launch_ranks(run)
    run.trackers = Trackers(run.model_dir, run.params.loggers if run.ranks.is_main else [])
    prepare(run)  # data, model, optimizer, the resumed state: bad input fails here, before a single file is written
    with stop_on_signals():
        return train_beside_rank_0(run) if not run.ranks.is_main else train_and_record(run)


def read_run(args, argv):
    """The run as params.json (and KEY=VALUE), torchrun's environment and the folder's checkpoints describe it."""
    params_path = check_model_dir(args.model_dir)
    params = load_params(params_path, args.overrides + ([f"nproc={args.nproc}"] if args.nproc else []))
    check_installed(params.loggers, params_path)
    launch = params.nproc > 1 and "WORLD_SIZE" not in os.environ
    seen = checkpoint_stamp(args.model_dir)
    resume_path = checkpoint_to_resume(args.model_dir, args.restore_file)
    return Run(args, [sys.argv[0], *(argv if argv is not None else sys.argv[1:])], params, params_path,
               distributed.Ranks(0, params.nproc) if launch else distributed.from_env(), launch, seen, resume_path,
               run_checkpoint(resume_path, RESUME_NEEDS) if resume_path else None)


def launch_ranks(run):
    """nproc > 1: this very command under torchrun, holding the folder's lock for its ranks (a busy folder is said
    once, before they start). Returns the run's exit code."""
    with claim(run.model_dir, run.seen):
        before = read_status(run.model_dir)
        code = distributed.launch(run.params.nproc, run.command[1:])
        return after_torchrun(run.model_dir, code, before)


def prepare(run):
    """Everything training needs, in memory: the process group, seeds, data, the training state (resumed from the
    checkpoint when there is one). Only reads: bad input fails here, before a single file is written."""
    params, ranks = run.params, run.ranks
    distributed.start(ranks, run.rt.device.type)
    keep_freed_memory()  # no page faults for each batch's activations
    seed_everything(rank_seed(params.seed, ranks.rank))  # rank 0 initialises the weights DDP gives the others
    trained_on = record.trained_on(run.model_dir) if run.ckpt else None  # a resume reads the data it trained on
    run.data_dir = data_dir_for(params.task, params.data_dir, run.args.data_dir, trained_on)
    first = run.ckpt["epoch"] + 1 if run.ckpt else 1  # in a plan, its stage decides batch size and augmentation
    run.loaders, run.classes = fetch_dataloader(["train", "valid"], run.data_dir, stage_at(params, first),
                                                run.rt.pin_memory, ranks=ranks)
    run.state, run.notes = build_state(params, run.classes, run.rt, run.loaders["train"], run.params_path,
                                       init_weights=not run.ckpt, epoch=first, ranks=ranks)
    x = preflight(run.state.model, run.loaders, run.rt, run.params_path)
    if params.compile:
        run.notes.append(compile_model(run.state.model, x, run.rt))
    run.start_epoch = run.state.load(run.ckpt, run.resume_path) if run.ckpt else 1


def train_beside_rank_0(run):
    """A rank other than 0: trains its share of every batch and writes nothing."""
    session(run, Bystander(run.model_dir, run.classes))
    distributed.stop(run.ranks)
    return 0


def train_and_record(run):
    """The run that writes the folder: under its lock (if nobody trained here since we looked), the first writes,
    the epochs, the last writes. Returns the exit code of the status it ends with."""
    with claim(run.model_dir, run.seen):
        start_run(run)
        facts = run_facts(run.model_dir, run.params.to_dict(), run.data_dir, record.sessions(run.model_dir)[-1])
        outcome = session(run, RunFolder(run.model_dir, run.params, run.classes, run.state.task, run.trackers, facts))
        finish(run, outcome)
    distributed.stop(run.ranks)
    log.info(f"{outcome.status}: {outcome.reason}; {run.state.tracker.summary()}")
    return outcome.status.exit_code


def session(run, folder):
    """fit(), then the folder's last writes, whatever happens; a failure or an interruption is recorded in the
    status and the record before it propagates."""
    started = time.perf_counter()
    try:
        try:
            status, reason, history = fit(run, folder)
        finally:
            closing_s = folder.close()  # however the run ends: the last checkpoint lands, every figure is drawn
    except BaseException as e:
        if folder.main:
            stopped = isinstance(e, KeyboardInterrupt)  # Ctrl-C, or a signal named by stop_on_signals
            outcome = Status.INTERRUPTED if stopped else Status.FAILED
            reason = (str(e) or "Ctrl-C") if stopped else one_line(e)
            write_status(folder.dir, outcome, reason=reason)
            record.end_session(folder.dir, outcome, time.perf_counter() - started)
            run.trackers.end(outcome, reason, artifact_files(folder.dir, run.params.log_checkpoints))
        raise
    return Outcome(status, reason, history, {"wall_time_s": time.perf_counter() - started, "closing_s": closing_s})


def after_torchrun(model_dir, code, before):
    """The exit code of the run under torchrun, which exits 1 however its ranks ended: the one of the status rank 0
    recorded in this run (130 for interrupted, so a search can resume it), torchrun's otherwise. A run left
    'running' (rank 0 itself was killed: it could not say) becomes 'failed'."""
    record = read_status(model_dir)
    status = record.get("status")
    if code == 0 or record == before or status not in set(Status):
        return code
    if status == Status.RUNNING:
        write_status(model_dir, Status.FAILED, reason=f"a process of the run died (torchrun exit code {code})")
        return code
    return Status(status).exit_code


def stage_at(params, epoch):
    """The params of the stage that trains `epoch` (the run's own without a plan)."""
    return params_of_stage(params, stage_of(params.to_dict(), epoch))


def preflight(model, loaders, rt, where):
    """Augment one image and push one validation batch through the model, so an augmentation or an architecture
    that cannot work on this data (e.g. a 224-px ViT on 32-px images) fails here, before anything is written.
    Returns the two images on the device (compile_model's trial batch)."""
    try:
        loaders["train"].dataset[0]
        x, y = next(iter(loaders["valid"]))
        x, _ = rt.to_device(x[:2], y[:2])
        model.eval()
        with torch.inference_mode(), rt.autocast():
            model(x)
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"{where}: the model or augmentation fails on this data ({type(e).__name__}: "
                        f"{one_line(e)[:300]})") from None
    return x


def start_run(run):
    """First writes: the log, the effective params, the augmentation pipelines, the record and a 'running' status."""
    params, state, loaders = run.params, run.state, run.loaders
    set_logger(os.path.join(run.model_dir, LOG))
    within = run.ckpt.get("within") if run.ckpt else None
    what = f"resuming at epoch {run.start_epoch}" + (f", after batch {within['batches']}" if within else "") \
        if run.ckpt else "starting"
    mode = f" [overfit check: {params.overfit_batches} batch(es)]" if params.overfit_batches else ""
    where = f"{state.ranks.world} processes on {run.rt.device.type}" if state.ranks.active else run.rt.device
    log.info(f"{run.model_dir}: {what} on {where} ({len(loaders['train'].dataset)} train, "
             f"{len(loaders['valid'].dataset)} valid images, {len(run.classes)} classes){mode}")
    write_json(os.path.join(run.model_dir, EFFECTIVE), params.to_dict())
    tf = state.task.transforms_record(loaders["train"].dataset.transform, loaders["valid"].dataset.transform)
    write_json(os.path.join(run.model_dir, "augmentation.json"), tf)
    record.start_session(run.model_dir, params, run.command, run.rt, run.start_epoch, run.data_dir)
    write_status(run.model_dir, Status.RUNNING, epoch=run.start_epoch - 1, num_epochs=params.num_epochs)
    for note in run.notes:
        log.info(note)


def fit(run, folder):
    """The epoch loop, up to num_epochs or a pause after epoch --stop_at_epoch. Returns (status, reason, history).
    A pause changes nothing the run computes (the schedule still spans num_epochs): resuming it gives the run
    that never paused. With a plan (core/stages.py), each stage begins at its first epoch, with its own train
    loader when its batch size or augmentation differ (run.reload)."""
    params, state, loaders, rt, stop_at = run.params, run.state, run.loaders, run.rt, run.args.stop_at_epoch
    within = run.ckpt.get("within") if run.ckpt else None  # the checkpoint was written within epoch start_epoch
    done = within["batches"] if within else 0
    history = folder.kept_history(run.start_epoch - 1, done)
    monitor = GradMonitor(state.model, params.save_summary_steps) if params.monitor_gradients else None
    tracker, clock = state.tracker, Clock(params, state.ranks or distributed.Ranks(), done)
    predict = state.task.predictor(params, classes=folder.classes)
    for epoch in range(run.start_epoch, params.num_epochs + 1):
        epoch_start = time.perf_counter()
        loaders["train"] = advance_stage(state, params, epoch, loaders["train"], run.reload)
        # reseed data order and augmentation per epoch: a resumed run sees what an uninterrupted one would, and one
        # resumed within the epoch starts at the batch after its checkpoint
        skip = done if epoch == run.start_epoch else 0
        reseed_epoch(loaders["train"], epoch_seed(params.seed, epoch), skip)
        if monitor:
            monitor.start_epoch()
        check = between_batches(run, folder, epoch, monitor, clock, validator(run, folder, predict, epoch))
        train_m = train_one_epoch(state, loaders["train"], rt, monitor=monitor, check=check,
                                  summary_steps=params.save_summary_steps, desc=f"epoch {epoch}/{params.num_epochs}",
                                  start=resumed_position(within, state, rt, monitor) if skip else None)
        train_m = distributed.merged(train_m, state.ranks)  # several processes: over every rank's share
        # validation sees the EMA of the weights, if any; with several processes, rank 0 validates on every image
        val_m, details = (evaluate(state.eval_model, loaders["valid"], rt, state.task, state.n_classes, predict,
                                   desc="valid") if folder.main else (None, None))
        val_m = distributed.from_main(val_m, state.ranks)
        row = {"epoch": epoch, "lr": layer_lrs(state.optimizer),
               **{k: train_m.pop(k) for k in ("time_s", "data_time_s", "images_per_s")},
               "epoch_s": time.perf_counter() - epoch_start,  # train + valid: what a cost estimate needs
               "train": train_m, "val": val_m, **({"stage": state.stage} if params.stages else {})}
        if (peak := rt.peak_memory_mb()) is not None:
            row["gpu_peak_mb"] = peak  # this epoch's, training and validation
        if monitor:
            row["grad_norm"], row["update_ratio"] = monitor.end_epoch()
            row["grad_warnings"] = gradient_warnings(row["grad_norm"])
        if not (is_finite(train_m) and is_finite(val_m)):
            log.info(f"epoch {epoch}: non-finite loss (train {train_m['loss']}, valid {val_m['loss']})")
            return Status.DIVERGED, f"non-finite loss at epoch {epoch}", history
        improved = tracker.update(val_m[tracker.metric], epoch)
        step_per_epoch(state.scheduler, state.stage_params, val_m[tracker.metric])
        history.append(row)
        log.info(epoch_line(row, params.num_epochs, improved))
        last = epoch == params.num_epochs or tracker.should_stop
        reason = ("early stopping" if epoch < params.num_epochs else "all epochs done") if last else None
        ckpt = state.checkpoint(epoch, params, folder.classes, stop_reason=reason)
        folder.record_epoch(history, improved, ckpt, details, loaders["valid"].dataset)
        clock.written()
        if last:
            return Status.COMPLETED, reason, history
        if epoch == stop_at:
            return Status.PAUSED, f"paused at epoch {epoch} (--stop_at_epoch)", history
        stop_if_asked(state.ranks or distributed.Ranks(), rt.device)  # a signal during validation: stop here
    return Status.COMPLETED, "all epochs done", history


def validator(run, folder, predict, epoch):
    """validate(batches done, n_batches) for a validation within an epoch (val_every_batches): the weights as they
    are (rank 0), a log line and a row at the fractional epoch (history.json "checks"); returns its seconds. Nothing
    the training computes changes: validation draws no random numbers and updates no statistics."""
    state = run.state

    def validate(done, n_batches):
        start = time.perf_counter()
        if folder.main:
            val_m, _ = evaluate(state.eval_model, run.loaders["valid"], run.rt, state.task, state.n_classes, predict,
                                desc="valid")
            folder.record_check(check_row(run, epoch, done, n_batches, val_m))
            log.info(f"epoch {epoch - 1 + done / n_batches:.2f} (batch {done}/{n_batches})  valid: "
                     f"{metrics_text(val_m)}")
        distributed.wait_for_all(state.ranks)  # the others wait here, so every rank leaves the wait out of its time
        return time.perf_counter() - start

    return validate


def finish(run, outcome):
    """The final status, the session's record (with its timing) and, in overfit mode, the verdict of the sanity
    check."""
    params, history = run.params, outcome.history
    trained_now = [r for r in history if r["epoch"] >= run.start_epoch]
    images_per_s = sum(r["images_per_s"] for r in trained_now) / len(trained_now) if trained_now else None
    extra = {}
    if params.overfit_batches and history:
        metric = run.state.task.overfit_metric
        acc = history[-1]["val"][metric]
        passed = acc >= OVERFIT_TARGET
        extra["overfit_check"] = {f"train_{metric}": acc, "passed": passed, "target": OVERFIT_TARGET}
        log.info(f"overfit check: {metric} {acc:.4f} on the {params.overfit_batches} training batch(es) - "
                 + ("passed" if passed else f"FAILED (want >= {OVERFIT_TARGET}): the model or its training is broken"))
    write_status(run.model_dir, outcome.status, reason=outcome.reason, **extra)
    record.end_session(run.model_dir, outcome.status, images_per_s=images_per_s, **outcome.timing)
    run.trackers.end(outcome.status, outcome.reason, artifact_files(run.model_dir, params.log_checkpoints))


def metrics_text(metrics):
    return " ".join(f"{k} {v:.4f}" for k, v in metrics.items())


def epoch_line(row, n, improved):
    star = "  * best" if improved else ""
    return (f"epoch {row['epoch']}/{n}  train: {metrics_text(row['train'])}  |  valid: {metrics_text(row['val'])}  |  "
            f"{row['time_s']:.1f}s {row['images_per_s']:.0f} img/s{star}")


if __name__ == "__main__":
    run_cli(main)
