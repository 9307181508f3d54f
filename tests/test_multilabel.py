"""Multi-label classification, the task written to model/task.py's contract alone: its size, then end to end on
small digit tags (train, SIGKILL and resume, evaluate, predict, export parity), its metrics against scikit-learn
and its data checks."""

import csv
import json
import os
import shutil

import numpy as np
import pytest
import torch
from test_architecture import unsupplied

from conftest import (
    ROOT,
    assert_same_weights,
    experiment_maker,
    kill_mid_run_then_resume,
    read,
    run_train,
)
from core.tasks import TASKS
from data.tags import build_tags
from model.task import required_names
from utils import UserError, run_cli

ML_PARAMS = {"task": "multilabel", "im_sz": 32, "batch_size": 16, "bs_test": 32, "learning_rate": 0.01,
             "num_epochs": 2, "cache_images": 1, "gallery_size": 4, "save_summary_steps": 5}
CLASSES = [str(d) for d in range(10)]
multilabel = TASKS["multilabel"]


@pytest.fixture(scope="module")
def tags_dir(tmp_path_factory):
    """The default multi-label set in small: 32-px scenes of 1-3 distinct digits."""
    return build_tags(str(tmp_path_factory.mktemp("data") / "tags"), size=32, counts=(96, 32, 16))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tags_dir):
    """One 2-epoch run, trained once for this module: evaluate, predict and export write beside its checkpoints."""
    folder = tmp_path_factory.mktemp("trained") / "multilabel"
    folder.mkdir()
    (folder / "params.json").write_text(json.dumps(ML_PARAMS))
    assert run_train(str(folder), tags_dir) == 0
    return str(folder)


def script(name, *args):
    return __import__(name).main(list(args))


def one_line_error(capsys, fn):
    with pytest.raises(SystemExit) as e:
        run_cli(fn)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1, err
    return err[0]


# ---------------------------------------------------------------- the contract, counted


def test_a_task_is_six_names_and_multilabel_supplies_them_in_one_small_file():
    assert required_names() == ["name", "metrics", "loss_terms", "find_classes", "scan_split", "build_model"]
    assert unsupplied(multilabel) == []
    package = ROOT / "model" / "multilabel"
    files = sorted(package.rglob("*.py"))
    lines = sum(len(f.read_text().splitlines()) for f in files)
    assert len(files) <= 3 and lines <= 150, (files, lines)


# ---------------------------------------------------------------- end to end


def test_train_writes_every_output_with_the_multilabel_metrics(trained):
    rows = read(os.path.join(trained, "history.json"))["epochs"]
    assert [list(r["val"]) for r in rows] == 2 * [["loss", "map", "f1", "exact_match"]]
    assert all(0 <= r["val"]["map"] <= 1 for r in rows)
    effective = read(os.path.join(trained, "params_effective.json"))
    assert effective["arch"] == "small_cnn" and effective["early_stopping"]["monitor_metric"] == "map"
    assert effective["loss"]["bce"] == 1.0
    for name in ("train_history.png", "predictions.png"):
        assert os.path.getsize(os.path.join(trained, name)) > 1000, name
    assert os.listdir(os.path.join(trained, "gallery"))
    record = read(os.path.join(trained, "augmentation.json"))
    assert record["eval"]["transform"]["transforms"][0]["__class_fullname__"] == "Resize"


@pytest.mark.slow
def test_sigkill_then_resume_gives_the_uninterrupted_weights(tmp_path, tags_dir):
    make = experiment_maker(tmp_path, {**ML_PARAMS, "batch_size": 8, "num_epochs": 3, "ema_decay": 0.9,
                                       "augmentation": "light"})
    a, b = kill_mid_run_then_resume(make("whole"), make("killed"), tags_dir)
    assert a["epoch"] == b["epoch"] == 3
    assert_same_weights(a, b)


def test_evaluate_writes_a_per_label_report_worst_first(trained, tags_dir, capsys):
    assert script("evaluate", "--model_dir", trained, "--data_dir", tags_dir) == 0
    metrics = read(os.path.join(trained, "metrics_test_best_weights.json"))
    assert metrics["task"] == "multilabel" and list(metrics["per_class"]) == CLASSES
    assert set(metrics["per_class"]["0"]) == {"map", "f1", "exact_match"}
    report = open(os.path.join(trained, "report_test_best_weights.md")).read()
    shown = [float(line.split("|")[2]) for line in report.splitlines() if line.startswith("| ")
             and "class" not in line and "n/a" not in line.split("|")[2]]
    assert shown == sorted(shown)  # lowest average precision first
    assert os.path.getsize(os.path.join(trained, "map_test_best_weights.png")) > 1000
    err = one_line_error(capsys, lambda: script("evaluate", "--model_dir", trained, "--data_dir", tags_dir, "--tta",
                                                "hflip"))
    assert "--tta hflip: not for multilabel" in err


def test_predicted_label_sets_are_what_evaluate_scores(trained, tags_dir, tmp_path):
    assert script("evaluate", "--model_dir", trained, "--data_dir", tags_dir) == 0
    exact = read(os.path.join(trained, "metrics_test_best_weights.json"))["exact_match"]
    out = str(tmp_path / "out")
    images = os.path.join(tags_dir, "test", "images")
    assert script("predict", "--model_dir", trained, "--source", images, "--out", out, "--draw") == 0
    with open(os.path.join(out, "predictions.csv")) as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["image", "labels", *(f"probs_{c}" for c in CLASSES)]
    with open(os.path.join(tags_dir, "test", "labels.csv")) as f:
        truth = {name: labels for name, labels in list(csv.reader(f))[1:]}
    right = [r["labels"] == truth[os.path.basename(r["image"])] for r in rows]
    assert len(rows) == len(truth) and sum(right) / len(rows) == pytest.approx(exact)
    assert len(os.listdir(os.path.join(out, "drawn"))) == len(rows)


def test_the_export_matches_the_checkpoint_and_evaluates_alike(trained, tags_dir):
    metrics = {}
    for fmt in ("onnx", "pt2"):
        assert script("export", "--model_dir", trained, "--format", fmt, "--data_dir", tags_dir) == 0
        record = read(os.path.join(trained, "export", f"best.{fmt}.json"))
        assert record["parity"]["images"] > 0 and record["parity"]["max_abs_diff"] <= 1e-4, record
    for variant, flags in (("", ()), ("_onnx", ("--exported", "onnx")), ("_pt2", ("--exported", "pt2"))):
        assert script("evaluate", "--model_dir", trained, "--data_dir", tags_dir, *flags) == 0
        metrics[variant] = read(os.path.join(trained, f"metrics_test_best_weights{variant}.json"))
    for variant in ("_onnx", "_pt2"):
        assert all(abs(metrics[variant][k] - metrics[""][k]) <= 1e-4 for k in ("loss", "map", "f1", "exact_match"))


# ---------------------------------------------------------------- the metrics and the data


def test_the_metrics_are_scikit_learns():
    from sklearn.metrics import average_precision_score, f1_score

    from model.multilabel.task import exact_match, macro_f1, mean_ap

    gen = torch.Generator().manual_seed(0)
    logits, targets = torch.randn(64, 5, generator=gen), (torch.rand(64, 5, generator=gen) > 0.6).float()
    sums = {"outputs": logits, "targets": targets}
    true, pred = targets.numpy().astype(int), (logits >= 0).numpy().astype(int)
    assert macro_f1(sums) == pytest.approx(f1_score(true, pred, average="macro", zero_division=0))
    assert mean_ap(sums) == pytest.approx(average_precision_score(true, logits.numpy(), average="macro"))
    assert exact_match(sums) == pytest.approx(np.mean((true == pred).all(1)))


def test_the_data_is_checked_and_class_weights_are_refused(tags_dir, tmp_path):
    from core.config import Params, resolve

    assert multilabel.find_classes(tags_dir) == CLASSES
    items = multilabel.scan_split(tags_dir, "valid", CLASSES)
    assert len(items) == 32 and all(len(t) == 10 and 1 <= sum(t) <= 3 for _, t in items)
    data = tmp_path / "tags"
    shutil.copytree(tags_dir, data, ignore=shutil.ignore_patterns(".cache"))
    labels = data / "valid" / "labels.csv"
    text = labels.read_text()
    first = text.splitlines()[1]
    cases = {"the header must be image,labels": text.replace("image,labels", "file,labels", 1),
             "labels for ghost.png, which is not in": text + "ghost.png,1\n",
             "has label x, which train does not name": text.replace(first, first.split(",")[0] + ",x", 1),
             "no row in labels.csv": text.replace(first + "\n", "", 1)}
    for message, bad in cases.items():
        labels.write_text(bad)
        with pytest.raises(UserError, match=message):
            multilabel.scan_split(str(data), "valid", CLASSES)
    params = Params(resolve({"task": "multilabel", "class_weights": "balanced"}, "p"))
    with pytest.raises(UserError, match="key 'class_weights' weighs classes; not for multilabel"):
        multilabel.check_params(params, CLASSES, "p")
