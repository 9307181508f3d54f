"""Detection data: an image and its boxes per sample, augmented together by albumentations. Two layouts:

    COCO  DATA_DIR/{train,valid,test}/images/*  +  DATA_DIR/{split}/annotations.json
          ("images" with file_name, width, height; "annotations" with image_id, bbox [x, y, w, h] in pixels and
          category_id; "categories" with id and name)
    YOLO  DATA_DIR/{split}/images/NAME.jpg  +  DATA_DIR/{split}/labels/NAME.txt, one "class cx cy w h" line per
          box, normalised to 0..1; class names in DATA_DIR/classes.json or DATA_DIR/data.yaml ("names")

The classes are train's categories in id order (YOLO: in index order); the model's label of class k is k + 1, 0
being the background. An image without boxes is a background image: valid, it teaches what is not an object.
Augmentation moves the boxes with the image; a box cropped to less than MIN_VISIBILITY of itself is dropped with its
label. The presets do not flip digits (a mirrored 3 is no digit); "standard" does, for photos.
"""

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
    image_size,
    readable_size,
    size_steps,
)
from utils import UserError, read_json, short  # noqa: E402

PRESETS = {
    "none": lambda sz: [],
    "light": lambda sz: [A.Affine(scale=(0.9, 1.1), translate_percent=(-0.06, 0.06), p=0.8)],
    "standard": lambda sz: [A.HorizontalFlip(), A.Affine(scale=(0.75, 1.25), translate_percent=(-0.1, 0.1), p=0.8),
                            A.ColorJitter(0.2, 0.2, 0.2, 0.05, p=0.5)],
}
MIN_VISIBILITY = 0.3
# albumentations 2.0.8's to_dict leaves some BboxParams fields out: augmentation.json records them beside it
BBOX_PARAMS = {"format": "pascal_voc", "label_fields": ["labels"], "min_visibility": MIN_VISIBILITY}
EPS = 1e-3  # pixels: a box edge this far past the image border is rounding, not an error


def build_transforms(params):
    """(train, eval) pipelines over image and boxes together, both resized to im_sz x im_sz; with crop_size, train
    on crops at the image's resolution instead (boxes clipped to the crop, those left with less than MIN_VISIBILITY
    of themselves dropped; crop_mode "objects": a crop holding at least one box)."""
    augment = augmentation_steps(params, PRESETS)
    resize, tail = [A.Resize(params.im_sz, params.im_sz)], [A.Normalize(mean=MEAN, std=STD), ToTensorV2()]
    head = size_steps(params, lambda size: A.AtLeastOneBBoxRandomCrop(size, size))
    return tuple(A.Compose(steps, bbox_params=A.BboxParams(**BBOX_PARAMS), seed=params.seed)
                 for steps in (head + augment + tail, resize + tail))


def input_side(transform):
    """The side of the square the pipeline resizes to (im_sz): what the detections' pixels are pixels of."""
    return next(t.height for t in transform.transforms if isinstance(t, A.Resize))


def transforms_record(train_tf, eval_tf):
    return {"train": A.to_dict(train_tf), "eval": A.to_dict(eval_tf), "bbox_params": BBOX_PARAMS}


def decoder(params):
    """(decode, recipe, row_shape) for the image cache: the image as stored; its boxes stay in the item."""
    return image_decoder()


# ---------------------------------------------------------------- the folders


def coco_categories(path):
    """[(category id, name)] of an annotations.json, in id order."""
    data = read_json(path)
    cats = data.get("categories") if isinstance(data, dict) else None
    if not (isinstance(cats, list) and cats and all(isinstance(c, dict) and isinstance(c.get("id"), int)
                                                    and isinstance(c.get("name"), str) for c in cats)):
        raise UserError(f"{path}: expected a 'categories' list of {{\"id\": int, \"name\": str}}")
    return sorted((c["id"], c["name"]) for c in cats)


def find_classes(data_dir):
    """Train's category names: from its annotations.json, else classes.json or data.yaml (YOLO)."""
    coco = os.path.join(data_dir, "train", "annotations.json")
    if os.path.exists(coco):
        return [name for _, name in coco_categories(coco)]
    for name in ("classes.json", "data.yaml"):
        path = os.path.join(data_dir, name)
        if os.path.exists(path):
            return yolo_names(path)
    raise UserError(f"{data_dir}: no train/annotations.json (COCO), and no classes.json or data.yaml naming the "
                    f"classes of a YOLO layout")


def yolo_names(path):
    """The class names of classes.json (a list) or data.yaml ("names": a list, or {index: name} as Ultralytics
    writes it, indices as numbers or quoted, "0" to "11" in index order, not as strings sort)."""
    names = read_json(path) if path.endswith(".json") else read_yaml(path).get("names")
    if isinstance(names, dict):
        index = {int(k) if isinstance(k, int) or (isinstance(k, str) and k.isdigit()) else None: v
                 for k, v in names.items()}
        if None in index or sorted(index) != list(range(len(index))):
            raise UserError(f"{path}: 'names' maps {short(sorted(map(str, names)))}; expected the class indices "
                            f"0 to {len(names) - 1}")
        names = [index[k] for k in range(len(index))]
    if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
        raise UserError(f"{path}: expected a list of class names")
    return names


def read_yaml(path):
    """A YAML file's top-level mapping, or a one-line error naming the file."""
    import yaml

    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise UserError(f"{path}: invalid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping (names: ...), not a {type(data).__name__}")
    return data


def scan_split(data_dir, split, classes):
    """[(image path, boxes as a tuple of (x1, y1, x2, y2, label))] of DATA_DIR/split, in pixels."""
    split_dir = os.path.join(data_dir, split)
    folder = os.path.join(split_dir, "images")
    if not os.path.isdir(folder):
        raise UserError(f"{split_dir}: no images/ folder (expected {split}/images/ with annotations.json or labels/)")
    if os.path.exists(os.path.join(split_dir, "annotations.json")):
        items = scan_coco(split_dir, classes)
    elif os.path.isdir(os.path.join(split_dir, "labels")):
        items = scan_yolo(split_dir, classes)
    else:
        raise UserError(f"{split_dir}: no annotations.json (COCO) or labels/ folder (YOLO)")
    if not items:
        raise UserError(f"{folder}: no images")
    return items


def check_box(box, w, h, where):
    """The box clipped to the image and kept to 1/100 pixel: a YOLO file (boxes as fractions, usually 6 decimals)
    and the COCO file it was converted from then give the very same boxes, so the two layouts train alike."""
    x1, y1, x2, y2 = (round(v, 2) for v in box)
    if not (x2 > x1 and y2 > y1):
        raise UserError(f"{where}: box {[round(v, 2) for v in box]} has zero area")
    if x1 < -EPS or y1 < -EPS or x2 > w + EPS or y2 > h + EPS:
        raise UserError(f"{where}: box {[round(v, 2) for v in box]} is outside the {w}x{h} image")
    return max(x1, 0.0), max(y1, 0.0), min(x2, float(w)), min(y2, float(h))


def scan_coco(split_dir, classes):
    path = os.path.join(split_dir, "annotations.json")
    cats = coco_categories(path)
    if classes is not None and [n for _, n in cats] != classes:
        raise UserError(f"{path}: categories {[n for _, n in cats]}, but train has {classes}")
    label = {cid: k + 1 for k, (cid, _) in enumerate(cats)}
    data = read_json(path)
    images = coco_images(path, data, os.path.join(split_dir, "images"))
    boxes = {i: [] for i in images}
    for ann in data.get("annotations", []):
        if not isinstance(ann, dict) or ann.get("image_id") not in images:
            raise UserError(f"{path}: annotation {short(ann.get('id') if isinstance(ann, dict) else ann)} is for "
                            f"image {short(ann.get('image_id') if isinstance(ann, dict) else None)}, which is not in "
                            f"'images'")
        if ann.get("category_id") not in label:
            raise UserError(f"{path}: annotation {ann.get('id')} has unknown category {ann.get('category_id')}")
        im = images[ann["image_id"]]
        x, y, w, h = coco_bbox(path, ann)
        box = check_box((x, y, x + w, y + h), im["width"], im["height"], f"{path}: {im['file_name']}")
        boxes[ann["image_id"]].append((*box, label[ann["category_id"]]))
    listed = {im["file_name"] for im in images.values()}
    on_disk = {f for f in os.listdir(os.path.join(split_dir, "images")) if f.lower().endswith(IMAGE_EXTS)}
    for name in sorted(listed - on_disk):
        raise UserError(f"{path}: image {name} is not in {os.path.join(split_dir, 'images')}/")
    for name in sorted(on_disk - listed):
        raise UserError(f"{os.path.join(split_dir, 'images', name)}: not in {path} (list it without annotations to "
                        f"use it as a background image)")
    order = sorted(images, key=lambda i: images[i]["file_name"])
    return [(os.path.join(split_dir, "images", images[i]["file_name"]), tuple(boxes[i])) for i in order]


def coco_images(path, data, folder):
    """{image id: image} of an annotations.json: ids used once, each with a file name; a missing width or height
    is read from the image file (COCO requires them, but hand-made files often leave them out)."""
    images = {}
    for im in data.get("images", []) if isinstance(data, dict) else []:
        if not (isinstance(im, dict) and isinstance(im.get("id"), int) and isinstance(im.get("file_name"), str)):
            raise UserError(f"{path}: each of 'images' needs an int 'id' and a 'file_name', got {short(im)}")
        if im["id"] in images:
            raise UserError(f"{path}: image id {im['id']} is given twice ({images[im['id']]['file_name']} and "
                            f"{im['file_name']})")
        if not all(isinstance(im.get(k), (int, float)) and im[k] > 0 for k in ("width", "height")):
            im = dict(im, **dict(zip(("width", "height"), readable_size(os.path.join(folder, im["file_name"])))))
        images[im["id"]] = im
    return images


def coco_bbox(path, ann):
    """An annotation's [x, y, width, height], or a one-line error naming it."""
    bbox = ann.get("bbox")
    if isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox):
        return bbox
    polygon = " (it has a segmentation but no box: add its bbox)" if bbox is None and "segmentation" in ann else ""
    raise UserError(f"{path}: annotation {short(ann.get('id'))}: 'bbox' must be [x, y, width, height], got "
                    f"{short(bbox)}{polygon}")


def scan_yolo(split_dir, classes):
    folder, labels = os.path.join(split_dir, "images"), os.path.join(split_dir, "labels")
    images = {os.path.splitext(f)[0]: f for f in sorted(os.listdir(folder)) if f.lower().endswith(IMAGE_EXTS)}
    for name in sorted(os.listdir(labels)):
        if name.endswith(".txt") and name[:-4] not in images:
            raise UserError(f"{os.path.join(labels, name)}: labels for an image that is not in {folder}/")
    items = []
    for stem, name in images.items():
        image, path = os.path.join(folder, name), os.path.join(labels, stem + ".txt")
        w, h = image_size(image)
        boxes = []
        for n, line in enumerate(open(path).read().splitlines() if os.path.exists(path) else [], start=1):
            if not line.strip():
                continue
            parts = line.split()
            try:
                k, cx, cy, bw, bh = int(parts[0]), *(float(v) for v in parts[1:])
                assert len(parts) == 5
            except (ValueError, AssertionError, IndexError):
                raise UserError(f"{path}: line {n}: expected 'class cx cy w h', got {line.strip()!r}") from None
            if classes is not None and not 0 <= k < len(classes):
                raise UserError(f"{path}: line {n}: unknown class {k} ({len(classes)} classes: 0..{len(classes) - 1})")
            box = ((cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h)
            boxes.append((*check_box(box, w, h, f"{path}: line {n}"), k + 1))
        items.append((image, tuple(boxes)))
    return items


def check_item(item, classes):
    image, boxes = item
    w, h = readable_size(image)
    for box in boxes:
        check_box(box[:4], w, h, image)


def class_counts(dataset, n_clas):
    """Boxes per class (what class_weights would weigh by; check_params refuses class weights)."""
    counts = [0] * n_clas
    for boxes in dataset.targets:
        for box in boxes:
            counts[int(box[4]) - 1] += 1
    return counts


class DetectionDataset(ItemDataset, torch.utils.data.Dataset):
    """(image tensor [3,S,S], boxes [N,5]: x1, y1, x2, y2 in pixels of the S x S input, label) per sample; targets
    are each image's boxes as stored."""

    def __getitem__(self, i):
        boxes = np.asarray(self.targets[i], dtype=np.float32).reshape(-1, 5)
        out = self.transform(image=self.image(i), bboxes=boxes[:, :4], labels=boxes[:, 4])
        kept = np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)
        return out["image"], torch.from_numpy(np.column_stack([kept, np.asarray(out["labels"], np.float32)]))

    @staticmethod
    def collate(batch):
        """Images stacked; boxes padded to the batch's most, with label -1 (no box) in the padding."""
        most = max(len(b) for _, b in batch)
        targets = torch.full((len(batch), most, 5), -1.0)
        for k, (_, b) in enumerate(batch):
            targets[k, :len(b)] = b
        return torch.stack([x for x, _ in batch]), targets


Dataset = DetectionDataset
