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

from data.folders import SPLITS, build_in_place
from data.scenes import draw_scenes, source_splits
from utils import UserError

DEFAULT_BOXES = os.path.join("data", "digit_boxes")
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


def build_boxes(dst=DEFAULT_BOXES, size=64, counts=(1200, 300, 300), seed=230):
    """Build the digit boxes in dst (never over an existing one). Returns dst."""
    from sklearn.datasets import load_digits

    if os.path.exists(dst):
        raise UserError(f"{dst}: already exists; remove it first to rebuild")
    if size < 8:
        raise UserError(f"scene size {size}: must be >= 8 pixels")
    digits = load_digits()
    labels = [int(y) for y in digits.target]
    pools = source_splits(labels, seed)

    def fill(tmp):
        for split, count in zip(SPLITS, counts):
            folder = os.path.join(tmp, split)
            coco = coco_split(draw_scenes(split, count, size, pools[split], digits.images, labels, seed), folder)
            with open(os.path.join(folder, "annotations.json"), "w") as f:
                json.dump(coco, f)

    return build_in_place(dst, fill)
