"""The detection task as the machinery sees it (`"task": "detection"`): boxes with a class each, per image.

    COCO: DATA_DIR/{train,valid,test}/images/* + annotations.json;  YOLO: images/ + labels/NAME.txt  (data_loader.py)

It provides the names model/classification/task.py lists: the data from data_loader.py, the detectors, head, loss
and the training step's forward from net.py, the epoch metrics (torchmetrics' COCO mAP) from metrics.py, the
predictor, report and figures from report.py, and check_params below.
"""

from model.detection.data_loader import (
    PRESETS,
    build_transforms,
    check_item,
    class_counts,
    decoder,
    find_classes,
    item_files,
    scan_split,
    transforms_record,
)
from model.detection.data_loader import DetectionDataset as Dataset
from model.detection.metrics import OVERFIT_METRIC, EpochMetrics
from model.detection.net import HEAD, build_model, forward, head_of, loss_fn
from model.detection.net import build_loss as weighted_terms
from model.detection.report import (
    best_figures,
    draw_best,
    evaluation_report,
    plot_evaluation,
    predictor,
    report_markdown,
)
from model.tasks import IMAGE_LABEL_KEYS, check_classes, check_plain_loss, refuse_keys

SPLIT_LAYOUT = "images/ and annotations.json (COCO) or labels/ (YOLO)"


def build_loss(params, counts):
    """The sum of the detector's loss terms, each times its weight in params.box_loss_weights (default 1)."""
    return weighted_terms(params.box_loss_weights or {})


def build_batch_mix(params, n_clas):
    return None


def check_params(params, classes, where):
    """What params.json says that the data or this task cannot honour, before anything is written."""
    check_classes(params, classes, where)
    refuse_keys(params, where, "detection", {**IMAGE_LABEL_KEYS, "compile": "compiles a fixed-shape model"})
    check_plain_loss(params, where, "a detector sums its own loss terms (weights: box_loss_weights)")
