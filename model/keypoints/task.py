"""The keypoint task as the machinery sees it (`"task": "keypoints"`): K named (x, y) points per image.

    DATA_DIR/{train,valid,test}/images/NAME.png + keypoints.json (or keypoints.csv): see data_loader.py

It provides the names model/classification/task.py lists: the data from data_loader.py, the models, head and
losses from net.py, the epoch metrics from metrics.py, the predictor, report and figures from report.py, and
check_params below. The point names play the part of classes (n_clas is K).
"""

from model.keypoints.data_loader import (
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
from model.keypoints.data_loader import KeypointDataset as Dataset
from model.keypoints.metrics import OVERFIT_METRIC, EpochMetrics
from model.keypoints.net import HEAD, build_model, head_of, loss_fn, point_loss
from model.keypoints.report import (
    best_figures,
    draw_best,
    evaluation_report,
    plot_evaluation,
    predictor,
    report_markdown,
)
from model.tasks import IMAGE_LABEL_KEYS, check_plain_loss, refuse_keys
from model.tasks import plain_forward as forward
from utils import UserError

SPLIT_LAYOUT = "images/ and keypoints.json"  # what a split folder holds, for the error that names a missing one


def build_loss(params, counts):
    """The training objective: params.point_loss (smooth_l1, l1 or mse) over the labelled points, in pixels."""
    return lambda outputs, target: point_loss(params.point_loss, outputs, target)


def build_batch_mix(params, n_clas):
    """No batch mixing: check_params refuses MixUp and CutMix for points."""
    return None


def check_params(params, classes, where):
    """What params.json says that the data or this task cannot honour, before anything is written."""
    if params.n_clas is not None and params.n_clas != len(classes):
        raise UserError(f"{where}: key 'n_clas' is {params.n_clas} but the data names {len(classes)} points")
    refuse_keys(params, where, "keypoints", IMAGE_LABEL_KEYS)
    check_plain_loss(params, where, "keypoints train on point_loss (smooth_l1, l1 or mse)")
