"""The classification task as the machinery sees it (`"task": "classification"`, the default): one label per image.

    DATA_DIR/{train,valid,test}/<class>/*.png       classes: the sorted folder names of train/

What the machinery calls, the same for every task (model/segmentation/ provides the same names):
    data        find_classes, scan_split, item_files, check_item, PRESETS, build_transforms,     data_loader.py
                decoder, transforms_record, Dataset (.collate, .reseed, .paths), class_counts
    model       build_model, head_of, HEAD                                                      net.py
    loss        build_loss (training), loss_fn (validation), build_batch_mix                    net.py, data_loader.py
    metrics     EpochMetrics, OVERFIT_METRIC (METRICS is read through model/tasks.py)           metrics.py
    evaluation  predictor, evaluation_report, report_markdown, plot_evaluation, best_figures,   report.py
                draw_best
    params      check_params                                                                    below
"""

from model.classification.data_loader import (
    PRESETS,
    build_batch_mix,
    build_transforms,
    check_item,
    class_counts,
    decoder,
    find_classes,
    item_files,
    scan_split,
    transforms_record,
)
from model.classification.data_loader import ImageDataset as Dataset
from model.classification.metrics import METRICS, OVERFIT_METRIC, EpochMetrics
from model.classification.net import HEAD, build_loss, build_model, head_of, loss_fn
from model.classification.report import (
    best_figures,
    draw_best,
    evaluation_report,
    plot_confusion,
    plot_evaluation,
    predictor,
    report_markdown,
)
from model.tasks import check_classes, check_plain_loss
from model.tasks import plain_forward as forward
from utils import UserError

SPLIT_LAYOUT = "<class>/"  # what a split folder holds, for the error that names a missing one

def check_params(params, classes, where):
    """What params.json says that the data or this task cannot honour, before anything is written."""
    check_classes(params, classes, where, found="class folders")
    metric = params.early_stopping.monitor_metric
    if len(classes) < METRICS[metric].min_classes:
        raise UserError(f"{where}: key 'early_stopping.monitor_metric' is {metric} but the data has only "
                        f"{len(classes)} classes (it needs {METRICS[metric].min_classes})")
    check_plain_loss(params, where, "a classifier trains on plain cross-entropy (loss terms are for segmentation)")
    for key in ("eval_window", "eval_stride"):
        if getattr(params, key):
            raise UserError(f"{where}: key '{key}' is for segmentation (sliding-window evaluation of large images)")
