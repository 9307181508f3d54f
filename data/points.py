"""Digit points: the default offline keypoint data set, one digit scene each with five named points.

    python data/build_dataset.py --task keypoints      # data/digit_points, or let train.py build it on first use

Each image is a digit scene of data/scenes.py holding exactly one digit; its points are the corners and the centre
of the digit's tight box, so the default experiment has a true answer a model can learn:

    DST/{train,valid,test}/images/NAME.png     RGB
    DST/{train,valid,test}/keypoints.json      {"names": ["top_left", "top_right", "bottom_right", "bottom_left",
                                                          "centre"],
                                                "images": {"NAME.png": [[x, y, v], ...]}}

x, y are in pixels (0..width, 0..height: the corner of the image is 0, 0, the far edge of its last pixel is its
width); v is COCO's visibility flag (0 not labelled, 1 labelled but hidden, 2 visible): here always 2.
"""

import json
import os

from data.folders import SPLITS
from data.scenes import build_scene_set, render_scene, scene_rng

NAMES = ["top_left", "top_right", "bottom_right", "bottom_left", "centre"]
VISIBLE = 2


def box_points(bbox):
    """The five named points of a box [x, y, w, h], as [x, y, visibility]."""
    x, y, w, h = bbox
    return [[x, y, VISIBLE], [x + w, y, VISIBLE], [x + w, y + h, VISIBLE], [x, y + h, VISIBLE],
            [x + w / 2, y + h / 2, VISIBLE]]


def draw_points(split, count, size, pool, scans, labels, seed):
    """Yield (name, image, points) for a split's one-digit scenes."""
    for k in range(count):
        rng = scene_rng(seed, split, k)
        scan = int(pool[int(rng.integers(0, len(pool)))])
        image, _, drawn = render_scene(rng, size, [scans[scan]], [labels[scan]])
        yield f"digit_{k:05d}", image, box_points(drawn[0][1])


def write_points(folder, scenes):
    from PIL import Image

    os.makedirs(os.path.join(folder, "images"))
    lines = []
    for name, image, points in scenes:
        Image.fromarray(image, mode="RGB").save(os.path.join(folder, "images", name + ".png"))
        lines.append(f"    {json.dumps(name + '.png')}: {json.dumps(points)}")
    with open(os.path.join(folder, "keypoints.json"), "w") as f:
        f.write('{"names": ' + json.dumps(NAMES) + ',\n "images": {\n' + ",\n".join(lines) + "\n}}\n")


def build_points(dst, size=64, counts=(1200, 300, 300), seed=230):
    """Build the digit points in dst (never over an existing one). Returns dst."""

    def write_split(folder, split, count, size, pool, scans, labels):
        write_points(folder, draw_points(split, count, size, pool, scans, labels, seed))

    return build_scene_set(dst, dict.fromkeys(SPLITS, size), counts, seed, write_split)
