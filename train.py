"""Train the model of one experiment folder.

    python train.py --model_dir experiments/base_model [--data_dir data/digits] [--restore_file last] [KEY=VALUE ...]

Reads MODEL_DIR/params.json (KEY=VALUE overrides it: `num_epochs=3 early_stopping.patience=2`), trains on
DATA_DIR/train, validates on DATA_DIR/valid each epoch and writes everything into MODEL_DIR.
"""

import argparse
import logging
import os
import signal
import sys
import time

import torch

from core.config import load_params
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
from core.rundir.outputs import Bystander, RunFolder, tensorboard_writer
from core.stages import stage_of
from core.training import distributed
from core.training.compiling import compile_model
from core.training.engine import epoch_seed, keep_freed_memory, pick_runtime, rank_seed, seed_everything
from core.training.monitor import GradMonitor, gradient_warnings
from core.training.optim import layer_lrs, step_per_epoch
from core.training.state import RESUME_NEEDS, advance_stage, build_state, params_of_stage, run_checkpoint
from model.loop import evaluate, train_one_epoch
from model.tasks import TASKS, data_dir_for
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


def main(argv=None):
    args = parse_args(argv)
    params_path = check_model_dir(args.model_dir)
    params = load_params(params_path, args.overrides + ([f"nproc={args.nproc}"] if args.nproc else []))
    # nproc > 1 and not yet under torchrun: check here, then run this command under torchrun
    launch = params.nproc > 1 and "WORLD_SIZE" not in os.environ
    ranks = distributed.Ranks(0, params.nproc) if launch else distributed.from_env()  # this process's place
    seen = checkpoint_stamp(args.model_dir)
    resume_path = checkpoint_to_resume(args.model_dir, args.restore_file)
    ckpt = run_checkpoint(resume_path, RESUME_NEEDS) if resume_path else None
    done = nothing_to_do(args.model_dir, ckpt, params, resume_path, args.stop_at_epoch)  # finished, or paused there
    if done is not None:
        return done

    # Everything below up to start_run() only reads: bad input fails here, before a single file is written.
    rt = pick_runtime(params.cuda, ranks.local_rank, params.deterministic)  # device, autocast dtype, memory format
    distributed.check(params, ranks, ckpt, params_path, rt.device.type)
    if launch:  # holding the folder's lock for the ranks, so a busy folder is said once, before they start
        with claim(args.model_dir, seen):
            before = read_status(args.model_dir)
            code = distributed.launch(params.nproc, sys.argv[1:] if argv is None else argv)
            return after_torchrun(args.model_dir, code, before)
    distributed.start(ranks, rt.device.type)
    keep_freed_memory()  # no page faults for each batch's activations
    seed_everything(rank_seed(params.seed, ranks.rank))  # rank 0 initialises the weights DDP gives the others
    trained_on = record.trained_on(args.model_dir) if ckpt else None  # a resume reads the data it trained on
    data_dir = data_dir_for(params.task, params.data_dir, args.data_dir, trained_on)
    first = ckpt["epoch"] + 1 if ckpt else 1  # in a plan, its stage decides batch size and augmentation
    loaders, classes = fetch_dataloader(["train", "valid"], data_dir, stage_at(params, first), rt.pin_memory,
                                        ranks=ranks)
    state, notes = build_state(params, classes, rt, loaders["train"], params_path, init_weights=not ckpt, epoch=first,
                               ranks=ranks)
    x = preflight(state.model, loaders, rt, params_path)
    if params.compile:
        notes.append(compile_model(state.model, x, rt))
    start_epoch = state.load(ckpt, resume_path) if ckpt else 1
    reload = lambda sp: fetch_dataloader(["train"], data_dir, sp, rt.pin_memory, ranks=ranks)[0]["train"]  # noqa: E731

    stop_on_signals()
    if not ranks.is_main:  # the other ranks train their share and write nothing
        session(Bystander(args.model_dir, classes), params, state, loaders, rt, start_epoch, args.stop_at_epoch,
                reload)
        distributed.stop(ranks)
        return 0
    tensorboard = tensorboard_writer(args.model_dir, params.tensorboard)
    with claim(args.model_dir, seen):  # the folder's lock, if nobody trained here since we looked
        start_run(args, argv, params, loaders, classes, rt, start_epoch, state, notes, data_dir)
        folder = RunFolder(args.model_dir, params, classes, state.task, tensorboard)
        status, reason, history, timing = session(folder, params, state, loaders, rt, start_epoch, args.stop_at_epoch,
                                                  reload)
        finish(args.model_dir, params, state.task, status, reason, history, start_epoch, timing)
    distributed.stop(ranks)
    log.info(f"{status}: {reason}; {state.tracker.summary()}")
    return status.exit_code


def session(folder, params, state, loaders, rt, start_epoch, stop_at, reload):
    """fit(), then the folder's last writes, whatever happens; a failure or an interruption is recorded in the
    status and the record before it propagates. Returns fit's (status, reason, history) and the timing."""
    started = time.perf_counter()
    try:
        try:
            status, reason, history = fit(folder, params, state, loaders, rt, start_epoch, stop_at, reload)
        finally:
            closing_s = folder.close()  # however the run ends: the last checkpoint lands, every figure is drawn
    except BaseException as e:
        if folder.main:
            stopped = isinstance(e, KeyboardInterrupt)  # Ctrl-C, or a signal named by stop_on_signals
            outcome = Status.INTERRUPTED if stopped else Status.FAILED
            write_status(folder.dir, outcome, reason=(str(e) or "Ctrl-C") if stopped else one_line(e))
            record.end_session(folder.dir, outcome, time.perf_counter() - started)
        raise
    return status, reason, history, {"wall_time_s": time.perf_counter() - started, "closing_s": closing_s}


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


def stop_on_signals():
    """SIGTERM (a scheduler's kill or requeue) and SIGUSR2 (Slurm's time-limit warning) stop the run like Ctrl-C:
    status 'interrupted', and the last checkpoint to resume from."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    for sig in (signal.SIGTERM, signal.SIGUSR2):
        signal.signal(sig, interrupt)


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


def start_run(args, argv, params, loaders, classes, rt, start_epoch, state, notes, data_dir):
    """First writes: the log, the effective params, the augmentation pipelines, the record and a 'running' status."""
    set_logger(os.path.join(args.model_dir, LOG))
    what = f"resuming at epoch {start_epoch}" if start_epoch > 1 else "starting"
    mode = f" [overfit check: {params.overfit_batches} batch(es)]" if params.overfit_batches else ""
    where = f"{state.ranks.world} processes on {rt.device.type}" if state.ranks.active else rt.device
    log.info(f"{args.model_dir}: {what} on {where} ({len(loaders['train'].dataset)} train, "
             f"{len(loaders['valid'].dataset)} valid images, {len(classes)} classes){mode}")
    write_json(os.path.join(args.model_dir, EFFECTIVE), params.to_dict())
    tf = state.task.transforms_record(loaders["train"].dataset.transform, loaders["valid"].dataset.transform)
    write_json(os.path.join(args.model_dir, "augmentation.json"), tf)
    record.start_session(args.model_dir, params, [sys.argv[0], *(argv if argv is not None else sys.argv[1:])], rt,
                         start_epoch, data_dir)
    write_status(args.model_dir, Status.RUNNING, epoch=start_epoch - 1, num_epochs=params.num_epochs)
    for note in notes:
        log.info(note)


def fit(folder, params, state, loaders, rt, start_epoch, stop_at=None, reload=None):
    """The epoch loop, up to num_epochs or a pause after epoch `stop_at`. Returns (status, reason, history).
    A pause changes nothing the run computes (the schedule still spans num_epochs): resuming it gives the run
    that never paused. With a plan (core/stages.py), each stage begins at its first epoch: reload(stage params)
    gives its train loader when its batch size or augmentation differ."""
    history = folder.kept_history(start_epoch - 1)
    monitor = GradMonitor(state.model, params.save_summary_steps) if params.monitor_gradients else None
    n_clas, tracker = len(folder.classes), state.tracker
    predict = state.task.predictor(params, classes=folder.classes)
    for epoch in range(start_epoch, params.num_epochs + 1):
        epoch_start = time.perf_counter()
        loaders["train"] = advance_stage(state, params, epoch, loaders["train"], reload)
        # reseed data order and augmentation per epoch: a resumed run sees what an uninterrupted one would
        reseed_epoch(loaders["train"], epoch_seed(params.seed, epoch))
        if monitor:
            monitor.start_epoch()
        check = within_epoch(folder, params, state, loaders["valid"], rt, predict, epoch)
        train_m = train_one_epoch(state, loaders["train"], rt, n_clas, params.save_summary_steps, monitor,
                                  desc=f"epoch {epoch}/{params.num_epochs}", check=check)
        train_m = distributed.merged(train_m, state.ranks)  # several processes: over every rank's share
        # validation sees the EMA of the weights, if any; with several processes, rank 0 validates on every image
        val_m, details = (evaluate(state.eval_model, loaders["valid"], rt, state.task, n_clas, predict, "valid")
                          if folder.main else (None, None))
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
        if last:
            return Status.COMPLETED, reason, history
        if epoch == stop_at:
            return Status.PAUSED, f"paused at epoch {epoch} (--stop_at_epoch)", history
    return Status.COMPLETED, "all epochs done", history


def within_epoch(folder, params, state, valid_loader, rt, predict, epoch):
    """val_every_batches: check(batches done, n_batches) validates the weights as they are (rank 0), logs and
    records a row at the fractional epoch (history.json "checks"); None when off. Nothing the training computes
    changes: validation draws no random numbers and updates no statistics."""
    every = params.val_every_batches
    if not every:
        return None

    def check(done, n_batches):
        if done % every or done == n_batches:  # the end of the epoch validates anyway
            return 0.0
        start = time.perf_counter()
        if folder.main:
            val_m, _ = evaluate(state.eval_model, valid_loader, rt, state.task, len(folder.classes), predict, "valid")
            row = {"epoch": round(epoch - 1 + done / n_batches, 4), "batch": done, "lr": layer_lrs(state.optimizer),
                   "val": val_m}
            folder.record_check(row, step=(epoch - 1) * n_batches + done)
            log.info(f"epoch {row['epoch']:.2f} (batch {done}/{n_batches})  valid: {metrics_text(val_m)}")
        distributed.wait_for_all(state.ranks)  # the others wait here, so every rank leaves the wait out of its time
        return time.perf_counter() - start

    return check


def finish(model_dir, params, task, status, reason, history, start_epoch, timing):
    """The final status, the session's record (with `timing`: wall_time_s, closing_s) and, in overfit mode, the
    verdict of the sanity check."""
    trained_now = [r for r in history if r["epoch"] >= start_epoch]
    images_per_s = sum(r["images_per_s"] for r in trained_now) / len(trained_now) if trained_now else None
    extra = {}
    if params.overfit_batches and history:
        metric = task.overfit_metric
        acc = history[-1]["val"][metric]
        passed = acc >= OVERFIT_TARGET
        extra["overfit_check"] = {f"train_{metric}": acc, "passed": passed, "target": OVERFIT_TARGET}
        log.info(f"overfit check: {metric} {acc:.4f} on the {params.overfit_batches} training batch(es) - "
                 + ("passed" if passed else f"FAILED (want >= {OVERFIT_TARGET}): the model or its training is broken"))
    write_status(model_dir, status, reason=reason, **extra)
    record.end_session(model_dir, status, images_per_s=images_per_s, **timing)


def metrics_text(metrics):
    return " ".join(f"{k} {v:.4f}" for k, v in metrics.items())


def epoch_line(row, n, improved):
    star = "  * best" if improved else ""
    return (f"epoch {row['epoch']}/{n}  train: {metrics_text(row['train'])}  |  valid: {metrics_text(row['val'])}  |  "
            f"{row['time_s']:.1f}s {row['images_per_s']:.0f} img/s{star}")


if __name__ == "__main__":
    run_cli(main)
