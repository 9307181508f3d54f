"""Detection end to end on the built digit boxes: train, every output, SIGKILL and resume, evaluate, a
successive-halving search, results and plots; COCO and YOLO layouts; the data checks; mAP from torchmetrics."""

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import (
    DET_PARAMS,
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
from utils import run_cli

FIGURES = ["train_history.png", "gradients.png", "predictions.png"]


@pytest.fixture
def det_experiment(tmp_path):
    return experiment_maker(tmp_path, DET_PARAMS, "det")


# ---------------------------------------------------------------- end to end


def test_train_writes_every_output_with_coco_metrics_and_loss_terms(det_experiment, boxes_dir):
    exp = det_experiment()
    assert run_train(exp, boxes_dir) == 0
    rows = read(os.path.join(exp, "history.json"))["epochs"]
    assert list(rows[-1]["val"])[:5] == ["loss", "map", "map_50", "map_75", "mar_100"]
    terms = {"loss_classification", "loss_bbox_regression", "loss_bbox_ctrness"}
    assert terms <= set(rows[-1]["train"]) and terms <= set(rows[-1]["val"])
    assert rows[-1]["train"]["loss"] == pytest.approx(sum(rows[-1]["train"][t] for t in terms), rel=1e-4)
    effective = read(os.path.join(exp, "params_effective.json"))
    assert effective["arch"] == "small_fcos" and effective["early_stopping"]["monitor_metric"] == "map"
    for name in FIGURES:
        assert os.path.getsize(os.path.join(exp, name)) > 1000, name
    assert read(os.path.join(exp, "augmentation.json"))["bbox_params"]["label_fields"] == ["labels"]


@pytest.mark.slow
def test_sigkill_then_resume_gives_the_uninterrupted_weights(det_experiment, boxes_dir):
    """With crops on too (crop_size: each 64-px scene trains in 40-px pieces, chosen by the augmentation's seed)."""
    params = {"num_epochs": 3, "ema_decay": 0.9, "grad_clip": 1.0, "augmentation": "light", "crop_size": 40}
    whole, killed = det_experiment("whole", **params), det_experiment("killed", **params)
    a, b = kill_mid_run_then_resume(whole, killed, boxes_dir, after_first_epoch_s=0.5)
    assert a["epoch"] == b["epoch"] == 3
    assert_same_weights(a, b)


def test_evaluate_writes_per_class_ap_worst_first(det_experiment, boxes_dir, capsys):
    import evaluate

    exp = det_experiment()
    assert run_train(exp, boxes_dir) == 0
    assert evaluate.main(["--model_dir", exp, "--data_dir", boxes_dir]) == 0
    metrics = read(os.path.join(exp, "metrics_test_best_weights.json"))
    assert metrics["task"] == "detection" and list(metrics["per_class"]) == [str(d) for d in range(10)]
    assert sum(m["boxes"] for m in metrics["per_class"].values()) > 16
    report = open(os.path.join(exp, "report_test_best_weights.md")).read()
    shown = [float(line.split("|")[2]) for line in report.splitlines()[4:] if line.startswith("| ")
             and "n/a" not in line]
    assert shown == sorted(shown)  # worst class first
    assert os.path.getsize(os.path.join(exp, "ap_test_best_weights.png")) > 1000
    with pytest.raises(SystemExit) as e:
        run_cli(lambda: evaluate.main(["--model_dir", exp, "--data_dir", boxes_dir, "--tta", "hflip"]))
    assert e.value.code == 2 and "not for detection" in capsys.readouterr().err


def test_asha_search_then_results_and_plots(tmp_path, boxes_dir):
    parent = tmp_path / "search"
    parent.mkdir()
    hyper = {"learning_rate": [0.0003, 0.003, 0.03],
             "schedule": {"type": "asha", "min_epochs": 1, "reduction_factor": 3}}
    (parent / "params.json").write_text(json.dumps({**DET_PARAMS, "num_epochs": 3, "hyper_search": hyper}))
    proc = subprocess.run([sys.executable, "search_hyperparams.py", "--parent_dir", str(parent), "--data_dir",
                           boxes_dir, "--workers", "2"], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    cells = sorted(d for d in os.listdir(parent) if d.startswith("learning_rate"))
    assert sorted(len(read(parent / c / "history.json")["epochs"]) for c in cells) == [1, 1, 3]
    assert "val_map" in (parent / "results.md").read_text()
    for name in ("history_plots.png", "parallel.png", "rungs.png"):
        assert (parent / name).stat().st_size > 1000


# ---------------------------------------------------------------- metrics and batches


def test_predictions_equal_to_the_truth_give_map_1():
    from model.detection.metrics import EpochMetrics

    truth = torch.tensor([[[2.0, 3.0, 20.0, 25.0, 1.0], [30.0, 5.0, 50.0, 40.0, 4.0]],
                          [[10.0, 10.0, 30.0, 30.0, 2.0], [-1.0, -1.0, -1.0, -1.0, -1.0]]])
    detections = torch.cat([truth[..., :4], torch.ones_like(truth[..., :1]), truth[..., 4:]], -1)
    detections[1, 1] = -1.0
    m = EpochMetrics(10, "cpu", keep_details=True)
    m.update({"detections": detections, "losses": {"x": torch.tensor(0.0)}}, truth, torch.tensor(0.0))
    out = m.compute()
    assert out["map"] == out["map_50"] == out["map_75"] == out["mar_100"] == pytest.approx(1.0)
    assert m.details()["mistakes"] == [0, 0]


def write_yolo(split_dir, classes):
    """annotations.json -> labels/NAME.txt (normalised cx cy w h) and data.yaml: the same boxes."""
    coco = json.loads((split_dir / "annotations.json").read_text())
    (split_dir / "labels").mkdir()
    images = {im["id"]: im for im in coco["images"]}
    lines = {im["file_name"]: [] for im in coco["images"]}
    for ann in coco["annotations"]:
        im = images[ann["image_id"]]
        x, y, w, h = ann["bbox"]
        cx, cy = (x + w / 2) / im["width"], (y + h / 2) / im["height"]
        # six decimals, as Ultralytics' converters write them
        lines[im["file_name"]].append(f"{ann['category_id'] - 1} {cx:.6f} {cy:.6f} {w / im['width']:.6f} "
                                      f"{h / im['height']:.6f}")
    for name, rows in lines.items():
        if rows:  # no file at all: a background image, as Ultralytics reads it
            (split_dir / "labels" / (os.path.splitext(name)[0] + ".txt")).write_text("\n".join(rows) + "\n")
    (split_dir / "annotations.json").unlink()
    (split_dir.parent / "data.yaml").write_text("names:\n" + "".join(f"  {i}: '{c}'\n" for i, c in enumerate(classes)))


def test_coco_and_yolo_layouts_of_the_same_boxes_give_the_same_batches_and_train_alike(tmp_path, det_experiment):
    from data.boxes import build_boxes

    # 48-px scenes: a box edge at 7 px is 0.145833 in six decimals, 7.00000 px back only once kept to 1/100 px
    boxes_dir = build_boxes(str(tmp_path / "coco"), size=48, counts=(48, 16, 8))
    data = copy_data(boxes_dir, tmp_path / "yolo")
    for split in ("train", "valid", "test"):
        write_yolo(data / split, [str(d) for d in range(10)])
    params = os.path.join(det_experiment(augmentation="light", cache_images=0), "params.json")
    (names_a, a), (names_b, b) = loader_batches(boxes_dir, params), loader_batches(str(data), params)
    assert names_a == names_b and len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b):  # boxes kept to 1/100 pixel: six-decimal fractions give the same ones
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    runs = [det_experiment(name=f"{layout}_run", augmentation="light") for layout in ("coco", "yolo")]
    for run, data_dir in zip(runs, (boxes_dir, str(data))):
        assert run_train(run, data_dir) == 0
    metrics = [read(os.path.join(r, "metrics_val_best_weights.json")) for r in runs]
    assert metrics[0] == metrics[1]  # same boxes, order and ids: the same training


def test_a_box_cropped_out_is_dropped_with_its_label_and_background_images_train(boxes_dir, tmp_path,
                                                                                  det_experiment):
    from model.detection import data_loader

    params = load_params(os.path.join(det_experiment(), "params.json"))
    _, eval_tf = data_loader.build_transforms(params)
    image = os.path.join(boxes_dir, "train", "images", sorted(os.listdir(os.path.join(boxes_dir, "train",
                                                                                       "images")))[0])
    import albumentations as A

    shift = A.Compose([A.Affine(translate_px={"x": 28, "y": 0}, p=1.0), *eval_tf.transforms],
                      bbox_params=A.BboxParams(**data_loader.BBOX_PARAMS))
    items = [(image, ((0.0, 0.0, 6.0, 6.0, 3), (20.0, 5.0, 30.0, 15.0, 7))), (image, ())]
    ds = data_loader.DetectionDataset(items, shift)
    _, boxes = ds[0]
    # the first box keeps 4 of its 6 px (kept, clipped); the second leaves the 32-px image: gone, its label with it
    assert boxes.tolist() == [[28.0, 0.0, 32.0, 6.0, 3.0]]
    x, y = data_loader.DetectionDataset.collate([ds[1], data_loader.DetectionDataset(items, eval_tf)[0]])
    assert y.shape == (2, 2, 5) and (y[0, :, 4] == -1).all() and y[1, :, 4].tolist() == [3, 7]
    from model.detection.net import build_model

    model = build_model(params, 10).train()
    losses = model(x, y)
    assert all(torch.isfinite(v) for v in losses.values())


# ---------------------------------------------------------------- bad input


def coco_of(data, split):
    return data / split / "annotations.json"


def edit_coco(data, split, change):
    path = coco_of(data, split)
    coco = json.loads(path.read_text())
    change(coco)
    path.write_text(json.dumps(coco))
    return path


BAD = {
    "a box outside the image": (lambda d: edit_coco(d, "train", lambda c: c["annotations"][0].__setitem__(
        "bbox", [20, 20, 30, 5])), "is outside the 32x32 image"),
    "a box of zero area": (lambda d: edit_coco(d, "valid", lambda c: c["annotations"][0].__setitem__(
        "bbox", [2, 2, 0, 5])), "has zero area"),
    "an unknown category": (lambda d: edit_coco(d, "valid", lambda c: c["annotations"][0].__setitem__(
        "category_id", 42)), "unknown category 42"),
    "an annotation for a missing image": (lambda d: edit_coco(d, "train", lambda c: c["annotations"][0].__setitem__(
        "image_id", 9999)), "which is not in 'images'"),
    "a listed image missing on disk": (lambda d: [p.unlink() for p in sorted((d / "valid" / "images").iterdir())[:1]]
                                       and coco_of(d, "valid"), "is not in"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_coco_data_is_one_line_naming_the_file_and_nothing_is_written(case, det_experiment, boxes_dir, tmp_path,
                                                                           capsys):
    change, message = BAD[case]
    data = copy_data(boxes_dir, tmp_path / "data")
    named = change(data)
    exp = det_experiment()
    assert_one_line_error(lambda: run_train(exp, str(data)), capsys, named, message, exp)


def test_a_malformed_yolo_line_is_one_line_naming_the_file(det_experiment, boxes_dir, tmp_path, capsys):
    data = copy_data(boxes_dir, tmp_path / "yolo")
    for split in ("train", "valid", "test"):
        write_yolo(data / split, [str(d) for d in range(10)])
    label = sorted((data / "train" / "labels").iterdir())[0]
    label.write_text(label.read_text() + "3 0.5 0.5\n")
    exp = det_experiment()
    with pytest.raises(SystemExit) as e:
        run_cli(lambda: run_train(exp, str(data)))
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {label}: line ") and "expected 'class cx cy w h'" in err
    assert os.listdir(exp) == ["params.json"]


# ---------------------------------------------------------------- models, loss weights, smoke


@pytest.mark.parametrize("arch", ["fasterrcnn_mobilenet_v3_large_320_fpn", "fasterrcnn_resnet50_fpn",
                                  "fasterrcnn_resnet50_fpn_v2", "retinanet_resnet50_fpn", "retinanet_resnet50_fpn_v2",
                                  "fcos_resnet50_fpn", "ssdlite320_mobilenet_v3_large"])
def test_each_torchvision_detector_builds_offline_trains_a_step_and_detects(arch, tmp_path, det_experiment):
    from model.detection.net import build_model, head_of

    params = load_params(os.path.join(det_experiment(arch=arch, im_sz=64), "params.json"))
    model = build_model(params, 10)
    assert head_of(model) is not None
    x = torch.randn(2, 3, 64, 64)
    y = torch.tensor([[[4.0, 4.0, 30.0, 40.0, 3.0]], [[10.0, 20.0, 50.0, 60.0, 9.0]]])
    losses = model.train()(x, y)
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    with torch.no_grad():
        out = model.eval()(x, y)
    assert out["detections"].shape[0] == 2 and out["detections"].shape[-1] == 6 and out["losses"]


def test_box_loss_weights_weigh_the_terms_and_validation_sums_them_plainly(det_experiment):
    from core.tasks import TASKS

    task = TASKS["detection"]

    terms = {"classification": torch.tensor(2.0), "bbox_regression": torch.tensor(3.0)}
    params = load_params(os.path.join(det_experiment(box_loss_weights={"bbox_regression": 0.5}), "params.json"))
    assert task.build_loss(params, [])(terms, None).item() == 3.5
    assert task.loss_fn({"detections": None, "losses": terms}, None).item() == 5.0
    with pytest.raises(Exception, match="box_loss_weights' must be null or an object of weights >= 0"):
        load_params(os.path.join(det_experiment("bad", box_loss_weights={"classification": -1}), "params.json"))


def test_search_smoke_tries_a_batch_of_every_detection_cell_before_training_them(tmp_path, boxes_dir):
    parent = tmp_path / "search"
    parent.mkdir()
    hyper = {"arch": ["small_fcos", "retinanet_resnet50_fpn"]}
    (parent / "params.json").write_text(json.dumps({**DET_PARAMS, "num_epochs": 1, "hyper_search": hyper}))
    proc = subprocess.run([sys.executable, "search_hyperparams.py", "--parent_dir", str(parent), "--data_dir",
                           boxes_dir, "--smoke"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "smoke test of 2 cell(s)" in proc.stdout and "smoke:" not in proc.stdout  # no cell failed its batch
    for cell in ("arch_small_fcos", "arch_retinanet_resnet50_fpn"):
        assert read(parent / cell / "status.json")["status"] == "completed"
