"""Keypoints end to end on the built digit points: train, every output, SIGKILL and resume, evaluate, a
successive-halving search, results and plots; the data checks (JSON and CSV); the joint augmentation."""

import csv
import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import (
    KP_PARAMS,
    ROOT,
    assert_one_line_error,
    assert_same_weights,
    copy_data,
    experiment_maker,
    kill_mid_run_then_resume,
    loader_batches,
    read,
    run_train,
)
from core.config import load_params
from data.points import NAMES, build_points
from utils import run_cli

FIGURES = ["train_history.png", "gradients.png", "predictions.png"]


@pytest.fixture
def kp_experiment(tmp_path):
    return experiment_maker(tmp_path, KP_PARAMS, "kp")


# ---------------------------------------------------------------- end to end


def test_train_writes_every_output_with_point_metrics(kp_experiment, points_dir):
    exp = kp_experiment()
    assert run_train(exp, points_dir) == 0
    rows = read(os.path.join(exp, "history.json"))["epochs"]
    assert list(rows[-1]["val"]) == ["loss", "point_error", "pck"]
    assert rows[-1]["val"]["point_error"] > 0 and 0 <= rows[-1]["val"]["pck"] <= 1
    assert read(os.path.join(exp, "params_effective.json"))["arch"] == "heatmap_unet"
    assert read(os.path.join(exp, "params_effective.json"))["early_stopping"]["monitor_metric"] == "point_error"
    assert read(os.path.join(exp, "history.json"))["classes"] == NAMES
    for name in FIGURES:
        assert os.path.getsize(os.path.join(exp, name)) > 1000, name
    record = read(os.path.join(exp, "augmentation.json"))
    assert record["keypoint_params"] == {"format": "xy", "remove_invisible": False}


@pytest.mark.slow
def test_sigkill_then_resume_gives_the_uninterrupted_weights(kp_experiment, points_dir):
    params = {"num_epochs": 3, "ema_decay": 0.9, "accumulate_steps": 2, "grad_clip": 1.0, "augmentation": "light"}
    whole, killed = kp_experiment("whole", **params), kp_experiment("killed", **params)
    a, b = kill_mid_run_then_resume(whole, killed, points_dir)
    assert a["epoch"] == b["epoch"] == 3
    assert_same_weights(a, b)


def test_evaluate_writes_a_per_point_report_worst_first(kp_experiment, points_dir, capsys):
    import evaluate

    exp = kp_experiment()
    assert run_train(exp, points_dir) == 0
    assert evaluate.main(["--model_dir", exp, "--data_dir", points_dir]) == 0
    metrics = read(os.path.join(exp, "metrics_test_best_weights.json"))
    assert metrics["task"] == "keypoints" and list(metrics["per_point"]) == NAMES
    assert all(m["points"] == 16 for m in metrics["per_point"].values())
    errors = [m["error"] for m in metrics["per_point"].values()]
    assert metrics["point_error"] == pytest.approx(sum(errors) / len(errors))  # every point labelled in every image
    report = open(os.path.join(exp, "report_test_best_weights.md")).read()
    shown = [float(line.split("|")[2]) for line in report.splitlines() if line.startswith("| ") and "px" not in line
             and "point" not in line]
    assert shown == sorted(shown, reverse=True)  # largest error first
    assert os.path.getsize(os.path.join(exp, "errors_test_best_weights.png")) > 1000
    with pytest.raises(SystemExit) as e:
        run_cli(lambda: evaluate.main(["--model_dir", exp, "--data_dir", points_dir, "--tta", "hflip"]))
    assert e.value.code == 2 and "not for keypoints" in capsys.readouterr().err


def test_asha_search_over_the_point_loss_then_results_and_plots(tmp_path, points_dir):
    parent = tmp_path / "search"
    parent.mkdir()
    hyper = {"point_loss": ["smooth_l1", "l1", "mse"],
             "schedule": {"type": "asha", "min_epochs": 1, "reduction_factor": 3}}
    (parent / "params.json").write_text(json.dumps({**KP_PARAMS, "num_epochs": 3, "hyper_search": hyper}))
    proc = subprocess.run([sys.executable, "search_hyperparams.py", "--parent_dir", str(parent), "--data_dir",
                           points_dir, "--workers", "2"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    cells = sorted(d for d in os.listdir(parent) if d.startswith("point_loss"))
    assert len(cells) == 3
    epochs = {c: len(read(parent / c / "history.json")["epochs"]) for c in cells}
    assert sorted(epochs.values()) == [1, 1, 3]
    first_epoch = {c: read(parent / c / "history.json")["epochs"][0]["val"]["point_error"] for c in cells}
    assert max(epochs, key=epochs.get) == min(first_epoch, key=first_epoch.get)  # lower error promoted
    results = (parent / "results.md").read_text()
    assert "val_point_error" in results and results.splitlines()[2].startswith(f"| {max(epochs, key=epochs.get)} ")
    for name in ("history_plots.png", "parallel.png", "rungs.png"):
        assert (parent / name).stat().st_size > 1000


def test_overfit_mode_reaches_full_pck_and_mixing_is_refused(kp_experiment, points_dir, capsys):
    exp = kp_experiment("overfit", overfit_batches=1, batch_size=4, num_epochs=60, learning_rate=0.03, scheduler="none",
                        early_stopping={"patience": 0}, monitor_gradients=0)
    assert run_train(exp, points_dir) == 0
    assert read(os.path.join(exp, "status.json"))["overfit_check"]["train_pck"] > 0.9
    mixed = kp_experiment("mixed", mixup_alpha=0.4)
    with pytest.raises(SystemExit) as e:
        run_cli(lambda: run_train(mixed, points_dir))
    assert e.value.code == 2 and "key 'mixup_alpha' mixes images" in capsys.readouterr().err
    assert os.listdir(mixed) == ["params.json"]


# ---------------------------------------------------------------- the data


def edit_points(data, split, change):
    path = data / split / "keypoints.json"
    table = json.loads(path.read_text())
    change(table)
    path.write_text(json.dumps(table))
    return path


def first_image(data, split):
    return sorted((data / split / "images").iterdir())[0]


BAD = {
    "a wrong number of points": (lambda d: first_image(d, "train") if edit_points(
        d, "train", lambda t: t["images"][first_image(d, "train").name].pop()) else None, "4 points, expected 5"),
    "a point outside the image": (lambda d: first_image(d, "valid") if edit_points(
        d, "valid", lambda t: t["images"][first_image(d, "valid").name][0].__setitem__(0, 40)) else None,
        "is outside the 32x32 image"),
    "points for a missing image": (lambda d: edit_points(d, "train", lambda t: first_image(d, "train").unlink()),
                                   "which is not in"),
    "an image without points": (lambda d: first_image(d, "valid") if edit_points(
        d, "valid", lambda t: t["images"].pop(first_image(d, "valid").name)) else None, "no points in"),
    "other point names": (lambda d: edit_points(d, "valid", lambda t: t.__setitem__("names", NAMES[::-1])),
                          "but train names"),
    "a bad visibility flag": (lambda d: first_image(d, "train") if edit_points(
        d, "train", lambda t: t["images"][first_image(d, "train").name][1].__setitem__(2, 5)) else None,
        "has visibility 5"),
    "no points file": (lambda d: (d / "valid" / "keypoints.json").unlink() or d / "valid",
                       "no keypoints.json or keypoints.csv"),
    "a malformed csv line": (lambda d: write_csv(d / "valid") or open(d / "valid" / "keypoints.csv", "a").write(
        "digit_00000.png,1,2\n") and d / "valid" / "keypoints.csv", "line 34: 2 values, expected 15"),
    "both json and csv": (lambda d: (d / "valid" / "keypoints.csv").write_text("image\n") and
                          d / "valid" / "keypoints.json", "both exist"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_data_is_one_line_naming_the_file_and_nothing_is_written(case, kp_experiment, points_dir, tmp_path,
                                                                       capsys):
    change, message = BAD[case]
    data = copy_data(points_dir, tmp_path / "data")
    named = change(data)
    exp = kp_experiment()
    assert_one_line_error(lambda: run_train(exp, str(data)), capsys, named, message, exp)


def write_csv(split_dir):
    """keypoints.json -> keypoints.csv, the same points."""
    table = json.loads((split_dir / "keypoints.json").read_text())
    with open(split_dir / "keypoints.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", *(f"{n}_{c}" for n in table["names"] for c in "xyv")])
        for name, points in table["images"].items():
            writer.writerow([name, *(v for p in points for v in p)])
    (split_dir / "keypoints.json").unlink()


def test_a_csv_layout_gives_the_same_batches_as_json(points_dir, tmp_path, kp_experiment):
    data = copy_data(points_dir, tmp_path / "csv")
    for split in ("train", "valid", "test"):
        write_csv(data / split)
    params = os.path.join(kp_experiment(augmentation="light", cache_images=0), "params.json")
    (names_a, a), (names_b, b) = loader_batches(points_dir, params), loader_batches(str(data), params)
    assert names_a == names_b == NAMES and len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_geometric_augmentation_moves_the_points_with_the_image(points_dir, tmp_path, kp_experiment):
    shift = {"__class_fullname__": "Affine", "translate_px": {"x": [3, 3], "y": [0, 0]}, "p": 1.0}
    plain = loader_batches(points_dir, os.path.join(kp_experiment("plain", augmentation="none"), "params.json"))[1][0]
    moved = loader_batches(points_dir, os.path.join(kp_experiment("moved", augmentation=shift), "params.json"))[1][0]
    (xa, ya), (xb, yb) = plain, moved
    assert torch.allclose(xa[..., :-3], xb[..., 3:], atol=1e-5)  # the image, 3 px to the right
    inside = ya[..., 0] + 3 / 32 <= 1
    assert torch.allclose(yb[..., 0][inside], ya[..., 0][inside] + 3 / 32, atol=1e-5)  # its points with it
    assert torch.equal(ya[..., 1], yb[..., 1]) and torch.equal(yb[..., 2][~inside], torch.zeros((~inside).sum()))


def test_the_default_set_is_deterministic_and_its_points_are_the_digit_box(tmp_path):
    a = build_points(str(tmp_path / "a"), size=32, counts=(4, 2, 2))
    b = build_points(str(tmp_path / "b"), size=32, counts=(4, 2, 2))
    for split in ("train", "valid", "test"):
        assert (tmp_path / "a" / split / "keypoints.json").read_bytes() == \
            (tmp_path / "b" / split / "keypoints.json").read_bytes()
    table = read(os.path.join(a, "train", "keypoints.json"))
    assert table["names"] == NAMES and len(table["images"]) == 4
    for points in table["images"].values():
        (x0, y0, _), (x1, _, _), (_, y1, _), _, (cx, cy, _) = points
        assert x0 < x1 and y0 < y1 and (cx, cy) == ((x0 + x1) / 2, (y0 + y1) / 2)
    assert b == str(tmp_path / "b")


def test_a_torchvision_classifier_regresses_the_points_directly(kp_experiment):
    from model.keypoints.net import build_model, head_of

    params = load_params(os.path.join(kp_experiment(arch="resnet18"), "params.json"))
    model = build_model(params, 5)
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 5, 2) and ((out > 0) & (out < 1)).all()
    assert head_of(model).out_features == 10
