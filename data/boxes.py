"""Digit boxes: the default offline detection data set, the digit scenes of data/scenes.py in the COCO layout.

    python data/build_dataset.py --task detection      # data/digit_boxes, or let train.py build it on first use

    DST/{train,valid,test}/images/NAME.png
    DST/{train,valid,test}/annotations.json   {"images": [{"id", "file_name", "width", "height"}],
                                               "annotations": [{"id", "image_id", "bbox": [x, y, w, h],
                                                                "category_id", "area", "iscrowd": 0}],
                                               "categories": [{"id": 1, "name": "0"}, ... {"id": 10, "name": "9"}]}

The scenes (1-3 digits each, 64 px) are those of the segmentation set with the same seed, so both tasks learn from
the same pictures; each digit's box is its strokes' tight box, in pixels.

    python data/build_dataset.py --task detection --large   # data/digit_boxes_large: 1024-px scenes, small digits
"""

import json
import os

from data.folders import SPLITS
from data.scenes import MAX_DIGITS, SCALE, build_scene_set, draw_scenes

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


# the large-image set (--large): 1024-px scenes of 4 to 16 digits 16 to 32 px tall, the scale of seed 000's small
# objects on large photos; resized whole to 128 px, a digit is 2 to 4 px: what crops and tiles are for
LARGE = {"size": 1024, "counts": (96, 24, 24), "scale": (16 / 1024, 32 / 1024), "max_digits": 16}
LARGE_DATA = "data/digit_boxes_large"


def build_boxes(dst, size=64, counts=(1200, 300, 300), seed=230, scale=SCALE, max_digits=MAX_DIGITS):
    """Build the digit boxes in dst (never over an existing one). Returns dst."""

    def write_split(folder, split, count, size, pool, scans, labels):
        scenes = draw_scenes(split, count, size, pool, scans, labels, seed, scale, max_digits)
        coco = coco_split(scenes, folder)
        with open(os.path.join(folder, "annotations.json"), "w") as f:
            json.dump(coco, f)

    return build_scene_set(dst, dict.fromkeys(SPLITS, size), counts, seed, write_split)
