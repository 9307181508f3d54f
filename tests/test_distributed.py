"""One run on two CPU processes (train.py --nproc 2: torchrun, gloo): the same training as one process on the same
global batch, rank 0 alone writing and validating, exact resume after a rank is SIGKILLed, bad input."""

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT, read, run_train
from utils import load_checkpoint

# GroupNorm (small_cnn_gn): with BatchNorm each rank would normalise its half batch (SyncBatchNorm: GPUs only).
# SGD: Adam divides by the gradients' size, which turns float rounding in near-zero gradients into whole steps
DDP_PARAMS = {"arch": "small_cnn_gn", "batch_size": 32, "bs_test": 128, "optimizer": "sgd", "learning_rate": 0.05,
              "num_epochs": 3,
              "train_subset": 256, "cache_images": 1, "ps": 0.0, "augmentation": "none"}


def folder(tmp_path, name, **overrides):
    path = tmp_path / name
    path.mkdir()
    (path / "params.json").write_text(json.dumps({**DDP_PARAMS, **overrides}))
    return str(path)


def two_processes(model_dir, data_dir, *extra, **popen):
    cmd = [sys.executable, "train.py", "--model_dir", model_dir, "--data_dir", data_dir, "--nproc", "2", *extra]
    if popen:
        return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **popen)
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)


def started_ranks(run, model_dir):
    """{rank: pid} of the two processes torchrun started under train.py, once the first checkpoint is written."""
    deadline = time.time() + 120
    while time.time() < deadline and not os.path.exists(os.path.join(model_dir, "last.pth.tar")):
        time.sleep(0.01)
    pids = {}
    for torchrun in subprocess.run(["pgrep", "-P", str(run.pid)], capture_output=True, text=True).stdout.split():
        for pid in subprocess.run(["pgrep", "-P", torchrun], capture_output=True, text=True).stdout.split():
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = dict(e.split(b"=", 1) for e in f.read().split(b"\0") if b"=" in e)
            pids[int(env[b"RANK"])] = int(pid)
    assert sorted(pids) == [0, 1], pids
    return pids


def training_again(run, model_dir):
    """{rank: pid} once a resumed run under train.py's launcher is training (its rank 0 wrote 'running')."""
    deadline = time.time() + 120
    while time.time() < deadline:
        status = read(os.path.join(model_dir, "status.json"))
        if status["status"] == "running" and status.get("launcher_pid") == run.pid:
            return started_ranks(run, model_dir)
        time.sleep(0.05)
    raise AssertionError("the resumed run never started training")


@pytest.mark.slow
def test_two_processes_train_as_one_on_the_same_global_batch_and_only_rank_0_writes(tmp_path, digits_dir):
    # the two processes also recompute their blocks and validate within epochs: neither changes what is learnt
    one, two = folder(tmp_path, "one"), folder(tmp_path, "two", grad_checkpointing=1, val_every_batches=3)
    assert run_train(one, digits_dir) == 0
    proc = two_processes(two, digits_dir)
    assert proc.returncode == 0, proc.stderr[-2000:]
    h1, h2 = (read(os.path.join(d, "history.json"))["epochs"] for d in (one, two))
    assert [c["batch"] for c in read(os.path.join(two, "history.json"))["checks"]] == [3, 6] * 3  # 8 a epoch
    assert [r["epoch"] for r in h2] == [1, 2, 3]
    for r1, r2 in zip(h1, h2):  # the loss curve of one process, within float noise
        assert abs(r1["train"]["loss"] - r2["train"]["loss"]) <= 1e-5, (r1["train"], r2["train"])
        assert abs(r1["val"]["loss"] - r2["val"]["loss"]) <= 1e-5, (r1["val"], r2["val"])
    assert h1[-1]["train"]["loss"] < h1[0]["train"]["loss"] - 0.05  # and it learns

    # rank 0 alone writes: the same files as one process, each epoch logged once
    assert sorted(os.listdir(two)) == sorted(os.listdir(one))
    log = open(os.path.join(two, "train.log")).read()
    assert [log.count(f"epoch {e}/3 ") for e in (1, 2, 3)] == [1, 1, 1] and "on 2 processes on cpu" in log
    ckpt = load_checkpoint(os.path.join(two, "last.pth.tar"))
    assert ckpt["world_size"] == 2 and len(ckpt["rng_ranks"]) == 2
    assert not any(k.startswith("module.") for k in ckpt["model"])  # a checkpoint one process can load

    # validation is exact: every validation image once (an odd count: no padding, no duplicate)
    import evaluate

    assert evaluate.main(["--model_dir", two, "--data_dir", digits_dir, "--split", "valid", "--restore_file",
                          "last"]) == 0
    again = read(os.path.join(two, "metrics_valid_last_weights.json"))
    assert again["epoch"] == 3
    assert {k: again[k] for k in h2[-1]["val"]} == h2[-1]["val"]


@pytest.mark.slow
def test_a_sigkilled_rank_0_or_process_group_then_a_resume_gives_the_weights_of_an_uninterrupted_run(tmp_path,
                                                                                                     digits_dir):
    """Dropout and augmentation on: each rank's random streams must come back as they were. A plan whose first stage
    freezes the body: DDP reduces the gradients of what trains, so it is built again when the stage changes. Killed
    twice: rank 0 alone (the launcher says the run failed), then the launcher's whole process group, as kill -9
    -PGID or a pool stopping a cell does (torchrun starts the ranks in sessions of their own: they must die too)."""
    extra = {"ps": 0.25, "augmentation": "light", "num_epochs": 6,
             "stages": [{"num_epochs": 2, "freeze": "body"}, {"num_epochs": 4}]}
    # the killed run also checkpoints within epochs (a key that changes nothing computed): it resumes from a batch
    whole, killed = folder(tmp_path, "whole", **extra), folder(tmp_path, "killed", **extra, checkpoint_every_batches=2)
    proc = two_processes(whole, digits_dir)
    assert proc.returncode == 0, proc.stderr[-2000:]

    run = two_processes(killed, digits_dir, start_new_session=True)
    pids = started_ranks(run, killed)
    time.sleep(random.uniform(0.0, 0.4))  # somewhere in epoch 2, or in its checkpoint
    os.kill(pids[0], signal.SIGKILL)  # the rank that writes: killed, it cannot say so
    run.wait(timeout=120)
    assert run.returncode != 0
    status = read(os.path.join(killed, "status.json"))  # the launcher says so for it
    assert status["status"] == "failed" and status["reason"].startswith("a process of the run died (torchrun exit")

    run = two_processes(killed, digits_dir, "--restore_file", "last", start_new_session=True)
    pids = training_again(run, killed)
    deadline = time.time() + 120
    while read(os.path.join(killed, "status.json")).get("batch") is None:  # a checkpoint within an epoch
        assert time.time() < deadline
        time.sleep(0.01)
    time.sleep(random.uniform(0.0, 0.4))
    os.killpg(run.pid, signal.SIGKILL)  # the launcher and torchrun; the ranks are in sessions of their own
    run.wait(timeout=30)
    deadline = time.time() + 2
    while time.time() < deadline and any(os.path.exists(f"/proc/{pid}") and alive(pid) for pid in pids.values()):
        time.sleep(0.05)
    assert not [pid for pid in pids.values() if alive(pid)], "a rank outlived its launcher"

    resumed = two_processes(killed, digits_dir, "--restore_file", "last")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert [r["epoch"] for r in read(os.path.join(killed, "history.json"))["epochs"]] == [1, 2, 3, 4, 5, 6]
    assert ", after batch " in open(os.path.join(killed, "train.log")).read()
    a, b = (load_checkpoint(os.path.join(d, "last.pth.tar")) for d in (whole, killed))
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    history = [read(os.path.join(d, "history.json"))["epochs"] for d in (whole, killed)]
    strip = lambda rows: [{k: r[k] for k in ("epoch", "lr", "train", "val", "grad_norm")} for r in rows]  # noqa: E731
    assert strip(history[0]) == strip(history[1])  # each rank's share of the resumed epoch's sums came back


def alive(pid):
    """A process that runs (a zombie waiting for its parent to read its end has stopped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.slow
def test_ctrl_c_or_scancel_of_two_processes_is_one_line_with_its_reason_in_the_log_and_both_pids(tmp_path, digits_dir):
    model_dir = folder(tmp_path, "stopped", num_epochs=20)
    # first only train.py gets SIGINT (kill -INT PID); then the terminal's Ctrl-C: the whole foreground process group
    def slurm_cancel(run, pids):  # scancel signals every process of the job: torchrun, and the ranks directly
        run.send_signal(signal.SIGTERM)
        time.sleep(0.4)  # the ranks are closing the run: the second signal must not cut it short
        for pid in pids.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    resume = ("--restore_file", "last")
    for restore, stop, reason in (((), lambda run, pids: run.send_signal(signal.SIGINT), "Ctrl-C"),
                                  (resume, lambda run, pids: os.killpg(run.pid, signal.SIGINT), "Ctrl-C"),
                                  (resume, slurm_cancel, "SIGTERM")):
        run = two_processes(model_dir, digits_dir, *restore, start_new_session=True)
        pids = training_again(run, model_dir) if restore else started_ranks(run, model_dir)
        time.sleep(0.3)
        stop(run, pids)
        assert run.wait(timeout=120) == 130
        assert run.stderr.read().strip().splitlines() == [f"interrupted ({reason})"]  # no traceback, said once
        status = read(os.path.join(model_dir, "status.json"))
        assert (status["status"], status["reason"]) == ("interrupted", reason)
        assert (status["pid"], status["launcher_pid"]) == (pids[0], run.pid)
        assert open(os.path.join(model_dir, "train.log")).read().rstrip().endswith(f"interrupted ({reason})")


@pytest.mark.slow
def test_bad_input_for_two_processes_is_one_line_before_anything_runs(tmp_path, digits_dir):
    odd = folder(tmp_path, "odd", batch_size=31)
    proc = two_processes(odd, digits_dir)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"error: {os.path.join(odd, 'params.json')}: key 'batch_size' is 31, which 2 processes cannot share evenly "
        f"(it is the global batch: give a multiple of 2)"]
    assert sorted(os.listdir(odd)) == ["params.json"]

    paused = folder(tmp_path, "paused")
    proc = two_processes(paused, digits_dir, "--stop_at_epoch", "1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    before = os.stat(os.path.join(paused, "last.pth.tar")).st_mtime_ns
    proc = subprocess.run([sys.executable, "train.py", "--model_dir", paused, "--data_dir", digits_dir,
                           "--restore_file", "last"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "error: --restore_file: this checkpoint was trained by 2 process(es), not 1; resume with 2 for the same run "
        "(each rank's data and random state is its own)"]
    assert os.stat(os.path.join(paused, "last.pth.tar")).st_mtime_ns == before

    bn = folder(tmp_path, "bn", arch="small_cnn", sync_bn=1)
    proc = two_processes(bn, digits_dir)
    assert proc.returncode == 2 and "key 'sync_bn' is 1, but torch runs SyncBatchNorm on GPUs only" in proc.stderr
    assert sorted(os.listdir(bn)) == ["params.json"]

    # what the ranks find is said once too (not once a rank, nor torchrun's report), with its exit code
    missing = str(tmp_path / "no_data")
    proc = two_processes(bn, missing, "arch=small_cnn_gn", "sync_bn=0")
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [f"error: data_dir {missing}: not found"]
    from core.rundir.folder import folder_lock

    with folder_lock(bn):  # another process trains it: a search reads 75 as "running elsewhere"
        proc = two_processes(bn, digits_dir, "arch=small_cnn_gn", "sync_bn=0")
    assert proc.returncode == 75 and proc.stderr.strip().splitlines() == [
        f"error: --model_dir {bn}: another process is training this folder"]
    assert sorted(os.listdir(bn)) == [".lock", "params.json"]


def test_each_rank_takes_an_equal_slice_of_every_batch_of_one_shared_order():
    from core.data.loaders import ShardBatchSampler
    from core.training.distributed import Ranks

    shares = [list(ShardBatchSampler(10, 4, Ranks(r, 2), torch.Generator().manual_seed(3), False)) for r in (0, 1)]
    order = torch.randperm(10, generator=torch.Generator().manual_seed(3)).tolist()
    assert [a + b for a, b in zip(*shares)][:2] == [order[0:4], order[4:8]]  # one process's batches, split
    assert shares[0][2] == order[8:9] and shares[1][2] == order[9:10]  # the last, short batch split evenly
    three = [list(ShardBatchSampler(10, 6, Ranks(r, 3), torch.Generator().manual_seed(3), False)) for r in range(3)]
    assert [len(s[-1]) for s in three] == [2, 2, 2]  # 4 left for 3 ranks: topped up from the order's start


@pytest.mark.slow
def test_a_search_trains_each_cell_on_two_processes_and_a_rerun_trains_nothing(tmp_path, digits_dir):
    parent = tmp_path / "search"
    parent.mkdir()
    (parent / "params.json").write_text(json.dumps({**DDP_PARAMS, "num_epochs": 2, "nproc": 2,
                                                    "hyper_search": {"learning_rate": [0.02, 0.05]}}))
    cmd = [sys.executable, "search_hyperparams.py", "--parent_dir", str(parent), "--data_dir", digits_dir]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    for cell in ("learning_rate_0.02", "learning_rate_0.05"):
        assert read(os.path.join(parent, cell, "status.json"))["status"] == "completed"
        assert load_checkpoint(os.path.join(parent, cell, "last.pth.tar"))["world_size"] == 2
        assert "on 2 processes on cpu" in open(os.path.join(parent, cell, "train.log")).read()
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert again.returncode == 0 and "0 of 2 cells to train" in again.stdout
