"""Training on crops of large images (crop_size): one hand-made scene, its mask, box and points cut by the same crop
for every task that has targets. A resume with crops on: tests/test_detection.py's SIGKILL test trains on crops."""


import numpy as np
import pytest
import torch

import model.tasks  # noqa: F401  (registers the tasks)
from conftest import assert_one_line_error
from core import tasks
from core.config import Params, resolve
from model.segmentation.metrics import IGNORE

H, W, CROP = 160, 240, 64
X0, Y0, X1, Y1 = 150, 40, 180, 70  # the object: a white square, class 1, on black


def scene():
    image = np.zeros((H, W, 3), np.uint8)
    image[Y0:Y1, X0:X1] = 255
    mask = np.zeros((H, W), np.uint8)
    mask[Y0:Y1, X0:X1] = 1
    return image, mask


def train_pipeline(task, mode, seed):
    params = Params(resolve({"task": task, "crop_size": CROP, "crop_mode": mode, "augmentation": "none",
                             "seed": seed}, "p"))
    return tasks.load(task).part("data_loader").build_transforms(params)[0]


def white(x):
    """The object's pixels of a normalised image tensor [3, h, w]: the brightest ones."""
    return x[0] > x[0].min() + 1


@pytest.mark.parametrize("mode", ["objects", "random"])
def test_a_crop_cuts_image_mask_box_and_points_alike(mode):
    image, mask = scene()
    dl = {t: tasks.load(t).part("data_loader") for t in ("segmentation", "detection", "keypoints")}
    corners = [[X0, Y0, 2], [X1 - 1, Y0, 2], [X0, Y1 - 1, 2], [X1 - 1, Y1 - 1, 2]]
    holding = 0
    for seed in range(12):
        seg = dl["segmentation"].Dataset([("s.png", "s_mask.png")], train_pipeline("segmentation", mode, seed),
                                         images=[np.dstack([image, mask])])
        x, m = seg[0]
        assert x.shape[1:] == (CROP, CROP) and m.shape == (CROP, CROP)
        assert torch.equal(white(x), m == 1)  # the mask is cut where the image is
        assert IGNORE not in m.unique().tolist()  # the scene is larger than a crop: nothing padded

        det = dl["detection"].Dataset([("d.png", [[X0, Y0, X1, Y1, 1]])], train_pipeline("detection", mode, seed),
                                      images=[image])
        x, boxes = det[0]
        ys, xs = torch.nonzero(white(x), as_tuple=True)
        if len(xs) >= 0.3 * (X1 - X0) * (Y1 - Y0):  # enough of the box left in the crop: kept, clipped to it
            assert boxes.tolist() == [[xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1, 1]]
        elif not len(xs):
            assert boxes.shape[0] == 0  # the box outside the crop is dropped with its label

        kp = dl["keypoints"].Dataset([("k.png", corners)], train_pipeline("keypoints", mode, seed), images=[image])
        x, points = kp[0]
        inside = white(x)
        for px, py, v, w, h in points.tolist():
            assert (w, h) == (W, H)  # each point keeps its image's size, as without crops
            if v:  # a labelled point lands on the object's corner in the crop
                assert inside[min(round(py * CROP), CROP - 1), min(round(px * CROP), CROP - 1)]
        if inside.sum() == (X1 - X0) * (Y1 - Y0):  # the whole square in the crop: all four corners labelled
            assert (points[:, 2] == 2).all()
        elif not inside.any():  # none of it: none labelled
            assert (points[:, 2] == 0).all()
        holding += bool(m.eq(1).any()) and bool(len(boxes)) and bool((points[:, 2] > 0).any())
    if mode == "objects":  # each task's own crop holds the object every time
        assert holding == 12
    else:  # a 64-px crop of a 240 x 160 scene misses a 30-px square now and then
        assert holding < 12


def test_crop_size_is_refused_where_a_task_cannot_cut_its_targets(tmp_path, digits_dir, capsys):
    import train

    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / "params.json").write_text('{"crop_size": 16}')
    refused = "key 'crop_size' crops each image with its targets; not for classification"
    assert_one_line_error(lambda: train.main(["--model_dir", str(exp), "--data_dir", digits_dir]), capsys,
                          str(exp / "params.json"), refused, str(exp))
    with pytest.raises(Exception, match="must be 0 or >= 8"):
        resolve({"crop_size": 4}, "p")
