"""Warm search cells: one server process imports torch & co. once, then forks a fresh process per cell.

A cell started with `python train.py` spends seconds importing torch and albumentations (more for torchvision archs
and for matplotlib in the figures' helper) before it trains. The search starts this server once (`python
core/search/forkserver.py`); for each cell it forks a child that already has those modules in memory, and the child runs
train.py as `__main__`, as `python train.py ...` would: same argv, environment, working directory, stdout
(/dev/null), stderr (appended to the cell's train.log), signal handling and exit code. Each cell is still a process
of its own, so the search's contract (one process per cell, its exit code, its status.json) does not change.

What still differs from a cold cell: stdin is /dev/null; `ps` shows `python core/search/forkserver.py`
(status.json has the cell's pid); the hash seed and the preloaded libraries are the server's, while this
repository's own modules are imported afresh in each child; and torchvision (with torch._dynamo) is always
loaded, which makes an uncaught KeyboardInterrupt exit 1 instead of by SIGINT (train.py never lets one escape:
run_cli exits 130).

Protocol, one JSON object per line:
    search -> server (stdin):  {"argv": [script, arg...], "env": {...}, "cwd": dir, "log": path}
    server -> search (stdout): {"ready": server_pid} once, then {"started": pid} in answer to each request,
                               and {"exited": pid, "returncode": rc} when a child ends (rc as Popen.returncode).

The server must stay fork-safe: it runs no tensor op, makes no CUDA call (CUDA initializes in each child, after
the cell's CUDA_VISIBLE_DEVICES is in place) and starts no thread. Linux only (prctl).
"""

import atexit
import contextlib
import gc
import importlib
import json
import os
import runpy
import select
import signal
import subprocess
import sys
import threading
import weakref

if __name__ == "__main__":  # run as `python core/search/forkserver.py`: cells see the sys.path `python train.py` has
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from core.paths import ROOT  # noqa: E402
from utils import die_with_parent  # noqa: E402


def send(fd, **message):
    os.write(fd, (json.dumps(message) + "\n").encode())  # one short write: a pipe keeps it whole


# ---------------------------------------------------------------- the server


# train first: its modules set the libraries up (e.g. no albumentations update check) before they load.
# core.rundir.plots brings matplotlib with the Agg backend, for the figures' helper process.
PRELOAD = ("train", "torch", "albumentations", "core.rundir.plots", "torch._dynamo")
# torch.optim imports torch._dynamo (and sympy) the first time an optimizer is built: ~2-3 s every cell would pay
TORCHVISION = "torchvision.models"  # ~1 s more: only for searches with torchvision archs


def preload(modules):
    """Import what cells import. Importing does not initialize CUDA; nothing here may touch a tensor."""
    for name in modules:
        importlib.import_module(name)


def serve(requests, reports):
    """Fork a child per request line; report its pid, later its exit. Returns the request in a forked child,
    None in the server once the search closes the pipe (it is done, or dead)."""
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    os.set_blocking(wake_r, False)
    signal.set_wakeup_fd(wake_w)  # SIGCHLD writes a byte here, so select() wakes when a child ends
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    unread = b""
    while True:
        ready, _, _ = select.select([requests, wake_r], [], [])
        if wake_r in ready:
            os.read(wake_r, 4096)
            reap(reports)
        if requests in ready:
            data = os.read(requests, 65536)
            if not data:
                return None
            unread += data
            while b"\n" in unread:
                line, unread = unread.split(b"\n", 1)
                request = json.loads(line)
                pid = os.fork()
                if pid == 0:
                    signal.set_wakeup_fd(-1)
                    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                    for fd in (wake_r, wake_w, reports):  # the cell's stdin is replaced later, by redirect()
                        os.close(fd)
                    return request
                send(reports, started=pid)  # before any report of its exit: the reaping waits for the next loop


def reap(reports):
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        send(reports, exited=pid, returncode=os.waitstatus_to_exitcode(status))


def become_cell(request, server_pid):
    """In the forked child: take on the cell's environment, files and signals, as a fresh `python` would have them."""
    die_with_parent()  # the flag is cleared by fork; the server got it for the search, the cell gets it for the server
    if os.getppid() != server_pid:  # the server died before the line above: nobody would kill this orphan
        os._exit(1)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # the server ignores Ctrl-C; the cell must not
    for sig in (signal.SIGTERM, signal.SIGUSR2):
        signal.signal(sig, signal.SIG_DFL)
    env = request["env"]
    os.environ.clear()
    os.environ.update(env)
    if env.get("OMP_NUM_THREADS"):  # OpenMP read it once, when the server imported torch
        import torch

        torch.set_num_threads(int(env["OMP_NUM_THREADS"]))
    redirect(request["log"])
    os.chdir(request["cwd"])
    forget_project_modules()
    sys.argv = list(request["argv"])


def redirect(log):
    """stdout to /dev/null and stderr appended to the cell's log, as the cold launcher's Popen sets them; stdin from
    /dev/null, so no child holds the server's request pipe."""
    null = os.open(os.devnull, os.O_RDWR)
    err = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    for fd, target in ((0, null), (1, null), (2, err)):
        os.dup2(target, fd)
    os.close(null)
    os.close(err)


def forget_project_modules():
    """Drop this repository's own modules (not the libraries): the cell imports them again from disk (~30 ms), so it
    runs the code as it is now, like a fresh interpreter, and record.json's snapshot of model/ is what ran."""
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None) or ""
        ours = path.startswith(ROOT + os.sep) and not path.startswith(sys.prefix + os.sep)
        if ours and "site-packages" not in path and name != "__main__":
            del sys.modules[name]


def main():
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is for the search and its cells
    reports = os.dup(1)
    os.dup2(2, 1)  # a library that prints while importing must not garble the reports
    preload(PRELOAD + ((TORCHVISION,) if "--torchvision" in sys.argv[1:] else ()))
    if threading.active_count() > 1:
        sys.exit("forkserver: a preloaded module started a thread; forking would copy it half-way")
    for finalizer in weakref.finalize._registry:  # noqa: SLF001  torch.library's, which deregister 187 operator
        finalizer.atexit = False  # libraries at exit: 25 ms of every cell's exit that nothing can observe
    gc.freeze()  # the preloaded objects stay shared with the children instead of being copied by their collector
    server_pid = os.getpid()
    send(reports, ready=server_pid)
    request = serve(0, reports)
    if request is None:
        os._exit(0)  # no cell is left, nothing is buffered: tearing torch & co. down would keep the search 0.2 s
    become_cell(request, server_pid)
    try:
        runpy.run_path(sys.argv[0], run_name="__main__")
    except SystemExit as e:
        exit_like_python(e.code)
    exit_like_python(0)
    # an uncaught exception (traceback to stderr, exit 1) leaves through the interpreter's top level, as in
    # `python train.py`; never back into serve()


def exit_like_python(code):
    """What the interpreter does at exit that a cell can observe (join threads, atexit handlers, flush, the exit
    code), without tearing down every module of torch & co. one by one: in a forked child that only costs time."""
    if code is not None and not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    threading._shutdown()  # noqa: SLF001  joins non-daemon threads, as interpreter shutdown does
    atexit._run_exitfuncs()  # noqa: SLF001
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code or 0)


# ---------------------------------------------------------------- the search's side


class ServerGone(RuntimeError):
    pass


@contextlib.contextmanager
def sigint_deferred():
    """A Ctrl-C in here takes effect when the block ends: it must not drop a report read off the pipe but not yet
    stored, nor leave a forked cell the search has no handle for. (A handler, not a signal mask: Python runs handlers
    in the main thread, whichever thread the signal reaches, e.g. tqdm's monitor.)"""
    caught = []
    old = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
        if caught and callable(old):
            old(signal.SIGINT, None)  # Python's default handler: raises KeyboardInterrupt


class ForkServer:
    """The search's end of the server: start it, have it fork cells, hear when they end."""

    def __init__(self, env, torchvision=True):
        flags = ["--torchvision"] if torchvision else []
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), *flags], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=env, cwd=ROOT, preexec_fn=die_with_parent)
        self.unread, self.replies, self.exits, self.gone = b"", [], {}, False
        self.ready_pid = None  # the server imports for 2 s: the search goes on meanwhile, until its first spawn

    def wait_ready(self):
        """Wait until the server has imported everything and can fork; return its pid."""
        if self.ready_pid is None:
            self.ready_pid = self.next_reply("ready")  # comes before any "started"
        return self.ready_pid

    def spawn(self, argv, env, log, cwd=ROOT):
        """Fork a child running `python argv...` with `env`; return its Popen-like handle."""
        self.wait_ready()
        request = json.dumps({"argv": argv, "env": env, "cwd": cwd, "log": log}).encode() + b"\n"
        with sigint_deferred():
            try:
                self.proc.stdin.write(request)
                self.proc.stdin.flush()
            except BrokenPipeError:
                self.lost()
            return WarmProcess(self, self.next_reply("started"))

    def next_reply(self, kind):
        while not self.replies:
            if self.gone:
                raise ServerGone(f"the warm-start server exited (code {self.proc.wait()})")
            self.pump(None)
        reply = self.replies.pop(0)
        return reply[kind]

    def pump(self, timeout):
        """Take in what the server reported, waiting up to `timeout` seconds (None: until something comes)."""
        if self.gone:
            return
        fd = self.proc.stdout.fileno()
        if not select.select([fd], [], [], timeout)[0]:
            return
        with sigint_deferred():
            data = os.read(fd, 65536)
            if not data:
                self.lost()
            self.unread += data
            *lines, self.unread = self.unread.split(b"\n")
            for message in map(json.loads, lines):
                if "exited" in message:
                    self.exits[message["exited"]] = message["returncode"]
                else:
                    self.replies.append(message)

    def lost(self):
        self.gone = True  # its children got SIGKILL from the kernel (die_with_parent) as it died

    def death(self):
        """Why a cell that was running died with the server: what its status says instead of a guess at the kill."""
        return f"the warm-cell server died (exit code {self.proc.poll()}) and its running cells with it"

    def close(self):
        """Close the request pipe: the server exits, and with it any child still running."""
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        self.proc.wait()
        self.proc.stdout.close()


class WarmProcess:
    """A forked cell as the search sees it: pid, poll(), wait(), send_signal() and returncode, like a Popen."""

    def __init__(self, server, pid):
        self.server, self.pid, self.returncode = server, pid, None
        self.lost = None  # why it ended, when the server died and took it along (no exit of its own was heard)

    def poll(self):
        if self.returncode is None:
            self.server.pump(0)
            if self.pid in self.server.exits:
                self.returncode = self.server.exits.pop(self.pid)
            elif self.server.gone:
                self.returncode, self.lost = -signal.SIGKILL, self.server.death()
        return self.returncode

    def wait(self):
        while self.poll() is None:
            self.server.pump(None)
        return self.returncode

    def send_signal(self, sig):
        if self.poll() is None:  # as Popen: never signal a pid already reaped (the system may reuse it)
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)


if __name__ == "__main__":
    main()
