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
import torch.nn as nn

from core import record
from core.config import load_params
from core.engine import (
    epoch_seed,
    evaluate,
    pick_runtime,
    rng_state,
    seed_everything,
    set_rng_state,
    train_one_epoch,
)
from core.monitor import GradMonitor, gradient_warnings
from core.optim import PER_BATCH, build_optimizer, build_scheduler, step_per_epoch
from core.outputs import RunFolder, tensorboard_writer
from core.run import (
    EFFECTIVE,
    BestTracker,
    check_model_dir,
    check_resume,
    checkpoint_stamp,
    checkpoint_to_resume,
    folder_lock,
    is_finite,
    read_status,
    write_status,
)
from core.tv_models import load_init_weights
from data.build_dataset import DEFAULT_DST, ensure_data
from model.data_loader import fetch_dataloader, transforms_record
from model.net import build_model
from utils import FolderBusy, UserError, load_checkpoint, one_line, run_cli, set_logger, write_json

log = logging.getLogger(__name__)
OVERFIT_TARGET = 0.99


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model_dir", default="experiments/base_model", help="experiment folder with params.json")
    ap.add_argument("--data_dir", default=DEFAULT_DST,
                    help="data set with train/ and valid/ (the default is built on first use)")
    ap.add_argument("--restore_file", choices=["last", "best"], help="continue from MODEL_DIR/<name>.pth.tar")
    ap.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="override params.json (dotted keys for nested)")
    return ap.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    params_path = check_model_dir(args.model_dir)
    params = load_params(params_path, args.overrides)
    seen = checkpoint_stamp(args.model_dir)
    resume_path = checkpoint_to_resume(args.model_dir, args.restore_file)
    ckpt = load_checkpoint(resume_path) if resume_path else None
    if ckpt and is_finished(args.model_dir, ckpt):
        print(f"{args.model_dir}: already completed (checkpoint at epoch {ckpt['epoch']}); nothing to do "
              f"(to train further, start a new folder with init_weights_path)")
        return 0
    if ckpt:
        check_resume(ckpt, params, read_status(args.model_dir), resume_path)

    # Everything below up to start_run() only reads: bad input fails here, before a single file is written.
    rt = pick_runtime(params.cuda)
    seed_everything(params.seed)
    loaders, classes = fetch_dataloader(["train", "valid"], ensure_data(args.data_dir), params, rt.pin_memory)
    model, optimizer, scheduler, notes = build(params, classes, rt, len(loaders["train"]), params_path, not ckpt)
    preflight(model, loaders, rt, params_path)
    tracker = BestTracker.from_params(params.early_stopping)
    start_epoch = restore(ckpt, resume_path, model, optimizer, scheduler, tracker) if ckpt else 1
    tensorboard = tensorboard_writer(args.model_dir, params.tensorboard)

    stop_on_signals()
    with folder_lock(args.model_dir):
        if checkpoint_stamp(args.model_dir) != seen:  # someone trained here between our decision and the lock
            raise FolderBusy(f"--model_dir {args.model_dir}: another process trained this folder while this run "
                             f"was starting; run the command again")
        start_run(args, argv, params, loaders, classes, rt, start_epoch)
        for note in notes:
            log.info(note)
        folder = RunFolder(args.model_dir, params, classes, tensorboard)
        started = time.perf_counter()
        try:
            try:
                status, reason, history = fit(folder, params, model, loaders, optimizer, scheduler, tracker, rt,
                                              start_epoch)
            finally:
                closing_s = folder.close()  # however the run ends: the last checkpoint lands, every figure is drawn
        except BaseException as e:
            outcome = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
            write_status(args.model_dir, outcome, reason=one_line(e) or "interrupted")
            record.end_session(args.model_dir, outcome, time.perf_counter() - started)
            raise
        finish(args.model_dir, params, status, reason, history, start_epoch,
               {"wall_time_s": time.perf_counter() - started, "closing_s": closing_s})
    best = f"best val {tracker.metric} {tracker.best:.4f} at epoch {tracker.best_epoch}" if tracker.best_epoch else ""
    log.info(f"{status}: {reason}; {best}")
    return 0 if status == "completed" else 1


def build(params, classes, rt, steps_per_epoch, where, fresh=True):
    """Model (on the device), optimizer, schedule, and notes to log; shared with the search's smoke test."""
    if params.n_clas is not None and params.n_clas != len(classes):
        raise UserError(f"{where}: key 'n_clas' is {params.n_clas} but the data has {len(classes)} class folders")
    if params.early_stopping.monitor_metric == "top5" and len(classes) < 5:
        raise UserError(f"{where}: key 'early_stopping.monitor_metric' is top5 but the data has only "
                        f"{len(classes)} classes")
    model, notes = build_model(params, len(classes)), []
    if params.init_weights_path and fresh:
        skipped = load_init_weights(model, params.init_weights_path)
        notes.append(f"initial weights from {params.init_weights_path}; not matched: {skipped or 'none'}")
    model = rt.prepare(model)
    optimizer = build_optimizer(params, model)
    return model, optimizer, build_scheduler(params, optimizer, steps_per_epoch), notes


def stop_on_signals():
    """SIGTERM (a scheduler's kill or requeue) and SIGUSR2 (Slurm's time-limit warning) stop the run like Ctrl-C:
    status 'interrupted', and the last checkpoint to resume from."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    for sig in (signal.SIGTERM, signal.SIGUSR2):
        signal.signal(sig, interrupt)


def preflight(model, loaders, rt, where):
    """Augment one image and push one validation batch through the model, so an augmentation or an architecture
    that cannot work on this data (e.g. a 224-px ViT on 32-px images) fails here, before anything is written."""
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


def is_finished(model_dir, ckpt):
    """A run is finished when its checkpoint says so; repair a status record its end did not get to write."""
    recorded = read_status(model_dir).get("status") == "completed"
    if ckpt.get("stop_reason") and not recorded:
        write_status(model_dir, "completed", reason=ckpt["stop_reason"], epoch=ckpt["epoch"])
    return recorded or bool(ckpt.get("stop_reason"))


def restore(ckpt, path, model, optimizer, scheduler, tracker):
    """Load a checkpoint's full training state; return the epoch to start from."""
    try:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if scheduler is not None and ckpt.get("scheduler"):
            scheduler.load_state_dict(ckpt["scheduler"])
    except (KeyError, ValueError, RuntimeError) as e:
        raise UserError(f"{path}: does not match params.json (arch or learning_rate changed?): "
                        f"{one_line(e)[:200]}") from None
    # only the tracker's progress: its settings (patience, metric) are checked equal by check_resume
    for key in ("best", "best_epoch", "bad_epochs"):
        setattr(tracker, key, ckpt["tracker"][key])
    set_rng_state(ckpt["rng"])
    return ckpt["epoch"] + 1


def start_run(args, argv, params, loaders, classes, rt, start_epoch):
    """First writes: the log, the effective params, the augmentation pipelines, the record and a 'running' status."""
    set_logger(os.path.join(args.model_dir, "train.log"))
    what = f"resuming at epoch {start_epoch}" if start_epoch > 1 else "starting"
    mode = f" [overfit check: {params.overfit_batches} batch(es)]" if params.overfit_batches else ""
    log.info(f"{args.model_dir}: {what} on {rt.device} ({len(loaders['train'].dataset)} train, "
             f"{len(loaders['valid'].dataset)} valid images, {len(classes)} classes){mode}")
    write_json(os.path.join(args.model_dir, EFFECTIVE), params.to_dict())
    tf = transforms_record(loaders["train"].dataset.transform, loaders["valid"].dataset.transform)
    write_json(os.path.join(args.model_dir, "augmentation.json"), tf)
    record.start_session(args.model_dir, params, [sys.argv[0], *(argv if argv is not None else sys.argv[1:])], rt,
                         start_epoch)
    write_status(args.model_dir, "running", epoch=start_epoch - 1, num_epochs=params.num_epochs)


def fit(folder, params, model, loaders, optimizer, scheduler, tracker, rt, start_epoch):
    """The epoch loop. Returns (status, reason, history)."""
    history = folder.load_history(start_epoch - 1)
    loss_fn = nn.CrossEntropyLoss()
    batch_scheduler = scheduler if params.scheduler in PER_BATCH else None
    monitor = GradMonitor(model, params.save_summary_steps) if params.monitor_gradients else None
    n_clas = len(folder.classes)
    for epoch in range(start_epoch, params.num_epochs + 1):
        epoch_start = time.perf_counter()
        # reseed data order and augmentation per epoch: a resumed run sees what an uninterrupted one would
        loaders["train"].generator.manual_seed(epoch_seed(params.seed, epoch))
        loaders["train"].dataset.transform.set_random_seed(epoch_seed(params.seed, epoch))
        if monitor:
            monitor.start_epoch()
        train_m = train_one_epoch(model, loaders["train"], loss_fn, optimizer, batch_scheduler, rt, n_clas,
                                  params.save_summary_steps, desc=f"epoch {epoch}/{params.num_epochs}",
                                  monitor=monitor)
        val_m, details = evaluate(model, loaders["valid"], loss_fn, rt, n_clas, desc="valid")
        row = {"epoch": epoch, "lr": [g["lr"] for g in optimizer.param_groups],
               **{k: train_m.pop(k) for k in ("time_s", "data_time_s", "images_per_s")},
               "epoch_s": time.perf_counter() - epoch_start,  # train + valid: what a cost estimate needs
               "train": train_m, "val": val_m}
        if monitor:
            row["grad_norm"], row["update_ratio"] = monitor.end_epoch()
            row["grad_warnings"] = gradient_warnings(row["grad_norm"])
        if not (is_finite(train_m) and is_finite(val_m)):
            log.info(f"epoch {epoch}: non-finite loss (train {train_m['loss']}, valid {val_m['loss']})")
            return "diverged", f"non-finite loss at epoch {epoch}", history
        improved = tracker.update(val_m[tracker.metric], epoch)
        step_per_epoch(scheduler, params, val_m[tracker.metric])
        history.append(row)
        log.info(epoch_line(row, params.num_epochs, improved))
        last = epoch == params.num_epochs or tracker.should_stop
        reason = ("early stopping" if epoch < params.num_epochs else "all epochs done") if last else None
        state = {"epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict() if scheduler else None, "tracker": tracker.state(),
                 "rng": rng_state(), "params": params.to_dict(), "classes": folder.classes, "stop_reason": reason}
        folder.record_epoch(history, improved, state, details, loaders["valid"].dataset)
        if last:
            return "completed", reason, history
    return "completed", "all epochs done", history


def finish(model_dir, params, status, reason, history, start_epoch, timing):
    """The final status, the session's record (with `timing`: wall_time_s, closing_s) and, in overfit mode, the
    verdict of the sanity check."""
    session = [r for r in history if r["epoch"] >= start_epoch]
    images_per_s = sum(r["images_per_s"] for r in session) / len(session) if session else None
    extra = {}
    if params.overfit_batches and history:
        acc = history[-1]["val"]["accuracy"]
        passed = acc >= OVERFIT_TARGET
        extra["overfit_check"] = {"train_accuracy": acc, "passed": passed, "target": OVERFIT_TARGET}
        log.info(f"overfit check: accuracy {acc:.4f} on the {params.overfit_batches} training batch(es) - "
                 + ("passed" if passed else f"FAILED (want >= {OVERFIT_TARGET}): the model or its training is broken"))
    write_status(model_dir, status, reason=reason, **extra)
    record.end_session(model_dir, status, images_per_s=images_per_s, **timing)


def epoch_line(row, n, improved):
    show = lambda m: " ".join(f"{k} {v:.4f}" for k, v in m.items())  # noqa: E731
    star = "  * best" if improved else ""
    return (f"epoch {row['epoch']}/{n}  train: {show(row['train'])}  |  valid: {show(row['val'])}  |  "
            f"{row['time_s']:.1f}s {row['images_per_s']:.0f} img/s{star}")


if __name__ == "__main__":
    run_cli(main)
