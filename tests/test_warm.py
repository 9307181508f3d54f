"""Warm search cells (core/search/forkserver.py): forked from a preloaded server, yet recorded exactly as cold ones."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import FAST_PARAMS, ROOT, mlflow_runs, read
from core.rundir.folder import read_status
from core.search.forkserver import ForkServer
from core.search.pool import Cell, Launcher, cell_env, collect

TINY = {**FAST_PARAMS, "train_subset": 200, "valid_subset": 100, "num_epochs": 2}
# passes preflight (the one image it augments is not cropped) and fails a few images into training: a traceback
CRASH = {"__class_fullname__": "RandomCrop", "p": 0.05, "height": 100, "width": 100}
OUTCOMES = [
    {"learning_rate": [0.005]},  # completes
    {"augmentation": [CRASH]},  # crashes mid-training
    {"optimizer": ["sgd"], "learning_rate": [1e12], "scheduler": ["none"], "momentum": [0.0]},  # diverges
    {"arch": ["resnet_nope"]},  # bad input: exit 2
]
ON_LINUX = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the warm launcher is Linux-only")
pytestmark = [ON_LINUX, pytest.mark.slow]  # real searches of real cells


def make_parent(path, hyper_search, **extra):
    path.mkdir()
    (path / "params.json").write_text(json.dumps({**TINY, **extra, "hyper_search": hyper_search}))
    return str(path)


def search_cmd(parent, digits_dir, *flags):
    return [sys.executable, "search_hyperparams.py", "--parent_dir", parent, "--data_dir", digits_dir, *flags]


def search(parent, digits_dir, *flags):
    return subprocess.run(search_cmd(parent, digits_dir, *flags), cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def cells(parent):
    return sorted(d for d in os.listdir(parent) if os.path.isdir(os.path.join(parent, d)))


def outcome(folder, parent=None):
    """What status.json says of how a cell ended; the parent folder in a message named PARENT (to compare two)."""
    status = read(os.path.join(folder, "status.json"))
    found = {k: status.get(k) for k in ("status", "exit_code", "reason")}
    if parent and found["reason"]:
        found["reason"] = found["reason"].replace(parent, "PARENT")
    return found


def wait_for(condition, timeout=120):
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def proc_stat(pid):
    """(state, ppid) of a live or zombie process, None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state, ppid = f.read().rsplit(")", 1)[1].split()[:2]
    except (FileNotFoundError, ProcessLookupError):
        return None
    return state, int(ppid)


def descendants(pid):
    children = {}
    for p in filter(str.isdigit, os.listdir("/proc")):
        stat = proc_stat(p)
        if stat:
            children.setdefault(stat[1], []).append(int(p))
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def running(pid):
    stat = proc_stat(pid)
    return stat is not None and stat[0] != "Z"


def tracked(folder):
    from core.trackers import read_record

    return read_record(folder)


def started(folder, epochs=0):
    """The cell trains (its imports and data loading are done) and has finished `epochs` epochs."""
    status = read_status(folder)
    return status.get("status") == "running" and status.get("epoch", 0) >= epochs


# ------------------------------------------------------------------ real train.py cells, warm against cold


def test_every_outcome_is_recorded_as_a_cold_cell_records_it(tmp_path, digits_dir):
    warm, cold = (make_parent(tmp_path / name, OUTCOMES, num_epochs=1) for name in ("warm", "cold"))
    assert search(cold, digits_dir, "--workers", "2", "--cold").returncode == 1
    proc = search(warm, digits_dir, "--workers", "2")
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "cells start cold" not in proc.stderr  # the server really served them
    assert cells(warm) == cells(cold) and len(cells(warm)) == 4
    for name in cells(warm):
        assert outcome(os.path.join(warm, name), warm) == outcome(os.path.join(cold, name), cold), name
    by_arg = {key: outcome(os.path.join(warm, next(n for n in cells(warm) if part in n)))
              for key, part in (("learning", "learning_rate_0.005"), ("augmentation", "augmentation_"),
                                ("optimizer", "optimizer_sgd"), ("arch", "arch_"))}
    assert by_arg["learning"]["status"] == "completed"
    assert by_arg["augmentation"]["status"] == "failed" and by_arg["augmentation"]["exit_code"] == 1
    assert "CropSizeError" in by_arg["augmentation"]["reason"]
    assert by_arg["optimizer"]["status"] == "diverged" and "non-finite loss" in by_arg["optimizer"]["reason"]
    assert by_arg["arch"]["status"] == "failed" and by_arg["arch"]["exit_code"] == 2
    crashed = [n for n in cells(warm) if n.startswith("augmentation")][0]
    assert "Traceback (most recent call last)" in open(os.path.join(warm, crashed, "train.log")).read()
    done = "learning_rate_0.005"
    w, c = (torch.load(os.path.join(p, done, "last.pth.tar"), weights_only=True)["model"] for p in (warm, cold))
    assert w.keys() == c.keys() and all(torch.equal(w[k], c[k]) for k in w)


@pytest.mark.parametrize("mode", ["warm", "cold"])
def test_a_cell_killed_mid_run_is_recorded_as_failed_with_its_signal(tmp_path, digits_dir, mode):
    # epochs enough for the trackers' helper (niced) to make the run on 2 busy cores before the kill
    parent = make_parent(tmp_path / mode, {"learning_rate": [0.005]}, num_epochs=30, loggers=["mlflow"])
    folder = os.path.join(parent, "learning_rate_0.005")
    proc = subprocess.Popen(search_cmd(parent, digits_dir, *(["--cold"] if mode == "cold" else [])), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: started(folder) and "mlflow" in tracked(folder))  # its MLflow run was made
    cell_pid = read_status(folder)["pid"]
    assert cell_pid in descendants(proc.pid) and cell_pid != proc.pid
    os.kill(cell_pid, signal.SIGKILL)
    assert proc.wait(timeout=120) == 1  # the search goes on to its summary
    recorded = outcome(folder)
    assert recorded["status"] == "failed" and recorded["exit_code"] == -signal.SIGKILL
    assert recorded["reason"].startswith("killed (SIGKILL, exit code -9)")  # its log ends mid-run: says why
    tail = read(os.path.join(folder, "status.json"))["log_tail"]
    assert tail and tail[-1] in open(os.path.join(folder, "train.log")).read()  # the last thing it logged
    run, _ = mlflow_runs(str(tmp_path / "mlflow"))["learning_rate_0.005"]
    assert run.info.status == "FAILED"  # left RUNNING by the SIGKILL: the search that gave the cell up ends it


def test_ctrl_c_leaves_cells_interrupted_then_a_rerun_resumes_them(tmp_path, digits_dir):
    parent = make_parent(tmp_path / "search", {"learning_rate": [0.002, 0.005]}, num_epochs=3)
    folders = [os.path.join(parent, f"learning_rate_{lr}") for lr in (0.002, 0.005)]
    proc = subprocess.Popen(search_cmd(parent, digits_dir, "--workers", "2"), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    wait_for(lambda: all(started(f, epochs=1) for f in folders))
    proc.send_signal(signal.SIGINT)  # to the search only, as `kill -INT`: it passes the Ctrl-C on to its cells
    assert proc.wait(timeout=120) == 130
    assert all(read_status(f)["status"] == "interrupted" for f in folders)

    rerun = search(parent, digits_dir, "--workers", "2")
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    for f in folders:
        assert "resuming at epoch" in open(os.path.join(f, "train.log")).read()
        assert [r["epoch"] for r in read(os.path.join(f, "history.json"))["epochs"]] == [1, 2, 3]


def test_sigkill_of_the_search_leaves_no_server_and_no_cell(tmp_path, digits_dir):
    parent = make_parent(tmp_path / "search", {"learning_rate": [0.002, 0.005]}, num_epochs=6)
    folders = [os.path.join(parent, f"learning_rate_{lr}") for lr in (0.002, 0.005)]
    proc = subprocess.Popen(search_cmd(parent, digits_dir, "--workers", "2"), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    wait_for(lambda: all(started(f) for f in folders))
    tree = descendants(proc.pid)
    assert {read_status(f)["pid"] for f in folders} <= set(tree) and len(tree) >= 3  # server, two cells (+ helpers)
    proc.kill()
    proc.wait()
    wait_for(lambda: not any(map(running, tree)), timeout=10)


def test_when_the_server_dies_its_cells_are_interrupted_saying_so_and_the_rest_start_cold(tmp_path, digits_dir):
    parent = make_parent(tmp_path / "search", {"learning_rate": [0.002, 0.005]}, num_epochs=3)
    first, second = (os.path.join(parent, f"learning_rate_{lr}") for lr in (0.002, 0.005))
    proc = subprocess.Popen(search_cmd(parent, digits_dir), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    wait_for(lambda: started(first))
    server = [p for p in descendants(proc.pid) if proc_stat(p)[1] == proc.pid]  # the search's only child
    assert len(server) == 1 and b"forkserver" in open(f"/proc/{server[0]}/cmdline", "rb").read()
    os.kill(server[0], signal.SIGKILL)
    assert proc.wait(timeout=120) == 1
    assert "warm-start server exited" in proc.stderr.read() and outcome(first)["exit_code"] == -signal.SIGKILL
    # not the cell's doing (no "out of memory" guess): resumable, and a rerun resumes it without --retry_failed
    assert outcome(first)["status"] == "interrupted" and "warm-cell server died" in outcome(first)["reason"]
    assert outcome(second)["status"] == "completed"
    assert subprocess.run(search_cmd(parent, digits_dir), cwd=ROOT, capture_output=True).returncode == 0
    assert outcome(first)["status"] == "completed"  # from its checkpoint if it had one, else from the start


# ------------------------------------------------------------------ the server itself, through a probe script

PROBE = '''
import atexit, json, os, signal, sys, weakref
mode, out = sys.argv[1], sys.argv[2]
class Held: pass
held = Held()  # a finalizer of the cell's own runs at exit (the server skips only its preloaded libraries');
weakref.finalize(held, print, "finalizer ran", file=sys.stderr)  # first, as train.py's imports make theirs
atexit.register(lambda: print("atexit ran", file=sys.stderr))
print("to stdout")
print("to stderr", file=sys.stderr)
report = {
    "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES", "PROBE")},
    "cwd": os.getcwd(), "argv": sys.argv, "stdout": os.readlink("/proc/self/fd/1"),
    "stderr": os.readlink("/proc/self/fd/2"), "fds": len(os.listdir("/proc/self/fd")),
    "sigint": signal.getsignal(signal.SIGINT) is signal.default_int_handler,
    "sigterm": signal.getsignal(signal.SIGTERM) == signal.SIG_DFL,
    "project_modules": [m for m in ("train", "utils", "core.rundir.folder") if m in sys.modules],
}
if mode == "threads":  # only here: a cold probe pays seconds to import torch
    import torch
    report.update(threads=torch.get_num_threads(), interop_threads=torch.get_num_interop_threads(),
                  cuda_initialized=torch.cuda.is_initialized())
json.dump(report, open(out, "w"))
if mode == "exit3":
    sys.exit(3)
if mode == "raise":
    raise ValueError("boom")
if mode == "ctrl_c":  # a real SIGINT, caught as train.py catches it
    import time
    sys.path.insert(0, os.getcwd())
    from utils import run_cli
    run_cli(lambda: os.kill(os.getpid(), signal.SIGINT) or time.sleep(30))
if mode == "sigkill":
    os.kill(os.getpid(), signal.SIGKILL)
'''


def run_probe(server, script, mode, env, tmp_path):
    """The probe run warm (forked by `server`) and cold (a fresh interpreter, as the cold launcher starts one):
    [(returncode, report, log)] for each."""
    results = []
    for how in ("warm", "cold"):
        out, log = (str(tmp_path / f"{mode}-{env['OMP_NUM_THREADS']}-{how}.{ext}") for ext in ("json", "log"))
        argv = [script, mode, out]
        if how == "warm":
            code = server.spawn(argv, env, log).wait()
        else:
            with open(log, "a") as err:
                code = subprocess.run([sys.executable, *argv], env=env, cwd=ROOT, stdin=subprocess.DEVNULL,
                                      stdout=subprocess.DEVNULL, stderr=err).returncode
        report = read(out)
        report["stderr"] = report["stderr"].replace(f"-{how}.log", "-X.log")
        report["argv"] = [a.replace(f"-{how}.json", "-X.json") for a in report["argv"]]
        results.append((code, report, open(log).read()))
    return results


def test_env_threads_files_signals_and_exit_codes_reach_a_warm_child_as_a_cold_one(tmp_path):
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    server = ForkServer(cell_env(threads=1))  # as the pool starts it for two workers on two cores
    try:
        assert len(os.listdir(f"/proc/{server.wait_ready()}/task")) == 1  # no thread: forking it is safe
        for mode, threads, expected in [("threads", 1, 0), ("threads", 2, 0), ("exit3", 1, 3), ("raise", 1, 1),
                                        ("ctrl_c", 1, 130), ("sigkill", 1, -signal.SIGKILL)]:
            env = {**cell_env(gpus=[7], threads=threads), "PROBE": "yes"}
            (warm_code, warm, warm_log), (cold_code, cold, cold_log) = run_probe(server, str(script), mode, env,
                                                                                tmp_path)
            assert (warm_code, warm) == (cold_code, cold), mode
            assert warm_code == expected and warm.get("threads", threads) == threads
            assert warm["env"] == {"OMP_NUM_THREADS": str(threads), "CUDA_VISIBLE_DEVICES": "7", "PROBE": "yes"}
            assert warm["project_modules"] == [] and not warm.get("cuda_initialized")
            assert warm["stdout"] == os.devnull and warm["sigint"] and warm["sigterm"]
            assert warm_log.splitlines()[-1] == cold_log.splitlines()[-1], mode  # e.g. ValueError: boom
            for line in ("atexit ran", "finalizer ran"):
                assert (line in warm_log) == (line in cold_log) == (mode != "sigkill"), (mode, line)
        assert server.proc.poll() is None  # a child's death is never the server's
    finally:
        server.close()
    assert server.proc.returncode == 0


def test_a_server_that_cannot_start_leaves_cells_cold_with_a_note(tmp_path, capfd, digits_dir):
    (tmp_path / "torch.py").write_text("raise ImportError('no torch in this environment')\n")
    env = {**cell_env(threads=1), "PYTHONPATH": str(tmp_path)}
    launcher = Launcher(True, env)  # returns at once: the search goes on while the server imports
    cell = Cell("c", str(tmp_path / "c"), TINY)
    proc = launcher.start(cell, digits_dir, env)  # the server's failure shows here, and this cell starts cold
    assert isinstance(proc, subprocess.Popen) and launcher.server is None
    assert proc.wait() == 1  # the fake torch fails the cold cell too
    assert collect(cell, proc.returncode) == "failed"
    err = capfd.readouterr().err
    assert "no torch in this environment" in err and "cells start cold" in err
