"""End to end on the real digits data: train -> outputs -> resume -> evaluate, and the run-level features."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import evaluate
import train
from conftest import FAST_PARAMS, ROOT, read, run_train
from core.rundir import outputs as core_outputs
from utils import load_checkpoint

RUN_FILES = ["train.log", "history.json", "metrics_val_best_weights.json", "metrics_val_last_weights.json",
             "best.pth.tar", "last.pth.tar", "train_history.png", "augmentation.json", "status.json",
             "params_effective.json"]


def test_cli_trains_two_epochs_with_every_output(make_experiment, digits_dir):
    exp = make_experiment()
    proc = subprocess.run([sys.executable, "train.py", "--model_dir", exp, "--data_dir", digits_dir],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    for name in RUN_FILES:
        assert os.path.getsize(os.path.join(exp, name)) > 0, name
    history = read(os.path.join(exp, "history.json"))
    assert [r["epoch"] for r in history["epochs"]] == [1, 2]
    assert history["classes"] == [str(d) for d in range(10)]
    best = read(os.path.join(exp, "metrics_val_best_weights.json"))
    assert best["accuracy"] > 0.5  # chance is 0.1
    assert set(best) >= {"loss", "accuracy", "top5", "f1", "epoch"}
    status = read(os.path.join(exp, "status.json"))
    assert status["status"] == "completed" and status["epoch"] == 2
    ckpt = load_checkpoint(os.path.join(exp, "last.pth.tar"))
    assert {"model", "optimizer", "scheduler", "epoch", "tracker", "rng", "params", "classes"} <= set(ckpt)
    assert ckpt["epoch"] == 2 and ckpt["params"]["train_subset"] == 400
    assert "epoch 2/2" in open(os.path.join(exp, "train.log")).read()
    assert read(os.path.join(exp, "augmentation.json"))["train"]["transform"]["transforms"]
    umask = os.umask(0)
    os.umask(umask)
    for name in ("history.json", "last.pth.tar"):  # atomic writes keep ordinary, shareable permissions
        assert os.stat(os.path.join(exp, name)).st_mode & 0o777 == 0o666 & ~umask


class StopAfter:
    """Interrupt a run right after epoch `n` is fully recorded, as a kill between epochs would."""

    def __init__(self, monkeypatch, n):
        original = core_outputs.RunFolder.record_epoch

        def record(folder, history, *args):
            original(folder, history, *args)
            if history[-1]["epoch"] == n:
                raise KeyboardInterrupt

        monkeypatch.setattr(core_outputs.RunFolder, "record_epoch", record)


def test_resume_continues_at_next_epoch_and_matches_uninterrupted(make_experiment, digits_dir, monkeypatch):
    # a loader worker process: each epoch's order and augmentation must not depend on the workers' lives before it
    whole = make_experiment("whole", num_epochs=3, num_workers=1)
    assert run_train(whole, digits_dir) == 0

    resumed = make_experiment("resumed", num_epochs=3, num_workers=1)
    with monkeypatch.context() as m:
        StopAfter(m, 2)
        with pytest.raises(KeyboardInterrupt):
            run_train(resumed, digits_dir)
    assert read(os.path.join(resumed, "status.json"))["status"] == "interrupted"
    # what a run SIGKILLed while writing leaves: a checkpoint's temp file, its figure helper's (a gone pid in the
    # name); an evaluate.py writing at the same time keeps its own (a live pid), as does one in another container
    # or on another node (another pid space) until it is an hour old
    from utils import PID_SPACE

    gone = subprocess.Popen(["true"])
    gone.wait()
    os.makedirs(os.path.join(resumed, "gallery"), exist_ok=True)
    stale = [os.path.join(resumed, name) for name in (
        ".tmp-x1y2last.pth.tar", f".tmp-{gone.pid}-{PID_SPACE}-ab12train_history.png",
        f"gallery/epoch_001.png.tmp-{gone.pid}-{PID_SPACE}", ".tmp-1-0badc0de-ef56history.json")]
    alive = [os.path.join(resumed, name) for name in (f".tmp-{os.getpid()}-{PID_SPACE}-cd34metrics_test.json",
                                                      ".tmp-1-0badc0de-ab34metrics_test.json")]
    for path in (*stale, *alive):
        open(path, "wb").close()
    os.utime(stale[-1], (time.time() - 7200,) * 2)  # another pid space's, two hours old: abandoned
    # no --data_dir: a resume trains on the data set its run trained on (the default data would change the weights)
    assert train.main(["--model_dir", resumed, "--restore_file", "last"]) == 0
    assert not any(os.path.exists(path) for path in stale) and all(os.path.exists(path) for path in alive)
    for path in alive:
        os.remove(path)

    assert "resuming at epoch 3" in open(os.path.join(resumed, "train.log")).read()
    assert [r["epoch"] for r in read(os.path.join(resumed, "history.json"))["epochs"]] == [1, 2, 3]
    a, b = (load_checkpoint(os.path.join(d, "last.pth.tar")) for d in (whole, resumed))
    assert b["epoch"] == 3 and b["stop_reason"] == "all epochs done"
    for k in a["model"]:  # same data order, augmentation, dropout and optimizer state: the same weights
        assert torch.equal(a["model"][k], b["model"][k]), k


def test_rerun_of_completed_run_does_nothing(make_experiment, digits_dir, capsys):
    exp = make_experiment(num_epochs=1)
    assert run_train(exp, digits_dir) == 0
    before = os.path.getmtime(os.path.join(exp, "last.pth.tar"))
    assert run_train(exp, digits_dir, "--restore_file", "last") == 0
    assert run_train(exp, digits_dir, "--restore_file", "best") == 0
    assert run_train(exp, digits_dir) == 0
    assert capsys.readouterr().out.count("already completed") == 3
    assert os.path.getmtime(os.path.join(exp, "last.pth.tar")) == before


def test_unfinished_run_is_not_restarted_without_restore_file(make_experiment, digits_dir, monkeypatch):
    from utils import UserError

    exp = make_experiment()
    with monkeypatch.context() as m:
        StopAfter(m, 1)
        with pytest.raises(KeyboardInterrupt):
            run_train(exp, digits_dir)
    with pytest.raises(UserError, match="--restore_file last"):
        run_train(exp, digits_dir)
    os.remove(os.path.join(exp, "last.pth.tar"))  # deleted to save space: best.pth.tar and history.json are kept
    with pytest.raises(UserError, match="holds a run's best.pth.tar and history.json but no last.pth.tar"):
        run_train(exp, digits_dir)


def test_overrides_apply_and_are_recorded_without_touching_params_json(make_experiment, digits_dir):
    exp = make_experiment()
    original = open(os.path.join(exp, "params.json")).read()
    assert run_train(exp, digits_dir, "num_epochs=1", "early_stopping.patience=4", "learning_rate=[0.001,0.004]") == 0
    effective = read(os.path.join(exp, "params_effective.json"))
    assert effective["num_epochs"] == 1 and effective["early_stopping"]["patience"] == 4
    assert effective["learning_rate"] == [0.001, 0.004]
    assert open(os.path.join(exp, "params.json")).read() == original
    history = read(os.path.join(exp, "history.json"))["epochs"]
    assert len(history) == 1 and len(history[0]["lr"]) == 2  # one rate per layer group


def test_early_stopping_stops_before_num_epochs(make_experiment, digits_dir):
    # lr 0 after warm-up cannot improve the loss by min_delta: stops after `patience` epochs without improvement
    exp = make_experiment(num_epochs=8, scheduler="none", learning_rate=1e-9,
                          early_stopping={"patience": 2, "monitor_metric": "loss", "minimize": 1, "min_delta": 0.5})
    assert run_train(exp, digits_dir) == 0
    history = read(os.path.join(exp, "history.json"))["epochs"]
    assert len(history) == 3
    status = read(os.path.join(exp, "status.json"))
    assert status["status"] == "completed" and status["reason"] == "early stopping"


def test_non_finite_loss_marks_run_diverged(make_experiment, digits_dir):
    exp = make_experiment(num_epochs=3, optimizer="sgd", scheduler="none", learning_rate=1e6, momentum=0.0)
    assert run_train(exp, digits_dir) == 1
    status = read(os.path.join(exp, "status.json"))
    assert status["status"] == "diverged" and "non-finite" in status["reason"]


def test_evaluate_writes_test_metrics_for_several_folders(make_experiment, digits_dir, capsys):
    dirs = [make_experiment("a", num_epochs=1), make_experiment("b", num_epochs=1, arch="small_cnn", ps=0.5)]
    for d in dirs:
        assert run_train(d, digits_dir) == 0
    capsys.readouterr()
    assert evaluate.main(["--model_dir", *dirs, "--data_dir", digits_dir]) == 0
    table = capsys.readouterr().out
    for d in dirs:
        metrics = read(os.path.join(d, "metrics_test_best_weights.json"))
        assert metrics["accuracy"] > 0.3 and metrics["epoch"] == 1
        assert os.path.getsize(os.path.join(d, "confusion_test_best_weights.png")) > 1000
        assert d in table


def test_init_weights_from_another_run(make_experiment, digits_dir):
    first = make_experiment("first", num_epochs=1)
    assert run_train(first, digits_dir) == 0
    second = make_experiment("second", num_epochs=1, learning_rate=1e-9, scheduler="none",
                             init_weights_path=os.path.join(first, "best.pth.tar"))
    assert run_train(second, digits_dir) == 0
    # with a ~zero learning rate the copied weights stay where the first run left them (a failed copy would
    # leave the seed's initial weights, which one epoch of training moved well beyond atol)
    a = load_checkpoint(os.path.join(first, "best.pth.tar"))["model"]
    b = load_checkpoint(os.path.join(second, "last.pth.tar"))["model"]
    for k, v in a.items():
        if v.is_floating_point() and "running" not in k:
            assert torch.allclose(v, b[k], atol=1e-5), k


@pytest.mark.parametrize("arch", ["resnet18"])
def test_torchvision_arch_trains(make_experiment, digits_dir, arch):
    exp = make_experiment(arch=arch, num_epochs=1, train_subset=64, valid_subset=32, im_sz=32,
                          learning_rate=[0.001, 0.001, 0.01])
    assert run_train(exp, digits_dir) == 0
    assert len(read(os.path.join(exp, "history.json"))["epochs"][0]["lr"]) == 3


def test_a_folder_being_trained_is_refused_with_its_own_exit_code(make_experiment, digits_dir):
    from core.rundir.folder import folder_lock, is_locked

    exp = make_experiment(num_epochs=1)
    with folder_lock(exp):
        assert is_locked(exp)
        proc = subprocess.run([sys.executable, "train.py", "--model_dir", exp, "--data_dir", digits_dir],
                              cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 75  # a search reads this as "running elsewhere", not as a failure
    assert proc.stderr.strip() == f"error: --model_dir {exp}: another process is training this folder"
    assert sorted(os.listdir(exp)) == [".lock", "params.json"]
    assert not is_locked(exp)


def test_a_forked_child_does_not_keep_the_folder_locked(tmp_path):
    from core.rundir.folder import folder_lock, is_locked

    ready, started = os.pipe()
    with folder_lock(str(tmp_path)):
        child = os.fork()
        if child == 0:  # a DataLoader worker or the figure helper, still alive when the run is gone
            os.write(started, b"1")
            time.sleep(3)
            os._exit(0)
    os.read(ready, 1)
    assert not is_locked(str(tmp_path), settle_s=0)
    os.kill(child, signal.SIGKILL)
    os.waitpid(child, 0)
    os.close(ready)
    os.close(started)


def test_resume_refuses_changed_params_and_discarding_epochs(make_experiment, digits_dir, monkeypatch):
    from core.training.state import BestTracker
    from utils import UserError

    exp = make_experiment(num_epochs=4)
    with monkeypatch.context() as m:
        StopAfter(m, 3)
        improves = iter([True, False, False])  # the best epoch is the first
        m.setattr(BestTracker, "update", lambda self, value, epoch: next(improves))
        with pytest.raises(KeyboardInterrupt):
            run_train(exp, digits_dir)
    before = sorted((f, os.path.getmtime(os.path.join(exp, f))) for f in os.listdir(exp))
    with pytest.raises(UserError, match=r"params changed since this checkpoint \(learning_rate: 0.005 -> 0.1\)"):
        run_train(exp, digits_dir, "--restore_file", "last", "learning_rate=0.1")
    assert load_checkpoint(os.path.join(exp, "best.pth.tar"))["epoch"] == 1
    with pytest.raises(UserError, match="is from epoch 1 but the run reached epoch 3; resuming would discard"):
        run_train(exp, digits_dir, "--restore_file", "best")
    assert sorted((f, os.path.getmtime(os.path.join(exp, f))) for f in os.listdir(exp)) == before
    status = open(os.path.join(exp, "status.json")).read()
    os.remove(os.path.join(exp, "status.json"))  # lost: last.pth.tar still says how far the run went
    with pytest.raises(UserError, match="is from epoch 1 but the run reached epoch 3; resuming would discard"):
        run_train(exp, digits_dir, "--restore_file", "best")
    with open(os.path.join(exp, "status.json"), "w") as f:
        f.write(status)
    with open(os.path.join(exp, "history.json"), "w") as f:
        f.write("{ torn")
    with pytest.raises(UserError, match="history.json"):  # its rows would be lost without a word
        run_train(exp, digits_dir, "--restore_file", "last")
    os.remove(os.path.join(exp, "history.json"))
    assert run_train(exp, digits_dir, "--restore_file", "last", "num_workers=0", "bs_test=64") == 0  # harmless


def test_search_runs_from_any_working_directory(tmp_path, digits_dir):
    parent = tmp_path / "exps" / "lr"
    parent.mkdir(parents=True)
    (parent / "params.json").write_text(json.dumps({**FAST_PARAMS, "num_epochs": 1, "train_subset": 100,
                                                    "hyper_search": {"learning_rate": [0.002]}}))
    proc = subprocess.run([sys.executable, str(ROOT / "search_hyperparams.py"), "--parent_dir", "exps/lr",
                           "--data_dir", os.path.relpath(digits_dir, tmp_path)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-1500:] + proc.stderr[-1500:]
    assert read(parent / "learning_rate_0.002" / "status.json")["status"] == "completed"
