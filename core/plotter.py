"""The figures of a run, drawn off the training process: training never waits for matplotlib.

A helper process forked at the start of the run receives small JSON messages on a pipe ("history.json changed",
"a new best epoch, with its gallery and confusion matrix"), keeps the latest of each in memory and redraws at most
every `plot_every_s` seconds, so a figure is never older than that. Closing the pipe asks it to draw whatever is
still pending and exit; `Plotter.close` waits for that, so every figure exists when a run ends, however it ends.
A process rather than a thread: drawing holds the GIL for a second at a time, which a training loop would feel.
"""

import json
import os
import select
import signal
import sys
import time
import traceback

from utils import die_with_parent


class Plotter:
    def __init__(self, model_dir, every_s):
        read_end, self.fd = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # the helper: never returns into the training code
            os.close(self.fd)
            code = 0
            try:
                serve(read_end, model_dir, every_s)
            except BaseException:
                traceback.print_exc()  # a figure that cannot be drawn must not go unnoticed, nor stop training
                code = 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        os.close(read_end)

    def history_changed(self):
        self.send({"history": True})

    def new_best(self, epoch, gallery, slots, confusion, classes):
        self.send({"best": {"epoch": epoch, "gallery": gallery, "slots": slots, "confusion": confusion,
                            "classes": classes}})

    def send(self, message):
        if self.fd is not None:
            os.write(self.fd, (json.dumps(message) + "\n").encode())

    def close(self):
        """Draw whatever is pending, and wait until it is on disk."""
        if self.fd is None:
            return
        os.close(self.fd)
        self.fd = None
        os.waitpid(self.pid, 0)


def serve(fd, model_dir, every_s):
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2):  # the trainer handles these, then closes the pipe
        signal.signal(sig, signal.SIG_IGN)
    die_with_parent()  # a trainer killed with SIGKILL takes its helper along
    pending, last_draw, lines = {}, time.monotonic(), Lines(fd)
    while True:
        wait = max(0.0, last_draw + every_s - time.monotonic()) if pending else None
        message = lines.next(wait)
        if message is Lines.CLOSED:
            break
        if message is not None:  # {"history": ...} or {"best": ...}: a newer one replaces one not yet drawn
            pending.update(json.loads(message))
        if pending and time.monotonic() - last_draw >= every_s:
            draw(pending, model_dir)
            pending, last_draw = {}, time.monotonic()
    draw(pending, model_dir)


class Lines:
    """Newline-separated messages from a pipe, with a timeout."""

    CLOSED = object()

    def __init__(self, fd):
        self.fd, self.buffer, self.ready = fd, b"", []

    def next(self, timeout):
        """The next message; None when `timeout` seconds pass first; CLOSED at the end of the pipe."""
        while not self.ready:
            if not select.select([self.fd], [], [], timeout)[0]:
                return None
            chunk = os.read(self.fd, 1 << 16)
            if not chunk:
                return Lines.CLOSED
            *done, self.buffer = (self.buffer + chunk).split(b"\n")
            self.ready += done
        return self.ready.pop(0)


def draw(pending, model_dir):
    import numpy as np

    from core import plots
    from core.results import load_history

    if "history" in pending:
        rows = load_history(model_dir)
        if rows:
            plots.plot_history(rows, os.path.join(model_dir, "train_history.png"), title=model_dir)
        if rows and rows[-1].get("grad_norm"):
            plots.plot_gradients(rows, os.path.join(model_dir, "gradients.png"))
    best = pending.get("best")
    if best:
        plots.plot_gallery([tuple(item) for item in best["gallery"]], best["slots"],
                           os.path.join(model_dir, "predictions.png"),
                           title=f"{model_dir}: valid predictions (fixed, then most confidently wrong), "
                                 f"epoch {best['epoch']}")
        plots.plot_confusion(np.array(best["confusion"]), best["classes"], os.path.join(model_dir, "confusion_valid_best.png"),
                             title=f"valid, best epoch {best['epoch']}")
