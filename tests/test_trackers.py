"""Experiment trackers (params key loggers, core/trackers/) with the real packages: MLflow's sqlite store, W&B
offline (read back from its own files), TensorBoard's event files. Each shows a run exactly as its folder does:
one run across kills and resumes, ranks and searches, each epoch once, equal to history.json."""

import glob
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from conftest import (
    FAST_PARAMS,
    ROOT,
    assert_children_of_one_parent,
    assert_one_line_error,
    mlflow_runs,
    read,
    run_train,
    train_cmd,
)

pytest.importorskip("mlflow")
pytest.importorskip("wandb")


def epochs_and_checks(folder):
    history = read(os.path.join(folder, "history.json"))
    return history["epochs"], history.get("checks", [])


def wandb_history(folder):
    """Every history row of the folder's offline W&B sessions, read from W&B's own files."""
    from core.trackers.wandb_run import offline_history

    return offline_history(folder)


def tensorboard_scalars(folder, tag, run=""):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(os.path.join(folder, "tensorboard", run))
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


def epoch_done(folder):
    path = os.path.join(folder, "status.json")
    return read(path).get("epoch", 0) if os.path.exists(path) else 0


def sessions(folder):
    path = os.path.join(folder, "record.json")
    return len(read(path)["sessions"]) if os.path.exists(path) else 0


def test_killed_three_times_and_resumed_each_tracker_holds_one_run_with_each_epoch_once(tmp_path, digits_dir):
    """(a) MLflow, (b) W&B offline, (c) TensorBoard: the process group SIGKILLed at 3 random moments, each time
    resumed; then each tracker has one run, FINISHED, and each epoch's and each check's metrics exactly once, equal
    to history.json's."""
    folder = tmp_path / "exp"
    folder.mkdir()
    (folder / "params.json").write_text(json.dumps({**FAST_PARAMS, "num_epochs": 6, "val_every_batches": 5,
                                                    "loggers": ["mlflow", "wandb", "tensorboard"]}))
    exp, last, rng = str(folder), str(folder / "last.pth.tar"), random.Random(37)
    resume = lambda: ["--restore_file", "last"] if os.path.exists(last) else []  # noqa: E731
    for kill in range(3):
        proc = subprocess.Popen(train_cmd(exp, digits_dir, *resume()), cwd=ROOT, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        # this session has trained an epoch of its own (kill k after epoch k + 1): then a random moment
        while sessions(exp) <= kill or epoch_done(exp) < kill + 1:
            assert time.time() < deadline and proc.poll() is None
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 1.0))
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    done = subprocess.run(train_cmd(exp, digits_dir, *resume()), cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    epochs, checks = epochs_and_checks(exp)
    assert [r["epoch"] for r in epochs] == [1, 2, 3, 4, 5, 6] and len(checks) == 12
    assert open(os.path.join(exp, "train.log")).read().count("resuming at epoch") == 3

    (run, metrics), = mlflow_runs(str(tmp_path / "mlflow")).values()
    assert run.info.status == "FINISHED" and run.info.run_name == "exp"
    assert metrics["val/accuracy"] == [(r["epoch"], pytest.approx(r["val"]["accuracy"])) for r in epochs]
    assert metrics["train/loss"] == [(r["epoch"], pytest.approx(r["train"]["loss"])) for r in epochs]
    assert metrics["val_checks/loss"] == [(r["step"], pytest.approx(r["val"]["loss"])) for r in checks]
    assert run.data.params["num_epochs"] == "6" and run.data.tags["model_dir"] == exp

    logged = wandb_history(exp)
    assert len({r["_step"] for r in logged}) == len(logged)  # no step twice, across the offline sessions
    wandb_epochs = [r for r in logged if "train/loss" in r]
    assert [(r["epoch"], r["val/accuracy"]) for r in wandb_epochs] == [
        (e["epoch"], pytest.approx(e["val"]["accuracy"])) for e in epochs]
    assert [r["epoch"] for r in logged if "val_checks/loss" in r] == [c["epoch"] for c in checks]
    assert {read(os.path.join(exp, "trackers.json"))["wandb"]["id"]} == {
        os.path.basename(p).split("-")[-1] for p in glob.glob(os.path.join(exp, "wandb", "offline-run-*"))}

    assert tensorboard_scalars(exp, "val/accuracy") == [(r["epoch"], pytest.approx(r["val"]["accuracy"]))
                                                        for r in epochs]
    assert tensorboard_scalars(exp, "val_checks/loss", "checks") == [(c["step"], pytest.approx(c["val"]["loss"]))
                                                                     for c in checks]


def test_two_processes_log_one_run_from_rank_0(tmp_path, digits_dir):
    """(d) nproc 2 under torchrun: rank 0 alone logs; one run."""
    folder = tmp_path / "ddp"
    folder.mkdir()
    (folder / "params.json").write_text(json.dumps({**FAST_PARAMS, "nproc": 2, "loggers": ["mlflow"]}))
    proc = subprocess.run(train_cmd(str(folder), digits_dir), cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (run, metrics), = mlflow_runs(str(tmp_path / "mlflow")).values()
    epochs, _ = epochs_and_checks(str(folder))
    assert run.info.status == "FINISHED" and [s for s, _ in metrics["val/loss"]] == [1, 2] and len(epochs) == 2


def test_a_search_is_one_parent_run_with_a_child_per_cell(tmp_path, digits_dir):
    """(e) 4 cells on 2 workers (warm cells) logging at once into one sqlite store: one parent, 4 FINISHED
    children with their params; the parent keeps results.md; W&B's cells share the search's group."""
    parent = tmp_path / "search"
    parent.mkdir()
    grid = {"learning_rate": [0.002, 0.005], "ps": [0.1, 0.3]}
    (parent / "params.json").write_text(json.dumps({**FAST_PARAMS, "num_epochs": 1, "loggers": ["mlflow", "wandb"],
                                                    "hyper_search": grid}))
    cmd = [sys.executable, "search_hyperparams.py", "--parent_dir", str(parent), "--data_dir", digits_dir,
           "--workers", "2"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "database is locked" not in proc.stdout + proc.stderr and "warning" not in proc.stdout
    cells = [f"learning_rate_{lr}__ps_{ps}" for lr in (0.002, 0.005) for ps in (0.1, 0.3)]
    runs = assert_children_of_one_parent(str(tmp_path / "mlflow"), "search", cells)
    assert runs[cells[0]][0].data.params["learning_rate"] == "0.002"
    for cell in cells:
        group = {r.get("_step") for r in wandb_history(str(parent / cell))}
        assert group == {10000}  # the one epoch, logged once
        assert read(str(parent / cell / "trackers.json"))["wandb"]["project"] == tmp_path.name


def test_a_store_that_cannot_be_written_is_one_warning_and_a_resume_backfills_it(tmp_path, digits_dir, monkeypatch):
    """(f) MLflow's store unreachable: the run completes its epochs with one warning; the resume, with the store
    back, logs the epoch the tracker missed (from history.json) and the new one, each once."""
    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / "params.json").write_text(json.dumps({**FAST_PARAMS, "loggers": ["mlflow"]}))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////proc/no/such/folder/mlflow.db")
    assert run_train(str(exp), digits_dir, "--stop_at_epoch", "1") == 0
    logged = open(exp / "train.log").read()
    assert logged.count("warning: mlflow:") == 1 and "training goes on without it" in logged
    assert read(str(exp / "status.json"))["status"] == "paused"

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/store/mlflow.db")
    assert run_train(str(exp), digits_dir, "--restore_file", "last") == 0
    (run, metrics), = mlflow_runs(str(tmp_path / "store")).values()
    epochs, _ = epochs_and_checks(str(exp))
    assert run.info.status == "FINISHED"
    assert metrics["val/loss"] == [(r["epoch"], pytest.approx(r["val"]["loss"])) for r in epochs]


def test_a_tracker_not_installed_is_one_line_before_anything_is_written(tmp_path, digits_dir, monkeypatch, capsys):
    """(g)"""
    import train
    from core import trackers

    monkeypatch.setitem(trackers.PACKAGES, "wandb", ("wandb_is_not_installed_here", "pip install 'wandb>=0.31'"))
    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / "params.json").write_text(json.dumps({**FAST_PARAMS, "loggers": ["wandb"]}))
    assert_one_line_error(lambda: train.main(["--model_dir", str(exp), "--data_dir", digits_dir]), capsys,
                          str(exp / "params.json"), "names wandb, which is not installed (pip install 'wandb>=0.31')",
                          str(exp))


def test_a_paused_run_ends_killed_and_its_resume_reopens_the_same_run(tmp_path, digits_dir, monkeypatch):
    """A pause (a rung of successive halving) ends the run KILLED; the resume reopens it (found by the folder's
    run_key where trackers.json lost its id) and ends it FINISHED, with a checkpoint from before `loggers`."""
    import torch

    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / "params.json").write_text(json.dumps({**FAST_PARAMS, "loggers": ["mlflow"]}))
    assert run_train(str(exp), digits_dir, "--stop_at_epoch", "1") == 0
    (run, _), = mlflow_runs(str(tmp_path / "mlflow")).values()
    assert run.info.status == "KILLED"
    last = str(exp / "last.pth.tar")
    ckpt = torch.load(last, weights_only=True)
    ckpt["params"]["tensorboard"] = 0  # what a checkpoint of a version before `loggers` holds
    torch.save(ckpt, last)
    record = read(str(exp / "trackers.json"))  # as if killed after MLflow made the run, before its id was saved
    (exp / "trackers.json").write_text(json.dumps({"run_key": record["run_key"]}))
    assert run_train(str(exp), digits_dir, "--restore_file", "last") == 0
    (again, metrics), = mlflow_runs(str(tmp_path / "mlflow")).values()
    assert again.info.run_id == run.info.run_id and again.info.status == "FINISHED"
    assert [s for s, _ in metrics["val/loss"]] == [1, 2]


@pytest.mark.parametrize("value, message", [
    (["mlflow", "comet"], "key 'loggers' must be a list of distinct names from tensorboard, mlflow, wandb"),
    ("mlflow", "key 'loggers' must be a list of distinct names"),
    (["wandb", "wandb"], "key 'loggers' must be a list of distinct names"),
])
def test_bad_loggers_are_one_line(tmp_path, digits_dir, capsys, value, message):
    import train

    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / "params.json").write_text(json.dumps({**FAST_PARAMS, "loggers": value}))
    assert_one_line_error(lambda: train.main(["--model_dir", str(exp), "--data_dir", digits_dir]), capsys,
                          str(exp / "params.json"), message, str(exp))


def test_sigterm_ends_the_run_killed_and_divergence_ends_it_failed(tmp_path, digits_dir):
    """The end state follows status.json: SIGTERM (a scheduler's stop) -> interrupted -> KILLED, with the figures,
    metrics files and (log_checkpoints) checkpoints kept as artifacts; a non-finite loss -> diverged -> FAILED."""
    from mlflow import MlflowClient

    stopped, diverged = tmp_path / "stopped", tmp_path / "diverged"
    for folder, extra in ((stopped, {"num_epochs": 20, "log_checkpoints": 1}),
                          (diverged, {"optimizer": "sgd", "scheduler": "none", "learning_rate": 1e12,
                                      "momentum": 0.0})):
        folder.mkdir()
        (folder / "params.json").write_text(json.dumps({**FAST_PARAMS, "loggers": ["mlflow"], **extra}))
    proc = subprocess.Popen(train_cmd(str(stopped), digits_dir), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while epoch_done(str(stopped)) < 1:
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 130
    assert run_train(str(diverged), digits_dir) == 1

    runs = mlflow_runs(str(tmp_path / "mlflow"))
    run, _ = runs["stopped"]
    assert run.info.status == "KILLED" and run.data.tags["status_reason"] == "SIGTERM"
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow/mlflow.db")
    kept = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"last.pth.tar", "history.json", "train_history.png", "params_effective.json"} <= kept
    run, _ = runs["diverged"]
    assert run.info.status == "FAILED" and "non-finite" in run.data.tags["status_reason"]
