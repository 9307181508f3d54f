"""Stopping and resuming within an epoch (core/training/within_epoch.py): a stopping signal writes a checkpoint at
the next batch and the resume is exact; checkpoints within epochs are bad-input checked. Each task's SIGKILL test
(kill_mid_run_then_resume in conftest.py) kills its runs after checkpoints within epochs and resumes them there; the
two-process one kills the whole process group; the Slurm one requeues a cell (test_cluster.py)."""

import json
import os
import signal
import subprocess
import time

import pytest
import torch

from conftest import FAST_PARAMS, ROOT, assert_one_line_error, assert_same_weights, read, run_train, train_cmd


def history_rows(folder):
    rows = read(os.path.join(folder, "history.json"))
    keep = ("epoch", "lr", "train", "val", "grad_norm", "update_ratio")
    return [{k: r.get(k) for k in keep} for r in rows["epochs"]], rows.get("checks")


@pytest.mark.parametrize("sig, extra", [("SIGTERM", {"accumulate_steps": 2, "mixup_alpha": 0.2}),
                                        ("SIGUSR1", {"num_workers": 2, "val_every_batches": 4})])
def test_a_stopping_signal_checkpoints_at_the_next_batch_and_the_resume_is_exact(tmp_path, digits_dir, sig, extra):
    """SIGTERM (Slurm's preemption, scancel) or SIGUSR1 (--signal=USR1@90) in the middle of epoch 2: the run writes
    last.pth.tar after the batch under way, says how long after the signal, ends 'interrupted' (exit 130); resumed,
    it ends with the weights and history of a run never stopped. No checkpoint key is set: the signal alone. With
    accumulation over 2 batches (the stop waits for an optimizer step) and MixUp; with 2 loader workers."""
    params = {**FAST_PARAMS, "num_epochs": 3, "ema_decay": 0.9, **extra}
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    for folder in (whole, stopped):
        folder.mkdir()
        (folder / "params.json").write_text(json.dumps(params))
    assert run_train(str(whole), digits_dir) == 0
    proc = subprocess.Popen(train_cmd(str(stopped), digits_dir), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (stopped / "status.json").exists() or read(stopped / "status.json").get("epoch", 0) < 1:
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.01)
    time.sleep(0.1)
    proc.send_signal(getattr(signal, sig))
    assert proc.wait(timeout=120) == 130
    assert proc.stderr.read().strip().splitlines() == [f"interrupted ({sig})"]
    status = read(stopped / "status.json")
    assert status["status"] == "interrupted" and status["reason"] == sig
    assert status["epoch"] >= 1 and status["batch"] >= 1 and status["signal_to_checkpoint_s"] > 0
    ckpt = torch.load(stopped / "last.pth.tar", weights_only=True)
    assert ckpt["within"]["batches"] == status["batch"] and ckpt["within"]["epoch"] == status["epoch"] + 1
    assert f"stopping after batch {status['batch']}: last.pth.tar holds it" in (stopped / "train.log").read_text()

    assert run_train(str(stopped), digits_dir, "--restore_file", "last") == 0
    assert f"resuming at epoch {status['epoch'] + 1}, after batch {status['batch']}" in (
        stopped / "train.log").read_text()
    a, b = (torch.load(folder / "last.pth.tar", weights_only=True) for folder in (whole, stopped))
    assert_same_weights(a, b, parts=("model", "ema", "optimizer"))
    assert history_rows(str(whole)) == history_rows(str(stopped))


@pytest.mark.parametrize("params, message", [
    ({"checkpoint_every_s": 0}, "key 'checkpoint_every_s' must be a number > 0, or null, got 0"),
    ({"checkpoint_every_s": -60}, "key 'checkpoint_every_s' must be a number > 0, or null, got -60"),
    ({"checkpoint_every_s": "10m"}, "key 'checkpoint_every_s' must be a number > 0, or null"),
    ({"checkpoint_every_batches": 0}, "key 'checkpoint_every_batches' must be an int >= 1, or null, got 0"),
    ({"checkpoint_every_batches": 2.5}, "key 'checkpoint_every_batches' expects int or null, got float 2.5"),
    ({"checkpoint_every_s": 600, "checkpoint_every_batches": 100},
     "keys 'checkpoint_every_s' and 'checkpoint_every_batches' both set; set one"),
])
def test_bad_checkpoint_intervals_are_one_line(tmp_path, digits_dir, capsys, params, message):
    import train

    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / "params.json").write_text(json.dumps({**FAST_PARAMS, **params}))
    assert_one_line_error(lambda: train.main(["--model_dir", str(exp), "--data_dir", digits_dir]), capsys,
                          str(exp / "params.json"), message, str(exp))


def test_checkpoints_within_epochs_change_nothing_the_run_computes(tmp_path, digits_dir):
    """Written every 3 batches (with accumulation over 2: at the first optimizer step 3 or more batches after the
    last), nothing differs from a run without them; last.pth.tar ends as the last epoch's. Nor do 2 loader workers
    (each batch's augmentation is seeded by the batch)."""
    params = {**FAST_PARAMS, "accumulate_steps": 2, "mixup_alpha": 0.2}
    plain, often, workers = tmp_path / "plain", tmp_path / "often", tmp_path / "workers"
    for folder, extra in ((plain, {}), (often, {"checkpoint_every_batches": 3}), (workers, {"num_workers": 2})):
        folder.mkdir()
        (folder / "params.json").write_text(json.dumps({**params, **extra}))
        assert run_train(str(folder), digits_dir) == 0
    a, b, c = (torch.load(folder / "last.pth.tar", weights_only=True) for folder in (plain, often, workers))
    assert_same_weights(a, b, parts=("model", "optimizer"))
    assert_same_weights(a, c, parts=("model", "optimizer"))  # augmentation seeded by the batch, in any process
    assert "within" not in b and read(often / "status.json")["batch"] is None
    assert history_rows(str(plain)) == history_rows(str(often)) == history_rows(str(workers))


def test_submitits_checkpoint_stops_the_cell_at_its_next_batch_before_the_requeue(tmp_path, digits_dir):
    """What submitit calls on preemption or before the time limit (then it requeues the task): the cell's train.py
    gets SIGTERM and is waited for, so the requeued task finds a checkpoint of the batch it stopped at."""
    pytest.importorskip("submitit")
    import threading

    from core.search.cluster import SlurmCell
    from core.search.pool import Cell, prepare

    cell = Cell("lr", str(tmp_path / "search" / "lr"), {**FAST_PARAMS, "num_epochs": 20})
    prepare(cell)  # as the search does before it submits
    task = SlurmCell(digits_dir, threads=1, max_requeues=3)
    result = {}
    runner = threading.Thread(target=lambda: result.update(outcome=task(cell)))
    runner.start()
    deadline = time.time() + 120
    while not os.path.exists(os.path.join(cell.folder, "status.json")) or read(
            os.path.join(cell.folder, "status.json")).get("epoch", 0) < 1:
        assert time.time() < deadline and runner.is_alive()
        time.sleep(0.02)
    again = task.checkpoint(cell)
    runner.join(timeout=60)
    assert result["outcome"] == "interrupted" and again.args == (cell,)
    status = read(os.path.join(cell.folder, "status.json"))
    assert status["reason"] == "SIGTERM" and status["batch"] is not None
    assert "proc" not in again.function.__getstate__() or again.function.__getstate__()["proc"] is None
