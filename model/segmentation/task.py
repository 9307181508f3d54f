"""The segmentation task as the machinery sees it (`"task": "segmentation"`): a class index per pixel.

    DATA_DIR/{train,valid,test}/images/NAME.png + masks/NAME.png (255 = ignore), DATA_DIR/classes.json

It provides the names model/classification/task.py lists (a new task provides them too): the data from
data_loader.py, the models and head from net.py, the losses from loss.py (build_loss below), the epoch metrics
from metrics.py, the predictor, report and figures from report.py, and check_params below.
"""

from model.classification.net import class_weight_tensor
from model.segmentation import loss
from model.segmentation.data_loader import (
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
from model.segmentation.data_loader import SegmentationDataset as Dataset
from model.segmentation.loss import loss_fn
from model.segmentation.metrics import OVERFIT_METRIC, EpochMetrics
from model.segmentation.net import build_model, head_of
from model.segmentation.report import (
    best_figures,
    draw_best,
    evaluation_report,
    plot_confusion,
    plot_evaluation,
    predictor,
    report_markdown,
)
from model.tasks import check_classes
from model.tasks import plain_forward as forward
from utils import UserError

HEAD = "the layers that score classes (model/segmentation/net.py head_of)"
SPLIT_LAYOUT = "images/ and masks/"  # what a split folder holds, for the error that names a missing one


def build_loss(params, counts):
    """The training objective: params.loss's weighted terms (ce with label_smoothing and class_weights, dice,
    bce), plus aux_weight times the same on an auxiliary head. counts: labelled pixels per class."""
    weights = class_weight_tensor(params.class_weights, counts)
    return loss.build_loss(vars(params.loss), len(counts), weights, params.label_smoothing, params.aux_weight)


def build_batch_mix(params, n_clas):
    """No batch mixing: check_params refuses MixUp and CutMix for masks."""
    return None


def check_params(params, classes, where):
    """What params.json says that the data or this task cannot honour, before anything is written."""
    check_classes(params, classes, where)
    for key in ("mixup_alpha", "cutmix_alpha"):
        if getattr(params, key):
            raise UserError(f"{where}: key '{key}' mixes labels per image; segmentation masks cannot be mixed so "
                            f"(set it to 0)")
    if params.eval_window and params.eval_stride > params.eval_window:
        raise UserError(f"{where}: key 'eval_stride' is {params.eval_stride}, more than eval_window "
                        f"{params.eval_window}: the tiles would leave gaps")
    loss.check_terms(vars(params.loss), len(classes))
