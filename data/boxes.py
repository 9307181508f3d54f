"""Digit boxes: the default offline detection data set, the digit scenes of data/scenes.py in the COCO layout.

    python data/build_dataset.py --task detection      # data/digit_boxes, or let train.py build it on first use

    DST/{train,valid,test}/images/NAME.png
    DST/{train,valid,test}/annotations.json   {"images": [{"id", "file_name", "width", "height"}],
                                               "annotations": [{"id", "image_id", "bbox": [x, y, w, h],
                                                                "category_id", "area", "iscrowd": 0}],
                                               "categories": [{"id": 1, "name": "0"}, ... {"id": 10, "name": "9"}]}

The scenes (1-3 digits each, 64 px) are those of the segmentation set with the same seed, so both tasks learn from
the same pictures; each digit's box is its strokes' tight box, in pixels.
"""

import json
import os

from data.folders import SPLITS
from data.scenes import build_scene_set, draw_scenes

CATEGORIES = [{"id": d + 1, "name": str(d)} for d in range(10)]


def coco_split(scenes, folder):
    """Write each scene's image into folder/images/ and return the split's COCO dictionary."""
    from PIL import Image

    os.makedirs(os.path.join(folder, "images"))
    images, annotations = [], []
    for image_id, (name, image, _, boxes) in enumerate(scenes, start=1):
        Image.fromarray(image, mode="RGB").save(os.path.join(folder, "images", name + ".png"))
        images.append({"id": image_id, "file_name": name + ".png", "width": image.shape[1],
                       "height": image.shape[0]})
        for box in boxes:
            x, y, w, h = box["bbox"]
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "bbox": [x, y, w, h],
                                "category_id": box["category_id"], "area": w * h, "iscrowd": 0})
    return {"images": images, "annotations": annotations, "categories": CATEGORIES}


def build_boxes(dst, size=64, counts=(1200, 300, 300), seed=230):
    """Build the digit boxes in dst (never over an existing one). Returns dst."""

    def write_split(folder, split, count, size, pool, scans, labels):
        coco = coco_split(draw_scenes(split, count, size, pool, scans, labels, seed), folder)
        with open(os.path.join(folder, "annotations.json"), "w") as f:
            json.dump(coco, f)

    return build_scene_set(dst, dict.fromkeys(SPLITS, size), counts, seed, write_split)
