"""Everything train.py writes at the end of an epoch, off the critical path and in an order that survives a kill.

At the end of an epoch the training loop hands RunFolder a copy of the training state and goes on with the next
epoch. A background thread writes history.json and the metrics files, then the checkpoint (best before last: a
kill in between must not leave best.pth.tar an epoch behind), then the status. last.pth.tar is the commit point: a
resume starts from it and truncates history to its epoch, so the status never names an epoch the checkpoint lacks.
Figures are drawn by a helper process (core/rundir/plotter.py), never by the training process.
"""

import logging
import os
import threading
import time

from core.rundir.folder import (
    HISTORY,
    Status,
    checkpoint_path,
    kept_rows,
    load_history_and_checks,
    metrics_file,
    write_status,
)
from core.rundir.plotter import Plotter
from core.training.monitor import gallery_indices
from core.training.state import detached_copy
from utils import save_checkpoint, write_json

log = logging.getLogger(__name__)


class RunFolder:
    main = True  # the process that writes the folder (rank 0 of several)

    def __init__(self, model_dir, params, classes, task, trackers, facts):
        """trackers: core/trackers Trackers (MLflow, W&B, TensorBoard), opened once the kept history is known;
        facts: what they record about the run besides its metrics (core/trackers run_facts)."""
        self.dir, self.params, self.classes, self.task = model_dir, params, classes, task
        self.trackers, self.facts = trackers, facts
        self.writes = Background()
        self.epochs, self.checks = [], []  # history.json's rows: epochs, validations within them
        self.plotter = Plotter(model_dir, params.plot_every_s, task.draw_best)

    def path(self, name):
        return os.path.join(self.dir, name)

    def kept_history(self, up_to_epoch, batches=0):
        """The rows of the epochs a resume keeps, with the validations within them (checks), and those within the
        next epoch up to `batches` (a resume from a checkpoint within it)."""
        self.epochs, self.checks = kept_rows(*load_history_and_checks(self.dir), up_to_epoch, batches)
        self.trackers.open(self.facts, [up_to_epoch, batches])  # a tracker lacking kept rows gets them now
        return list(self.epochs)

    def record_epoch(self, history, improved, state, details, valid_set):
        """Start writing the epoch that just ended; returns once the previous epoch's writes are done."""
        best = self.best_figures(history[-1]["epoch"], details, valid_set) if improved else None
        snapshot = detached_copy(state)  # the next epoch changes the weights in place while this one is written
        self.epochs = list(history)
        self.writes.submit(self.write_epoch, self.epochs, list(self.checks), improved, snapshot, best)

    def record_within(self, state, epoch, batches):
        """A checkpoint within `epoch`, after `batches` of its batches: last.pth.tar (written in the background, as
        at an epoch's end) and the status saying so."""
        self.writes.submit(self.write_within, within_snapshot(state), epoch, batches)

    def write_within(self, state, epoch, batches):
        save_checkpoint(state, checkpoint_path(self.dir))
        write_status(self.dir, Status.RUNNING, epoch=epoch - 1, batch=batches)

    def flush(self):
        """Wait for the writes under way (a checkpoint within an epoch before a stop)."""
        self.writes.join()

    def note_stop(self, batches, seconds):
        """A stop asked for by a signal: the checkpoint after `batches` landed `seconds` after the signal."""
        write_status(self.dir, Status.RUNNING, signal_to_checkpoint_s=round(seconds, 3))
        log.info(f"stopping after batch {batches}: last.pth.tar holds it, {seconds:.2f} s after the signal")

    def record_check(self, row):
        """A validation within an epoch (val_every_batches): history.json gains it, the figures are redrawn."""
        self.checks.append(row)
        self.writes.submit(self.write_history, self.epochs, list(self.checks))

    def write_history(self, epochs, checks):
        write_json(self.path(HISTORY), {"classes": self.classes, "epochs": epochs, **({"checks": checks} if checks
                                                                                      else {})})
        self.plotter.history_changed()
        self.trackers.sync()  # they read history.json, in a helper process

    def write_epoch(self, history, checks, improved, state, best):
        row = history[-1]
        self.write_history(history, checks)
        val = dict(row["val"], epoch=row["epoch"])
        write_json(self.path(metrics_file("val", "last")), val)
        if improved:
            write_json(self.path(metrics_file("val", "best")), val)
        # when the best epoch is this one, best.pth.tar is a hard link to the same bytes, not a second write
        save_checkpoint(state, checkpoint_path(self.dir), also=[checkpoint_path(self.dir, "best")] if improved else [])
        write_status(self.dir, Status.RUNNING, epoch=row["epoch"], batch=None)
        if best:
            self.plotter.new_best(best)

    def best_figures(self, epoch, details, valid_set):
        """What the task's figures of a new best epoch (its gallery, its confusion matrix) need, as plain data for
        the plotter."""
        fixed = gallery_indices(self.params, len(valid_set))
        return self.task.best_figures(epoch, details, valid_set, self.classes, fixed)

    def close(self):
        """Wait for the last writes (their errors are raised here), then for every figure to be drawn. Returns the
        seconds this took: what the end of a run costs beyond training."""
        start = time.perf_counter()
        try:
            self.writes.join()
        finally:
            self.plotter.close()
        return time.perf_counter() - start


def within_snapshot(state):
    """A copy of a checkpoint within an epoch that the loop may go on from, as detached_copy, but for the epoch's
    first weights (the gradient monitor's): nothing changes them until the epoch ends, so they are not copied."""
    start = state["within"].pop("monitor_start")
    snapshot = detached_copy(state)
    snapshot["within"]["monitor_start"] = start
    return snapshot


class Background:
    """One job at a time on a worker thread; a job's error is raised by the next submit or join."""

    def __init__(self):
        self.thread, self.error, self.done = None, None, threading.Event()

    def submit(self, fn, *args):
        self.join()
        self.done.clear()
        self.thread = threading.Thread(target=self.run, args=(fn, *args), name="epoch-writes")
        self.thread.start()

    def run(self, fn, *args):
        try:
            fn(*args)
        except BaseException as e:
            self.error = e
        finally:
            self.done.set()

    def join(self):
        """Wait for the job. A Ctrl-C (or SIGTERM) meanwhile is raised once the job is done: a job cut short would
        finish as the process exits and write 'running' over the status the interruption wrote. (An event, not
        Thread.join: Python 3.11's join, interrupted, marks a running thread stopped.)"""
        interrupted = None
        while self.thread is not None:
            try:
                self.done.wait()
                self.thread.join()
                self.thread = None
            except KeyboardInterrupt as e:
                interrupted = e
        if self.error is not None:
            error, self.error = self.error, None
            raise error
        if interrupted is not None:
            raise interrupted


class Bystander:
    """A RunFolder's stand-in on ranks other than 0 (several processes): the same calls, no writes."""

    main = False

    def __init__(self, model_dir, classes):
        self.dir, self.classes = model_dir, classes

    def kept_history(self, up_to_epoch, batches=0):
        return []

    def record_epoch(self, *args):
        pass

    def record_check(self, row):
        pass

    def record_within(self, state, epoch, batches):
        pass

    def flush(self):
        pass

    def note_stop(self, batches, seconds):
        pass

    def close(self):
        return 0.0
