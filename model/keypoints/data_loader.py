"""Keypoint data: an image and K named (x, y, visibility) points per sample, augmented together by albumentations.

    DATA_DIR/{train,valid,test}/images/NAME.png
    DATA_DIR/{train,valid,test}/keypoints.json   {"names": [K point names, in order],
                                                  "images": {"NAME.png": [[x, y, v], ... K of them]}}
    or DATA_DIR/{split}/keypoints.csv            image,NAME_x,NAME_y,NAME_v,...  (one row per image)

x, y are pixels of the image as stored (0..width, 0..height); v is COCO's flag: 0 not labelled (no loss, no
metric), 1 labelled but hidden, 2 visible (both count). Every split names the same points in the same order: train's
names are the "classes" (n_clas is K).

Geometric augmentation moves the points with the image. A point it pushes out of the image is no longer labelled
for that sample (v becomes 0). The presets do not flip: a mirrored left corner would become a right one, which needs
a symmetry map this template does not keep.
"""

import csv
import json
import math
import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no network here: skip albumentations' version check

import albumentations as A  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from albumentations.pytorch import ToTensorV2  # noqa: E402

from data.folders import IMAGE_EXTS  # noqa: E402
from model.images import (  # noqa: E402
    MEAN,
    STD,
    ItemDataset,
    augmentation_steps,
    image_decoder,
    readable_size,
    size_steps,
)
from utils import UserError, read_json  # noqa: E402

PRESETS = {
    "none": lambda sz: [],
    # small shifts, zooms and turns: the points follow the image
    "light": lambda sz: [A.Affine(scale=(0.9, 1.1), translate_percent=(-0.06, 0.06), rotate=(-10, 10), p=0.8)],
    "standard": lambda sz: [
        A.Affine(scale=(0.8, 1.2), translate_percent=(-0.1, 0.1), rotate=(-20, 20), p=0.9),
        A.ColorJitter(0.2, 0.2, 0.2, 0.05, p=0.5),
    ],
}
# what albumentations 2.0.8's to_dict leaves out of KeypointParams, recorded beside it in augmentation.json
KEYPOINT_PARAMS = {"format": "xy", "remove_invisible": False}
POINTS_BOX = {"format": "pascal_voc", "label_fields": ["box_labels"]}  # crop_mode "objects": where the points are


def build_transforms(params):
    """(train, eval) pipelines over image and points together, both resized to im_sz x im_sz (the model predicts
    points as fractions of its input, so a resize loses nothing); with crop_size, train on crops at the image's
    resolution instead, points outside a crop unlabelled for it (crop_mode "objects": a crop that holds part of the
    box around the labelled points, which the train pipeline carries for that alone)."""
    augment = augmentation_steps(params, PRESETS)
    head = size_steps(params, lambda size: A.AtLeastOneBBoxRandomCrop(size, size))
    resize, tail = [A.Resize(params.im_sz, params.im_sz)], [A.Normalize(mean=MEAN, std=STD), ToTensorV2()]
    boxes = {"bbox_params": A.BboxParams(**POINTS_BOX)} if isinstance(head[-1], A.AtLeastOneBBoxRandomCrop) else {}
    return (A.Compose(head + augment + tail, keypoint_params=A.KeypointParams(**KEYPOINT_PARAMS), seed=params.seed,
                      **boxes),
            A.Compose(resize + tail, keypoint_params=A.KeypointParams(**KEYPOINT_PARAMS), seed=params.seed))


def points_box(points, w, h):
    """[[x0, y0, x1, y1]] around the labelled points (v > 0), inside the image; none when no point is labelled."""
    xy = points[points[:, 2] > 0, :2]
    if not len(xy):
        return np.zeros((0, 4), np.float32)
    x0, y0 = np.clip(xy.min(0), 0, [w - 1, h - 1])
    x1, y1 = np.clip(xy.max(0) + 1, [x0 + 1, y0 + 1], [w, h])
    return np.array([[x0, y0, x1, y1]], np.float32)


def transforms_record(train_tf, eval_tf):
    boxes = {"bbox_params": POINTS_BOX} if "bboxes" in train_tf.processors else {}
    return {"train": A.to_dict(train_tf), "eval": A.to_dict(eval_tf), "keypoint_params": KEYPOINT_PARAMS, **boxes}


def decoder(params):
    """(decode, recipe, row_shape) for the image cache: the image as stored; its points stay in the item."""
    return image_decoder()


# ---------------------------------------------------------------- the files


def points_file(split_dir):
    """The split's keypoints.json or keypoints.csv (not both: which one would be the truth?)."""
    found = [os.path.join(split_dir, f"keypoints.{ext}") for ext in ("json", "csv")
             if os.path.exists(os.path.join(split_dir, f"keypoints.{ext}"))]
    if not found:
        raise UserError(f"{split_dir}: no keypoints.json or keypoints.csv")
    if len(found) > 1:
        raise UserError(f"{found[0]}: and {os.path.basename(found[1])} both exist; keep one")
    return found[0]


def read_points(path):
    """(names, {image file name: [[x, y, v], ...]}) from a keypoints.json or keypoints.csv."""
    if path.endswith(".json"):
        data = read_json(path)
        if not (isinstance(data, dict) and isinstance(data.get("names"), list)
                and isinstance(data.get("images"), dict)):
            raise UserError(f"{path}: expected {{\"names\": [point names], \"images\": {{NAME: [[x, y, v], ...]}}}}")
        return data["names"], data["images"]
    with open(path, newline="", encoding="utf-8-sig") as f:  # utf-8-sig: Excel's "CSV UTF-8" starts with a BOM
        rows = list(csv.reader(f))
    header = rows[0] if rows else []
    names = [h[:-2] for h in header[1::3]]
    if not header or header[0] != "image" or (len(header) - 1) % 3 or header[1:] != [
            f"{n}_{c}" for n in names for c in "xyv"]:
        raise UserError(f"{path}: header must be image,NAME_x,NAME_y,NAME_v,... (one triple per point)")
    out = {}
    for line, row in enumerate(rows[1:], start=2):
        try:
            values = [float(v) for v in row[1:]]
        except ValueError:
            raise UserError(f"{path}: line {line}: not numbers") from None
        if len(values) != 3 * len(names):
            raise UserError(f"{path}: line {line}: {len(values)} values, expected {3 * len(names)}")
        out[row[0]] = [values[i:i + 3] for i in range(0, len(values), 3)]
    return names, out


def check_names(names, path):
    if not (names and all(isinstance(n, str) and n for n in names) and len(set(names)) == len(names)):
        raise UserError(f"{path}: 'names' must be a list of distinct point names")


def find_classes(data_dir):
    """The point names of the training split, in order."""
    path = points_file(os.path.join(data_dir, "train"))
    names, _ = read_points(path)
    check_names(names, path)
    return names


def scan_split(data_dir, split, classes):
    """[(image path, points as a tuple of (x, y, v))] of DATA_DIR/split, images sorted by name; an entry without
    its image, an image without an entry, or points named otherwise than train's are errors."""
    split_dir = os.path.join(data_dir, split)
    folder = os.path.join(split_dir, "images")
    if not os.path.isdir(folder):
        raise UserError(f"{split_dir}: no images/ folder (expected {split}/images/NAME.png beside "
                        f"{split}/keypoints.json)")
    path = points_file(split_dir)
    names, table = read_points(path)
    check_names(names, path)
    if classes is not None and names != classes:
        raise UserError(f"{path}: points {names}, but train names {classes} (the same points, in the same order)")
    images = sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTS))
    for name in sorted(set(table) - set(images)):
        raise UserError(f"{path}: points for {name}, which is not in {folder}/")
    for name in images:
        if name not in table:
            raise UserError(f"{os.path.join(folder, name)}: no points in {path}")
    if not images:
        raise UserError(f"{folder}: no images")
    return [(os.path.join(folder, name), tuple(unlabelled_at_origin(p) for p in table[name])) for name in images]


def unlabelled_at_origin(p):
    """A point as a tuple; one that is not labelled (v 0) at (0, 0), whatever stood there: DeepLabCut and others
    write an unlabelled point as nan, nan, 0 (or null), which would make the loss nan although it is masked out."""
    if isinstance(p, list) and len(p) == 3 and p[2] == 0:
        return (0.0, 0.0, 0)
    return tuple(p) if isinstance(p, list) else p


def item_files(item):
    """The files a sample is read from (what the image cache stamps): its image, and the split's points file."""
    split_dir = os.path.dirname(os.path.dirname(item[0]))
    return [item[0], points_file(split_dir)]


def check_item(item, classes):
    """The image is readable; it has K points, each [x, y, v] with v in 0, 1, 2 and a labelled point inside."""
    image, points = item
    w, h = readable_size(image)
    where = f"{image}: points"
    if len(points) != len(classes):
        raise UserError(f"{where}: {len(points)} points, expected {len(classes)} ({', '.join(classes)})")
    for name, p in zip(classes, points):
        if not (isinstance(p, (list, tuple)) and len(p) == 3 and all(isinstance(v, (int, float)) for v in p)):
            raise UserError(f"{where}: '{name}' is {json.dumps(p)}, expected [x, y, visibility]")
        x, y, v = p
        if v not in (0, 1, 2):
            raise UserError(f"{where}: '{name}' has visibility {v}, expected 0 (not labelled), 1 or 2")
        if not (math.isfinite(x) and math.isfinite(y)):
            raise UserError(f"{where}: '{name}' is labelled (visibility {v:g}) but at ({x}, {y}); give its position, "
                            f"or visibility 0 if it is not labelled")
        if v and not (0 <= x <= w and 0 <= y <= h):
            raise UserError(f"{where}: '{name}' at ({x}, {y}) is outside the {w}x{h} image")


def class_counts(dataset, n_clas):
    """Labelled samples per point (what class_weights would weigh by; check_params refuses class weights)."""
    return [sum(1 for points in dataset.targets if points[k][2] > 0) for k in range(n_clas)]


class KeypointDataset(ItemDataset, torch.utils.data.Dataset):
    """(image tensor [3,S,S], target [K,5]) per sample, S = im_sz: each point's x and y as fractions of the image
    (0..1), its visibility (0 after augmentation pushed it out), and the stored image's width and height, so errors
    are measured in the pixels of the image as stored. targets: each image's points as stored."""

    def __getitem__(self, i):
        image = self.image(i)
        h, w = image.shape[:2]
        points = np.asarray(self.targets[i], dtype=np.float32).reshape(-1, 3)
        box = {}
        if "bboxes" in self.transform.processors:  # crops that hold the points (crop_mode "objects")
            box["bboxes"] = points_box(points, w, h)
            box["box_labels"] = [0] * len(box["bboxes"])
        out = self.transform(image=image, keypoints=points[:, :2], **box)
        side_h, side_w = out["image"].shape[1:]
        xy = np.asarray(out["keypoints"], dtype=np.float32).reshape(-1, 2) / np.array([side_w, side_h], np.float32)
        inside = (xy >= 0).all(1) & (xy <= 1).all(1)
        visible = np.where(inside, points[:, 2], 0).astype(np.float32)
        size = np.broadcast_to(np.array([w, h], np.float32), (len(points), 2))
        return out["image"], torch.from_numpy(np.column_stack([xy, visible, size]))


Dataset = KeypointDataset
