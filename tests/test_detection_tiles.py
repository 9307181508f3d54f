"""Tiled detection (model/detection/tiles.py, eval_window): boxes mapped back into the image and merged across tiles
(checked with a stand-in detector that boxes bright squares), one tile covering the image giving exactly the
whole-image evaluation, small objects of a 4x-im_sz scene found in tiles that resizing to im_sz misses, the export
seeing the same tiles, validation in tiles during training, and bad input."""

import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import DET_PARAMS, read, run_train
from core import exporting
from model.detection.net import as_padded
from model.detection.tiles import (
    WholeImages,
    image_sizes,
    merge,
    tile_corners,
    tiled_predictor,
    whole_images,
)
from utils import run_cli


class SquareFinder(torch.nn.Module):
    """A stand-in detector: in each input, one box per 8-connected region brighter than 0.5 in channel 0, scored
    0.9, its label 1 + round(10 x channel 1 there): the detections [B,M,6] of a Detector in eval mode."""

    def forward(self, x, targets=None):
        from scipy import ndimage

        found = []
        for image in x:
            regions, _ = ndimage.label((image[0] > 0.5).numpy(), structure=np.ones((3, 3)))
            spans = ndimage.find_objects(regions)
            found.append({"boxes": torch.tensor([[s[1].start, s[0].start, s[1].stop, s[0].stop] for s in spans],
                                                dtype=torch.float32).reshape(-1, 4),
                          "scores": torch.full((len(spans),), 0.9),
                          "labels": torch.tensor([1 + round(10 * float(image[1][s].max())) for s in spans],
                                                 dtype=torch.long)})
        return as_padded(found, x.device)


def squares(h, w, *rects):
    """A [3,h,w] image, black but for squares (x1, y1, x2, y2, class k: channel 1 = k / 10)."""
    x = torch.zeros(3, h, w)
    for x1, y1, x2, y2, k in rects:
        x[0, y1:y2, x1:x2], x[1, y1:y2, x1:x2] = 1.0, k / 10
    return x


def boxes_of(detections):
    """[[x1, y1, x2, y2, label]] of one image's padded detections, sorted."""
    det = detections[detections[:, 5] >= 0]
    return sorted([*b[:4].tolist(), int(b[5])] for b in det)


# ---------------------------------------------------------------- the tiles and their merging, model-free


def test_tiles_cover_the_image_flush_with_its_border_and_one_tile_covers_a_small_image():
    assert tile_corners(64, 64, 32, 16) == [(y, x) for y in (0, 16, 32) for x in (0, 16, 32)]
    assert tile_corners(70, 40, 32, 24) == [(y, x) for y in (0, 24, 38) for x in (0, 8)]  # last flush: 70-32, 40-32
    assert tile_corners(32, 32, 32, 16) == tile_corners(20, 30, 48, 24) == [(0, 0)]


def test_boxes_are_mapped_back_and_a_box_cut_by_a_tile_border_gives_way_to_the_whole_one():
    # A lies whole in four tiles (duplicates: NMS); B crosses the border x=48 of the tiles at x=16 and y=16's top
    # border: the cut parts' boxes ([40, 8, 48, 20] has IoU 0.5 with B's, which NMS alone would keep)
    x = squares(64, 64, (20, 20, 30, 30, 2), (40, 8, 56, 20, 2))[None]
    predict = tiled_predictor(32, 16, 32, per_call=4)
    assert boxes_of(predict(SquareFinder(), x)[0]) == [[20, 20, 30, 30, 3], [40, 8, 56, 20, 3]]
    # tiles resized to the model's input (here halved) keep the boxes in the image's pixels
    halved = boxes_of(tiled_predictor(32, 16, 16, per_call=64)(SquareFinder(), x)[0])
    assert len(halved) == 2 and np.abs(np.array(halved) - [[20, 20, 30, 30, 3], [40, 8, 56, 20, 3]]).max() <= 2


def test_merging_is_class_wise_and_capped():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 0, 11, 10], [0, 0, 10, 10], [20, 20, 30, 30.0]])
    scores, labels = torch.tensor([0.9, 0.8, 0.7, 0.6]), torch.tensor([1, 1, 2, 1])
    tiles, cut = torch.tensor([0, 1, 1, 1]), torch.zeros(4, dtype=torch.bool)
    assert merge(boxes, scores, labels, tiles, cut, 0.5, 10).tolist() == [0, 2, 3]  # the other class stays
    assert merge(boxes, scores, labels, tiles, cut, 0.5, 2).tolist() == [0, 2]


def test_a_batch_of_several_sizes_is_padded_with_nan_and_each_image_predicted_as_alone():
    a = squares(40, 64, (4, 4, 12, 12, 1), (50, 30, 60, 40, 5))
    b = squares(64, 48, (30, 50, 40, 60, 7))
    x, targets = WholeImages.collate([(a, torch.zeros(0, 5)), (b, torch.tensor([[1.0, 2, 3, 4, 1]]))])
    assert x.shape == (2, 3, 64, 64) and image_sizes(x) == [(40, 64), (64, 48)] and targets.shape == (2, 1, 5)
    predict = tiled_predictor(32, 16, 32, per_call=5)
    both = predict(SquareFinder(), x)
    for k, image in enumerate((a, b)):
        assert boxes_of(both[k]) == boxes_of(predict(SquareFinder(), image[None])[0])
    assert boxes_of(both[1]) == [[30, 50, 40, 60, 8]]


def test_the_loss_sees_each_image_resized_to_the_input_its_boxes_scaled_alike():
    x = torch.full((2, 3, 32, 32), float("nan"))
    x[0, :, :16, :24], x[1] = 1.0, 2.0
    sizes = image_sizes(x)
    targets = torch.tensor([[[2.0, 4, 12, 8, 3]], [[-1.0, -1, -1, -1, -1]]])
    images, scaled = whole_images(torch.nan_to_num(x), sizes, targets, 8)
    assert images.shape == (2, 3, 8, 8) and torch.equal(images[0], torch.ones(3, 8, 8))
    assert scaled[0, 0].tolist() == pytest.approx([2 / 3, 2, 4, 4, 3]) and scaled[1, 0, 4] == -1


# ---------------------------------------------------------------- a trained detector


def copied(trained_run, tmp_path):
    src, data_dir = trained_run("detection")
    return shutil.copytree(src, str(tmp_path / "det")), data_dir


def test_one_tile_covering_the_image_is_exactly_the_whole_image_evaluation(trained_run):
    import evaluate

    folder, data_dir = trained_run("detection")  # read only: evaluate_run writes nothing
    results = {}
    for overrides in ((), ("eval_window=32",)):  # the 32-px test scenes: one tile each (stride 16 by default)
        run = exporting.load_trained(folder, "best", None, overrides)
        results[overrides] = evaluate.evaluate_run(*run, data_dir, "test")
    (whole, whole_details, *_), (tiled, tiled_details, *_) = results.values()
    assert tiled["eval_window"] == 32
    for name in ("loss", "map", "map_50", "map_75", "mar_100"):
        assert tiled[name] == whole[name], name
    assert tiled["per_class"] == whole["per_class"]
    found = [len(d[d[:, 5] >= 0]) for d in whole_details["detections"]]
    assert sum(found) > 16  # boxes to compare: the model, one epoch in, finds plenty
    for a, b in zip(whole_details["detections"], tiled_details["detections"]):
        assert boxes_of(a) == boxes_of(b)


@pytest.fixture(scope="module")
def scenes(trained_run, tmp_path_factory):
    """(folder of 128-px scenes, {name: true boxes}): the detection set's 32-px training images pasted 4 x 4 at
    their own scale, so a scene is 4 x im_sz wide, its digits as large as training saw them."""
    from model.detection.data_loader import find_classes, scan_split

    _, data_dir = trained_run("detection")
    items = scan_split(data_dir, "train", find_classes(data_dir))
    folder, truth = tmp_path_factory.mktemp("scenes"), {}
    for s in range(len(items) // 16):
        canvas, boxes = np.zeros((128, 128, 3), np.uint8), []
        for k, (path, image_boxes) in enumerate(items[16 * s:16 * s + 16]):
            y, x = 32 * (k // 4), 32 * (k % 4)
            canvas[y:y + 32, x:x + 32] = np.asarray(Image.open(path).convert("RGB"))
            boxes += [(x1 + x, y1 + y, x2 + x, y2 + y, int(label) - 1) for x1, y1, x2, y2, label in image_boxes]
        Image.fromarray(canvas).save(folder / f"scene{s}.png")
        truth[f"scene{s}.png"] = boxes
    return str(folder), truth


def recall(out_dir, truth, best=None, any_class=False):
    """The share of true boxes with a predicted box of their class (any_class: of any) at IoU >= 0.5, among each
    image's `best` boxes by score (None: all; predict.py's detections.json)."""
    from torchvision.ops import box_iou

    coco = read(os.path.join(out_dir, "detections.json"))
    names = {im["id"]: os.path.basename(im["file_name"]) for im in coco["images"]}
    found = 0
    for name, boxes in truth.items():
        dets = sorted((a for a in coco["annotations"] if names[a["image_id"]] == name), key=lambda a: -a["score"])
        if dets[:best]:
            pred = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in dets[:best])])
            iou = box_iou(torch.tensor([b[:4] for b in boxes], dtype=torch.float32), pred)
            same = torch.tensor([b[4] for b in boxes])[:, None] == torch.tensor([a["category_id"] - 1
                                                                                 for a in dets[:best]])
            found += int(((iou if any_class else iou * same).max(1).values >= 0.5).sum())
    return found / sum(len(b) for b in truth.values())


def test_tiles_find_the_small_objects_that_resizing_a_large_scene_misses(trained_run, scenes, tmp_path):
    import predict

    folder, _ = trained_run("detection")
    source, truth = scenes
    assert len(truth) == 6 and sum(len(b) for b in truth.values()) > 100
    shares = {}
    for name, flags in (("resized", ()), ("tiled", ("--eval_window", "32"))):  # tiles of the training input's size
        out = str(tmp_path / name)
        assert predict.main(["--model_dir", folder, "--source", source, "--out", out, *flags]) == 0
        shares[name] = recall(out, truth), recall(out, truth, best=50, any_class=True)
    # measured, with the right class: 0.20 in tiles (37 of 182 digits, one epoch of training), 0.0 resized (the
    # digits shrink to 3-5 px); and not for keeping more boxes (up to 50 a window): among only the best 50 of each
    # scene, as many as resizing keeps, tiles still place a box on 0.20 of the digits (any class), resizing on none
    assert shares["tiled"][0] >= 0.1 and shares["resized"][0] <= 0.02, shares
    assert shares["tiled"][1] >= 0.1 and shares["resized"][1] <= 0.02, shares


@pytest.mark.slow
def test_the_export_sees_the_same_tiles(trained_run, scenes, tmp_path, capsys):
    import evaluate
    import export
    import predict

    folder, data_dir = copied(trained_run, tmp_path)
    for fmt in exporting.FORMATS:
        assert export.main(["--model_dir", folder, "--format", fmt, "--data_dir", data_dir]) == 0
    source = str(tmp_path / "two")
    os.makedirs(source)
    for name in ("scene0.png", "scene1.png"):
        shutil.copy(os.path.join(scenes[0], name), source)
    boxes = {}
    for flags in ((), ("--exported", "onnx"), ("--exported", "pt2")):
        out = str(tmp_path / (flags[1] if flags else "eager"))
        args = ["--model_dir", folder, "--source", source, "--out", out, "--eval_window", "32", *flags]
        assert predict.main(args) == 0
        boxes[flags] = read(os.path.join(out, "detections.json"))["annotations"]
    eager = boxes[()]
    assert len(eager) > 100
    for flags in boxes:
        assert [a["category_id"] for a in boxes[flags]] == [a["category_id"] for a in eager], flags
        diff = np.abs(np.array([a["bbox"] for a in boxes[flags]]) - np.array([a["bbox"] for a in eager])).max()
        assert diff <= 1e-3, (flags, diff)  # the export's parity tolerance (docs/export.md)
    # 16-px tiles of the 32-px test scenes, each enlarged to the 32-px input: nine tiles an image, merged
    metrics = {}
    for flags in ((), ("--exported", "onnx")):
        assert evaluate.main(["--model_dir", folder, "--data_dir", data_dir, "--eval_window", "16", *flags]) == 0
        name = f"metrics_test_best_weights_window16{'_onnx' if flags else ''}.json"
        metrics[flags] = read(os.path.join(folder, name))
    for name in ("map", "map_50", "map_75", "mar_100"):
        assert abs(metrics[()][name] - metrics[("--exported", "onnx")][name]) <= 1e-4, name


def test_validation_in_tiles_during_training_gives_the_whole_image_validation(trained_run, tmp_path):
    """The fixture's very run with eval_window 32 in its params: one tile an image, so the same validation (and
    the gallery drawn from boxes in the images' own pixels)."""
    src, data_dir = trained_run("detection")
    folder = tmp_path / "windowed"
    folder.mkdir()
    (folder / "params.json").write_text(json.dumps({**DET_PARAMS, "num_epochs": 1, "eval_window": 32}))
    assert run_train(str(folder), data_dir) == 0
    tiled, whole = (read(os.path.join(d, "history.json"))["epochs"][-1]["val"] for d in (folder, src))
    for name in ("loss", "map", "map_50", "mar_100"):
        assert tiled[name] == pytest.approx(whole[name], rel=1e-6, abs=1e-9), name
    assert os.path.getsize(folder / "predictions.png") > 1000


def test_bad_windows_are_one_line_errors(trained_run, capsys):
    import evaluate
    import predict

    folder, data_dir = trained_run("detection")
    for script, args, says in (
        (evaluate, ["--data_dir", data_dir, "--eval_window", "32", "--eval_stride", "40"], "more than eval_window"),
        (evaluate, ["--data_dir", data_dir, "--eval_window", "-1"], "eval_window"),
        (predict, ["--source", data_dir, "--eval_window", "16", "--eval_stride", "17"], "more than eval_window"),
    ):
        with pytest.raises(SystemExit) as e:
            run_cli(lambda main=script.main, args=args: main(["--model_dir", folder, *args]))
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and len(err) == 1 and says in err[0], err
