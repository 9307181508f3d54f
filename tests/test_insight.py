"""Reproducibility record, gradient monitoring, prediction gallery, TensorBoard, overfit check and smoke runs."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from PIL import Image

from conftest import ROOT, read, run_train


def git(repo, *args):
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def repo(tmp_path):
    """A copy of the project's code in its own git repository, with one commit."""
    dst = tmp_path / "repo"
    dst.mkdir()
    for name in ("train.py", "utils.py"):
        shutil.copy(ROOT / name, dst)
    for folder in ("core", "model"):
        shutil.copytree(ROOT / folder, dst / folder, ignore=shutil.ignore_patterns("__pycache__"))
    (dst / "data").mkdir()
    for path in (ROOT / "data").glob("*.py"):
        shutil.copy(path, dst / "data")
    git(dst, "init", "-q")
    git(dst, "add", "-A")
    git(dst, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    return dst


def train_in(repo, exp, digits_dir):
    exp.mkdir()
    (exp / "params.json").write_text(json.dumps({"num_epochs": 1, "train_subset": 100, "valid_subset": 50,
                                                 "cache_images": 1, "im_sz": 16}))
    proc = subprocess.run([sys.executable, "train.py", "--model_dir", str(exp), "--data_dir", digits_dir],
                          cwd=repo, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return read(exp / "record.json")["sessions"]


def test_record_names_commit_code_versions_and_hardware(repo, tmp_path, digits_dir):
    import albumentations
    import torchvision

    (session,) = train_in(repo, tmp_path / "clean", digits_dir)
    assert session["git"]["commit"] == git(repo, "rev-parse", "HEAD")
    assert session["git"]["dirty"] is False and "diff" not in session["git"]
    assert session["command"][1:4] == ["train.py", "--model_dir", str(tmp_path / "clean")]
    assert (session["torch"], session["torchvision"], session["albumentations"]) == (
        torch.__version__, torchvision.__version__, albumentations.__version__)
    assert session["python"] == ".".join(map(str, sys.version_info[:3]))
    assert session["hardware"]["cpu_count"] == os.cpu_count() and session["hardware"]["gpu_count"] == 0
    assert session["seed"] == 230 and session["wall_time_s"] > 0 and session["images_per_s"] > 0
    snapshot = tmp_path / "clean" / session["model_code"]["snapshot"]
    net = "classification/net.py"
    assert (snapshot / net).read_text() == (repo / "model" / net).read_text()

    with open(repo / "model" / net, "a") as f:
        f.write("\n# an experiment's tweak\n")
    (dirty,) = train_in(repo, tmp_path / "dirty", digits_dir)
    assert dirty["git"]["dirty"] is True
    assert "an experiment's tweak" in (tmp_path / "dirty" / dirty["git"]["diff"]).read_text()
    assert dirty["model_code"]["sha1"] != session["model_code"]["sha1"]
    assert "an experiment's tweak" in (tmp_path / "dirty" / dirty["model_code"]["snapshot"] / net).read_text()


def test_resume_appends_a_session(make_experiment, digits_dir, monkeypatch):
    from core.rundir import outputs

    exp = make_experiment()
    original = outputs.RunFolder.record_epoch

    def stop_after_first(folder, history, *args):
        original(folder, history, *args)
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(outputs.RunFolder, "record_epoch", stop_after_first)
        with pytest.raises(KeyboardInterrupt):
            run_train(exp, digits_dir)
    assert run_train(exp, digits_dir, "--restore_file", "last") == 0
    sessions = read(os.path.join(exp, "record.json"))["sessions"]
    assert [s["start_epoch"] for s in sessions] == [1, 2]
    assert [s["outcome"] for s in sessions] == ["interrupted", "completed"]


def test_gradient_history_has_every_layer_every_epoch(make_experiment, digits_dir):
    from model.classification.net import SmallCNN

    exp = make_experiment(num_epochs=3)
    assert run_train(exp, digits_dir) == 0
    layers = [n for n, p in SmallCNN(10).named_parameters() if p.dim() > 1]
    rows = read(os.path.join(exp, "history.json"))["epochs"]
    assert len(rows) == 3
    for row in rows:
        assert list(row["grad_norm"]) == layers and list(row["update_ratio"]) == layers
        assert all(0 < v < 1e3 for v in row["grad_norm"].values())
        assert all(0 < v < 10 for v in row["update_ratio"].values())
        assert row["grad_warnings"] == []
    assert os.path.getsize(os.path.join(exp, "gradients.png")) > 5000


def test_vanishing_gradients_are_flagged():
    from core.training.monitor import gradient_warnings

    warnings = gradient_warnings({"a.weight": 1e-9, "b.weight": 0.5, "c.weight": float("inf")})
    assert len(warnings) == 2 and "vanishing gradient in a.weight" in warnings[0] and "c.weight" in warnings[1]


def test_gallery_and_confusion_matrix_have_the_expected_size(make_experiment, digits_dir):
    exp = make_experiment(num_epochs=1, gallery_indices=[0, 1, 2, 3, 4, 5, 6, 7])
    assert run_train(exp, digits_dir) == 0
    with Image.open(os.path.join(exp, "predictions.png")) as im:
        assert im.size == (1360, 380)  # 8 fixed + 4 wrong slots: 8 columns x 2 rows of 1.7 x 1.9 in at 100 dpi
    with Image.open(os.path.join(exp, "confusion_valid_best.png")) as im:
        assert im.size == (650, 650)  # 10 classes: 0.45 x 10 + 2 in


def test_tensorboard_scalars_match_history(make_experiment, digits_dir):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    exp = make_experiment(num_epochs=2, tensorboard=1, val_every_batches=5)  # a params file from before `loggers`
    assert run_train(exp, digits_dir) == 0
    events = EventAccumulator(os.path.join(exp, "tensorboard"))
    events.Reload()
    history = read(os.path.join(exp, "history.json"))
    acc = [e.value for e in events.Scalars("val/accuracy")]
    assert acc == pytest.approx([r["val"]["accuracy"] for r in history["epochs"]])
    assert "grad_norm/head.1.weight" in events.Tags()["scalars"]
    # the checks within epochs: 13 batches an epoch, checked after batches 5 and 10, at steps counted in batches
    events = EventAccumulator(os.path.join(exp, "tensorboard", "checks"))
    events.Reload()
    checks = [(e.step, e.value) for e in events.Scalars("val_checks/accuracy")]
    assert checks == [(s, pytest.approx(r["val"]["accuracy"])) for s, r in zip([5, 10, 18, 23], history["checks"],
                                                                             strict=True)]


@pytest.mark.slow
def test_overfit_mode_reaches_full_training_accuracy(make_experiment, digits_dir):
    exp = make_experiment(overfit_batches=2, batch_size=8, num_epochs=40, learning_rate=0.01, ps=0.0,
                          early_stopping={"patience": 0})
    assert run_train(exp, digits_dir) == 0
    check = read(os.path.join(exp, "status.json"))["overfit_check"]
    assert check["passed"] and check["train_accuracy"] >= 0.99
    log = open(os.path.join(exp, "train.log")).read()
    assert "16 train, 16 valid images" in log and "overfit check: accuracy" in log
    assert read(os.path.join(exp, "augmentation.json"))["train"] == read(os.path.join(exp, "augmentation.json"))["eval"]


def test_smoke_catches_a_cell_that_crashes_on_its_first_batch(tmp_path, digits_dir):
    parent = tmp_path / "search"
    parent.mkdir()
    (parent / "params.json").write_text(json.dumps({
        "im_sz": 32, "batch_size": 8, "num_epochs": 1, "train_subset": 32, "valid_subset": 16,
        "hyper_search": {"arch": ["small_cnn", "vit_b_16"]}}))  # vit_b_16 needs 224 px: fails on batch one
    proc = subprocess.run([sys.executable, "search_hyperparams.py", "--parent_dir", str(parent), "--data_dir",
                           digits_dir, "--smoke"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert "smoke: arch_vit_b_16:" in proc.stdout and "1 failed" in proc.stdout
    assert "arch_small_cnn" not in proc.stdout.split("smoke test of")[0]  # the good cell passed
    assert os.listdir(parent) == ["params.json"]  # nothing trained, nothing written
