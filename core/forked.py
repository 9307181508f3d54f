"""Helper processes forked from a run (the figure drawer, the trackers' logger): how they start, and the messages
they read. A process rather than a thread where the work holds the GIL (drawing, importing MLflow), which a
training loop would feel.
"""

import gc
import os
import select
import sys
import traceback


def fork(fn, *args):
    """fn(*args) in a forked child, which exits when it returns (never back into the caller's code); its pid."""
    pid = os.fork()
    if pid == 0:
        # what the parent left for the cycle collector is not the child's to free: freeing it here runs destructors
        # of objects whose threads did not survive the fork (an onnxruntime session deadlocked a drawing child of
        # a process that had exported a model); the child's own garbage is still collected
        gc.freeze()
        code = 0
        try:
            fn(*args)
        except BaseException:
            traceback.print_exc()  # a figure that cannot be drawn must not go unnoticed, nor stop training
            code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    return pid


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
