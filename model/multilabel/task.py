"""Multi-label classification (`"task": "multilabel"`): a set of labels per image, each present or not.

    DATA_DIR/{train,valid,test}/images/NAME.png
    DATA_DIR/{train,valid,test}/labels.csv      image,labels      NAME.png,cat dog   (labels space-separated, or none)

The classes are the labels train's labels.csv names, sorted. A new task as model/task.py asks for one: its data
(the layout above), its net (the classifier's, one logit per label), its loss (binary cross-entropy of each label's
sigmoid) and its metrics; the rest is model/defaults.py's. No torch at the top: params validation reads the facts.
"""

import csv
import os

from core.losses import Term
from data.folders import IMAGE_EXTS
from model.task import LOSS, Metric, Task
from utils import UserError

# ---------------------------------------------------------------- the data


def read_labels(split_dir):
    """{image file name: [label]} of split_dir/labels.csv."""
    path = os.path.join(split_dir, "labels.csv")
    if not os.path.isfile(path):
        raise UserError(f"{split_dir}: no labels.csv (expected image,labels rows beside images/)")
    with open(path, newline="", encoding="utf-8-sig") as f:  # utf-8-sig: Excel's "CSV UTF-8" starts with a BOM
        rows = list(csv.reader(f))
    if not rows or rows[0] != ["image", "labels"]:
        raise UserError(f"{path}: the header must be image,labels")
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != 2:
            raise UserError(f"{path}: line {line}: {len(row)} fields, expected 2 (image,labels)")
    return {image: labels.split() for image, labels in rows[1:]}


# ---------------------------------------------------------------- the loss and the metrics
# Each formula reads the epoch's logits [N, K] and 0/1 targets [N, K] (model/defaults.py EpochMetrics keeps them);
# a label counts as predicted when its probability is at least 0.5, its logit at least 0.


def bce(logits, targets):
    """Binary cross-entropy of each label's sigmoid, averaged over images and labels."""
    import torch.nn.functional as F

    return F.binary_cross_entropy_with_logits(logits.float(), targets.float())


def macro_f1(s):
    """F1 of each label at 0.5, averaged over the labels true or predicted somewhere (one neither is left out)."""
    predicted, true = s["outputs"] >= 0, s["targets"] > 0.5
    tp = (predicted & true).sum(0)
    seen = (predicted | true).any(0)
    return (2 * tp / (predicted.sum(0) + true.sum(0)).clamp(min=1))[seen].mean().item()


def mean_ap(s):
    """Mean over the labels present of their average precision: how well each label's scores rank its images
    (scikit-learn's average_precision_score; logits rank as probabilities do)."""
    from sklearn.metrics import average_precision_score

    true = s["targets"].numpy() > 0.5
    present = true.any(0)  # a label without an image has no precision to average
    if not present.any():
        return float("nan")
    return float(average_precision_score(true[:, present], s["outputs"].numpy()[:, present], average="macro"))


def exact_match(s):
    """The share of images whose predicted label set is exactly the true one."""
    return ((s["outputs"] >= 0) == (s["targets"] > 0.5)).all(1).float().mean().item()


class Multilabel(Task):
    name, data, arch, monitor = "multilabel", "data/digit_tags", "small_cnn", "map"
    split_layout = "images/ and labels.csv"
    metrics = {"loss": LOSS, "map": Metric(mean_ap), "f1": Metric(macro_f1), "exact_match": Metric(exact_match)}
    loss_terms = {"bce": Term(bce, 1.0, "binary cross-entropy of each label's sigmoid")}

    def build_data(self, dst, **options):
        from data.tags import build_tags

        build_tags(dst, **options)

    def find_classes(self, data_dir):
        return sorted({label for labels in read_labels(os.path.join(data_dir, "train")).values() for label in labels})

    def scan_split(self, data_dir, split, classes):
        """[(image path, a 0/1 per class)] of DATA_DIR/split, images sorted by name; an image without its row, a row
        without its image or a label train does not name is an error."""
        split_dir, items = os.path.join(data_dir, split), []
        table, folder = read_labels(split_dir), os.path.join(data_dir, split, "images")
        if not os.path.isdir(folder):
            raise UserError(f"{split_dir}: no images/ folder (expected images/NAME.png beside labels.csv)")
        for image in sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTS) and f not in table):
            raise UserError(f"{folder}/{image}: no row in labels.csv (an image without labels has an empty one)")
        for image, labels in sorted(table.items()):
            path = os.path.join(folder, image)
            if not os.path.isfile(path):
                raise UserError(f"{split_dir}/labels.csv: labels for {image}, which is not in {folder}/")
            unknown = sorted(set(labels) - set(classes))
            if unknown:
                raise UserError(f"{split_dir}/labels.csv: {image} has label {unknown[0]}, which train does not name")
            items.append((path, tuple(float(c in labels) for c in classes)))
        return items

    def build_model(self, params, n_clas):
        from model.classification.net import build_model  # SmallCNN or a torchvision classifier: a logit per label

        return build_model(params, n_clas)

    def prediction(self, logits, classes):
        """The labels of probability at least 0.5, and every label's probability."""
        probs = logits.float().sigmoid().tolist()
        return {"labels": [c for c, z in zip(classes, logits.tolist()) if z >= 0],  # as the metrics decide
                "probs": {c: round(p, 4) for c, p in zip(classes, probs)}}
