"""Segmentation end to end on the built digit scenes: train, every output, SIGKILL and resume, evaluate whole-image
and tiled on larger images, a successive-halving search over loss weights, results and plots; the data checks; the
joint augmentation; the image cache."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import (
    ROOT,
    SEG_PARAMS,
    assert_one_line_error,
    assert_same_weights,
    copy_data,
    experiment_maker,
    kill_mid_run_then_resume,
    read,
    run_train,
)
from core.config import load_params
from core.data.loaders import fetch_dataloader
from utils import UserError, run_cli

SEG = SEG_PARAMS
FIGURES = ["train_history.png", "gradients.png", "predictions.png", "confusion_valid_best.png"]


@pytest.fixture
def seg_experiment(tmp_path):
    return experiment_maker(tmp_path, SEG, "seg")


# ---------------------------------------------------------------- end to end


def test_train_writes_every_output_with_pixel_metrics(seg_experiment, scenes_dir):
    exp = seg_experiment()
    assert run_train(exp, scenes_dir) == 0
    rows = read(os.path.join(exp, "history.json"))["epochs"]
    assert list(rows[-1]["val"]) == ["loss", "miou", "dice", "pixel_accuracy"]
    assert all(0 <= rows[-1]["val"][m] <= 1 for m in ("miou", "dice", "pixel_accuracy"))
    assert read(os.path.join(exp, "params_effective.json"))["arch"] == "unet"
    assert read(os.path.join(exp, "history.json"))["classes"][0] == "background"
    for name in FIGURES:
        assert os.path.getsize(os.path.join(exp, name)) > 1000, name
    pipeline = read(os.path.join(exp, "augmentation.json"))["train"]["transform"]["transforms"]
    assert [t["__class_fullname__"] for t in pipeline][:2] == ["Resize", "Affine"]
    assert read(os.path.join(exp, "status.json"))["status"] == "completed"


@pytest.mark.slow
def test_sigkill_then_resume_gives_the_uninterrupted_weights(seg_experiment, scenes_dir):
    params = {"num_epochs": 3, "ema_decay": 0.9, "accumulate_steps": 2, "grad_clip": 1.0}
    whole, killed = seg_experiment("whole", **params), seg_experiment("killed", **params)
    a, b = kill_mid_run_then_resume(whole, killed, scenes_dir)
    assert a["epoch"] == b["epoch"] == 3
    assert_same_weights(a, b)
    assert [r["val"] for r in read(os.path.join(whole, "history.json"))["epochs"]] == \
        [r["val"] for r in read(os.path.join(killed, "history.json"))["epochs"]]


def test_evaluate_whole_images_and_tiles_on_larger_test_images(seg_experiment, scenes_dir, capsys):
    import evaluate

    exp = seg_experiment()
    assert run_train(exp, scenes_dir) == 0
    assert evaluate.main(["--model_dir", exp, "--data_dir", scenes_dir]) == 0
    whole = read(os.path.join(exp, "metrics_test_best_weights.json"))
    assert whole["task"] == "segmentation" and set(whole["per_class"]) == set(read(
        os.path.join(scenes_dir, "classes.json")))
    assert whole["per_class"]["background"]["pixels"] > 0
    report = open(os.path.join(exp, "report_test_best_weights.md")).read()
    table = [line for line in report.splitlines()[4:] if line.startswith("| ") and "n/a" not in line]
    ious = [float(line.split("|")[2]) for line in table]
    assert ious == sorted(ious)  # worst class first
    assert os.path.exists(os.path.join(exp, "confusion_test_best_weights.png"))

    # 48-px test images in 32-px tiles 16 px apart: a second evaluation beside the first, not over it
    assert evaluate.main(["--model_dir", exp, "--data_dir", scenes_dir, "--eval_window", "32", "--eval_stride",
                          "16"]) == 0
    tiled = read(os.path.join(exp, "metrics_test_best_weights_window32_stride16.json"))
    assert tiled["eval_window"] == 32 and tiled["miou"] != whole["miou"]
    assert read(os.path.join(exp, "metrics_test_best_weights.json")) == whole
    assert read(os.path.join(exp, "params_effective.json"))["eval_window"] == 0  # the run's params untouched

    # post-processing: a third evaluation beside the others, its pixel counts those of the cleaned masks
    assert evaluate.main(["--model_dir", exp, "--data_dir", scenes_dir, "--keep_regions", "1"]) == 0
    cleaned = read(os.path.join(exp, "metrics_test_best_weights_regions1.json"))
    assert cleaned["keep_regions"] == 1 and read(os.path.join(exp, "metrics_test_best_weights.json")) == whole
    predicted = lambda m, c: m["per_class"][c]["predicted"]  # noqa: E731
    foreground = [c for c in whole["per_class"] if c != "background"]
    assert sum(predicted(cleaned, c) for c in foreground) <= sum(predicted(whole, c) for c in foreground)
    assert predicted(cleaned, "background") >= predicted(whole, "background")


def test_asha_search_over_loss_weights_then_results_and_plots(tmp_path, scenes_dir):
    parent = tmp_path / "search"
    parent.mkdir()
    hyper = {"loss.dice": [0.0, 0.5, 1.0], "schedule": {"type": "asha", "min_epochs": 1, "reduction_factor": 3}}
    (parent / "params.json").write_text(json.dumps({**SEG, "num_epochs": 3, "hyper_search": hyper}))
    proc = subprocess.run([sys.executable, "search_hyperparams.py", "--parent_dir", str(parent), "--data_dir",
                           scenes_dir, "--workers", "2"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    cells = sorted(d for d in os.listdir(parent) if d.startswith("loss.dice"))
    assert len(cells) == 3
    epochs = sorted(len(read(parent / c / "history.json")["epochs"]) for c in cells)
    assert epochs == [1, 1, 3]  # one cell promoted to the last rung, two pruned at the first
    results = (parent / "results.md").read_text()
    assert "val_miou" in results and "loss.dice" in results
    for name in ("history_plots.png", "rungs.png"):
        assert (parent / name).stat().st_size > 1000
    promoted = next(c for c in cells if len(read(parent / c / "history.json")["epochs"]) == 3)
    first_row = results.splitlines()[2]
    assert first_row.startswith(f"| {promoted} ")  # ranked by the monitored miou: the promoted cell first


def test_overfit_mode_smoke_and_refused_mixing(seg_experiment, scenes_dir, capsys):
    exp = seg_experiment("overfit", overfit_batches=1, num_epochs=30, learning_rate=0.03, scheduler="none",
                         early_stopping={"patience": 0}, monitor_gradients=0)
    assert run_train(exp, scenes_dir) == 0
    check = read(os.path.join(exp, "status.json"))["overfit_check"]
    assert check["train_pixel_accuracy"] > 0.9

    mixed = seg_experiment("mixed", mixup_alpha=0.4)
    with pytest.raises(SystemExit) as e:
        run_cli(lambda: run_train(mixed, scenes_dir))
    assert e.value.code == 2
    assert "key 'mixup_alpha' mixes labels per image" in capsys.readouterr().err
    assert os.listdir(mixed) == ["params.json"]


# ---------------------------------------------------------------- the data


def first(data, split, kind):
    return sorted((data / split / kind).iterdir())[0]


def replace_mask(path, array, mode=None):
    Image.fromarray(array, mode).save(path)


BAD = {
    "image without mask": (lambda d: first(d, "train", "masks").unlink() or first(d, "train", "images"),
                           "no matching file in"),
    "mask without image": (lambda d: first(d, "valid", "images").unlink() or first(d, "valid", "masks"),
                           "no matching file in"),
    "mask of another size": (lambda d: replace_mask(first(d, "train", "masks"), np.zeros((20, 20), np.uint8))
                             or first(d, "train", "masks"), "20x20 pixels, but its image"),
    "rgb mask": (lambda d: replace_mask(first(d, "train", "masks"), np.zeros((32, 32, 3), np.uint8))
                 or first(d, "train", "masks"), "mask is RGB, expected one channel"),
    "index beyond the classes": (lambda d: replace_mask(first(d, "valid", "masks"), np.full((32, 32), 11, np.uint8))
                                 or first(d, "valid", "masks"), "class index 11, but there are 11 classes"),
    "empty split": (lambda d: [p.unlink() for kind in ("images", "masks") for p in (d / "valid" / kind).iterdir()]
                    and d / "valid" / "images", "no images"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_data_is_one_line_naming_the_file_and_nothing_is_written(case, seg_experiment, scenes_dir, tmp_path,
                                                                       capsys):
    change, message = BAD[case]
    data = copy_data(scenes_dir, tmp_path / "data")
    named = change(data)
    exp = seg_experiment()
    assert_one_line_error(lambda: run_train(exp, str(data)), capsys, named, message, exp)


def test_palette_masks_count_as_indices_and_classes_come_from_the_masks_without_classes_json(scenes_dir, tmp_path):
    from model.segmentation import data_loader

    data = copy_data(scenes_dir, tmp_path / "data")
    (data / "classes.json").unlink()
    for mask in (data / "train" / "masks").iterdir():  # as Pascal VOC stores them
        with Image.open(mask) as im:
            indices = np.asarray(im)
        palette = Image.fromarray(indices, "P")
        palette.putpalette([v for k in range(256) for v in (k * 20 % 256, k * 50 % 256, k * 90 % 256)])
        palette.save(mask)
    assert data_loader.find_classes(str(data)) == [str(k) for k in range(11)]
    params = load_params_of({**SEG, "cache_images": 0})
    loaders, classes = fetch_dataloader(["train"], str(data), params, training=False)
    _, y = next(iter(loaders["train"]))
    assert y.max() <= 10 and len(classes) == 11


def load_params_of(d, tmp=None):
    import tempfile

    folder = tempfile.mkdtemp()
    path = os.path.join(folder, "params.json")
    with open(path, "w") as f:
        json.dump(d, f)
    return load_params(path)


def test_geometric_augmentation_moves_the_mask_with_the_image():
    import albumentations as A

    from core.config import Params, resolve
    from model.segmentation import data_loader

    image = np.zeros((32, 32, 3), np.uint8)
    mask = np.zeros((32, 32), np.uint8)
    image[4:12, 20:28] = 255  # a bright square, labelled class 3
    mask[4:12, 20:28] = 3
    params = Params(resolve({**SEG, "augmentation": {"__class_fullname__": "Compose", "transforms": [
        A.to_dict(A.Affine(translate_px={"x": 5, "y": 7}, rotate=30, p=1.0))["transform"],
        A.to_dict(A.HorizontalFlip(p=1.0))["transform"]]}}, "t"))
    train_tf, _ = data_loader.build_transforms(params)
    out = train_tf(image=image, mask=mask)
    x, y = out["image"], out["mask"]
    assert set(np.unique(y.numpy())) <= {0, 3, 255}  # nearest-neighbour: indices stay indices
    bright = x.mean(0) > 1.0
    labelled = y == 3
    assert labelled.sum() > 20 and (bright & labelled).sum() / labelled.sum() > 0.9
    assert not np.array_equal(labelled.numpy(), mask == 3)  # it did move


def test_cached_and_decoded_loaders_give_identical_batches(scenes_dir):
    batches = []
    for cache in (1, 0):
        params = load_params_of({**SEG, "cache_images": cache})
        loaders, _ = fetch_dataloader(["train", "valid"], scenes_dir, params)
        from core.data.loaders import reseed_epoch

        reseed_epoch(loaders["train"], 5)
        batches.append([next(iter(loaders[s])) for s in ("train", "valid")])
        if cache:
            assert loaders["train"].dataset.images is not None
    for (xa, ya), (xb, yb) in zip(*batches):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_a_batch_of_several_sizes_is_padded_with_ignore():
    from model.segmentation.data_loader import SegmentationDataset
    from model.segmentation.metrics import IGNORE

    batch = [(torch.ones(3, 4, 6), torch.zeros(4, 6, dtype=torch.long)),
             (torch.ones(3, 5, 3), torch.ones(5, 3, dtype=torch.long))]
    x, y = SegmentationDataset.collate(batch)
    assert x.shape == (2, 3, 5, 6) and y.shape == (2, 5, 6)
    assert (y[0, 4] == IGNORE).all() and (y[1, :, 3:] == IGNORE).all() and x[1, :, :, 3:].abs().sum() == 0


def test_loss_weights_are_keys_and_bad_terms_are_refused(tmp_path):
    from core.config import resolve

    out = resolve({"task": "segmentation", "loss": {"dice": 0.25}}, "p.json", ["loss.ce=0.75"])
    assert out["loss"] == {"ce": 0.75, "dice": 0.25, "bce": 0.0}
    with pytest.raises(UserError, match="unknown key 'loss.focal'"):
        resolve({"task": "segmentation", "loss": {"focal": 1.0}}, "p.json")
    with pytest.raises(UserError, match="key 'early_stopping.monitor_metric' is accuracy, not a metric of task "
                                        "segmentation"):
        resolve({"task": "segmentation", "early_stopping": {"monitor_metric": "accuracy"}}, "p.json")
    with pytest.raises(UserError, match="key 'task' must be one of classification, segmentation, keypoints, "
                                        "detection, multilabel, got \"tracking\""):
        resolve({"task": "tracking"}, "p.json")


def test_search_smoke_tries_every_segmentation_cell_and_writes_nothing(tmp_path, scenes_dir):
    parent = tmp_path / "search"
    parent.mkdir()
    # a bce term is for one-class masks: on 11 classes that cell fails its first batch, the other passes
    hyper = {"loss.bce": [0.0, 0.5]}
    (parent / "params.json").write_text(json.dumps({**SEG, "num_epochs": 1, "hyper_search": hyper}))
    proc = subprocess.run([sys.executable, "search_hyperparams.py", "--parent_dir", str(parent), "--data_dir",
                           scenes_dir, "--smoke"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "smoke: loss.bce_0.5: UserError: params key 'loss': term 'bce' is for one-class masks" in proc.stdout
    assert "1 failed" in proc.stdout and "loss.bce_0.0" not in proc.stdout.split("smoke test of")[0]
    assert os.listdir(parent) == ["params.json"]
