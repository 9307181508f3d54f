"""The trackers' helper process: it imports the trackers while the trainer builds its data and model, then does
what the trainer's messages say (core/trackers/__init__.py Trackers):

    {"open": facts, "up_to": [E, B]}   open (or reopen) each tracker's run, write their ids into trackers.json,
                                       log the kept rows of history.json (epochs <= E, B batches of the next) a
                                       tracker lacks
    {"sync": 1}                        history.json changed: log the rows a tracker lacks
    {"end": [status, reason, files]}   keep the files as artifacts, end each run in that state
    {"close": true}                    exit

It reads history.json itself: the folder is the source of truth, and the messages stay one short line. A tracker
that raises is one warning (in train.log and on the console) and is dropped for the rest of the run.
"""

import logging
import os
import signal

from core.forked import Lines
from core.rundir.folder import LOG, kept_rows, load_history_and_checks
from core.trackers import parent_record, read_record, write_record
from utils import die_with_parent, one_line, set_logger

log = logging.getLogger(__name__)


def backend(name):
    """The class that logs to tracker `name` (imported only when asked for)."""
    if name == "mlflow":
        from core.trackers.mlflow_run import MlflowRun
        return MlflowRun
    if name == "wandb":
        from core.trackers.wandb_run import WandbRun
        return WandbRun
    from core.trackers.tensorboard_run import TensorboardRun
    return TensorboardRun


class Helper:
    def __init__(self, model_dir, names):
        self.dir, self.classes, self.runs, self.failures = model_dir, {}, {}, []
        for name in names:
            try:
                self.classes[name] = backend(name)
            except Exception as e:  # said once the run's log exists (open)
                self.failures.append((name, e))

    def failed(self, name, error):
        self.runs.pop(name, None)
        self.classes.pop(name, None)
        log.warning(f"warning: {name}: {one_line(error)[:300]}; training goes on without it (the folder has "
                    f"everything; a resume logs what it missed)")

    def each(self, action, *args):
        """action(name, *args) for each tracker still in the run; the first error of one drops it."""
        for name in list(self.classes):
            try:
                action(name, *args)
            except Exception as e:
                self.failed(name, e)

    def open(self, facts, up_to):
        set_logger(os.path.join(self.dir, LOG))
        for name, error in self.failures:
            self.failed(name, error)
        saved, parent = read_record(self.dir), parent_record(self.dir)
        self.each(self.open_one, facts, saved, parent)
        try:
            write_record(self.dir, {**read_record(self.dir), **{n: r.saved for n, r in self.runs.items()}})
        except OSError as e:
            log.warning(f"warning: {os.path.join(self.dir, 'trackers.json')}: {one_line(e)}")
        self.sync(up_to)

    def open_one(self, name, facts, saved, parent):
        self.runs[name] = self.classes[name](self.dir, facts, saved.get(name), parent.get(name), saved["run_key"])

    def sync(self, up_to=None):
        epochs, checks = load_history_and_checks(self.dir)
        if up_to is not None:  # rows beyond the checkpoint a resume continues are trained again: not the folder's
            epochs, checks = kept_rows(epochs, checks, *up_to)
        self.each(lambda name: self.runs[name].sync(epochs, checks))

    def end(self, status, reason, files):
        self.each(lambda name: self.runs[name].end(status, reason, files))


def serve(fd, write_end, model_dir, names):
    os.close(write_end)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2):  # the trainer handles these, then ends the runs
        signal.signal(sig, signal.SIG_IGN)
    die_with_parent()  # a trainer killed with SIGKILL takes its helper along (its runs stay RUNNING: a resume ends)
    os.nice(10)  # the trainer first: imports and store calls take the cycles training leaves (bench_trackers.py)
    import json

    helper, lines = Helper(model_dir, names), Lines(fd)
    while (message := lines.next(None)) is not Lines.CLOSED:
        message = json.loads(message)
        if "open" in message:
            helper.open(message["open"], message["up_to"])
        elif "sync" in message:
            helper.sync()
        elif "end" in message:
            helper.end(*message["end"])
        else:
            break
