"""The figures of a run, drawn off the training process: training never waits for matplotlib.

A helper process forked at the start of the run receives small JSON messages on a pipe ("history.json changed",
"a new best epoch, with its gallery and confusion matrix"), keeps the latest of each in memory and redraws at most
every `plot_every_s` seconds, so a figure is never older than that. `Plotter.close` asks it to draw whatever is
still pending (one process per figure) and waits for that, so every figure exists when a run ends, however it ends.
A process rather than a thread: drawing holds the GIL for a second at a time, which a training loop would feel.
"""

import json
import os
import signal
import sys
import time
import traceback

from core.forked import Lines, fork
from core.rundir.folder import GALLERY
from utils import die_with_parent, link_into_place


class Plotter:
    """draw_best(best, model_dir): the task's drawings of a new best epoch (its best_figures' data), one function
    per figure."""

    def __init__(self, model_dir, every_s, draw_best):
        read_end, self.fd = os.pipe()
        self.pid = fork(serve, read_end, self.fd, model_dir, every_s, draw_best)
        os.close(read_end)

    def history_changed(self):
        self.send({"history": True})

    def new_best(self, best):
        self.send({"best": best})

    def send(self, message):
        if self.fd is None:
            return
        try:
            os.write(self.fd, (json.dumps(message) + "\n").encode())
        except BrokenPipeError:  # the helper died (its traceback is on stderr): training goes on without figures
            os.close(self.fd)
            self.fd = None
            print("warning: the figure helper stopped; the run's figures are no longer redrawn", file=sys.stderr)

    def close(self):
        """Draw whatever is pending, and wait until it is on disk."""
        if self.fd is None:
            return
        # a message, not just the end of the pipe: processes forked later (DataLoader workers) hold its write end too
        self.send({"close": True})
        os.close(self.fd)
        self.fd = None
        os.waitpid(self.pid, 0)


def serve(fd, write_end, model_dir, every_s, draw_best):
    os.close(write_end)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2):  # the trainer handles these, then closes us
        signal.signal(sig, signal.SIG_IGN)
    die_with_parent()  # a trainer killed with SIGKILL takes its helper along
    import core.rundir.plots  # noqa: F401  matplotlib: now, while the first epoch trains, not when the run ends

    pending, last_draw, lines = {}, time.monotonic(), Lines(fd)
    while True:
        wait = max(0.0, last_draw + every_s - time.monotonic()) if pending else None
        message = lines.next(wait)
        message = {"close": True} if message is Lines.CLOSED else json.loads(message or "{}")
        if message.pop("close", False):
            break
        pending.update(message)  # {"history": ...} or {"best": ...}: a newer one replaces one not yet drawn
        if pending and time.monotonic() - last_draw >= every_s:
            draw(pending, model_dir, draw_best)
            pending, last_draw = {}, time.monotonic()
    draw_in_parallel(pending, model_dir, draw_best)


def drawings(pending, model_dir, draw_best):
    """One function per figure to redraw."""
    from core.rundir import plots
    from core.rundir.folder import load_history_and_checks

    out = []
    rows, checks = load_history_and_checks(model_dir) if "history" in pending else ([], [])
    if rows or checks:
        out.append(lambda: plots.plot_history(rows, os.path.join(model_dir, "train_history.png"), title=model_dir,
                                              checks=checks))
    if rows and rows[-1].get("grad_norm"):
        out.append(lambda: plots.plot_gradients(rows, os.path.join(model_dir, "gradients.png")))
    if pending.get("best"):
        out += [kept(d, model_dir, pending["best"]["epoch"]) for d in draw_best(pending["best"], model_dir)]
    return out


def kept(drawing, model_dir, epoch):
    """A best-epoch drawing that, where it (re)writes predictions.png, keeps that picture as
    gallery/epoch_NNN.png: predictions.png is redrawn in place, the gallery folder shows the progression. A hard
    link (each redraw writes a new file and renames it into place), a copy where links are not supported."""
    def run():
        path = os.path.join(model_dir, "predictions.png")
        before = stamp(path)
        drawing()
        if stamp(path) in (before, None):
            return
        dst = os.path.join(model_dir, GALLERY, f"epoch_{epoch:03d}.png")
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        link_into_place(path, dst)

    return run


def stamp(path):
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


def draw(pending, model_dir, draw_best):
    for drawing in drawings(pending, model_dir, draw_best):
        reported(drawing)


def reported(drawing):
    """Draw; a figure that cannot be drawn (a bug in a task's drawing, a full disk) is reported on stderr, and the
    other figures and the next redraws go on."""
    try:
        drawing()
    except Exception:
        traceback.print_exc()


def draw_in_parallel(pending, model_dir, draw_best):
    """At the end of a run the trainer waits and its cores are free: one forked process per figure."""
    first, *rest = drawings(pending, model_dir, draw_best) or [lambda: None]
    children = [fork(drawing) for drawing in rest]
    reported(first)
    for pid in children:
        os.waitpid(pid, 0)
