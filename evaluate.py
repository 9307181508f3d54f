"""Evaluate trained experiment folders on one split of the data.

    python evaluate.py --model_dir experiments/base_model [MORE_DIRS ...] [--split test] [--restore_file best]
                       [--tta hflip]

Writes into each folder MODEL_DIR/metrics_<split>_<restore>_weights.json (e.g. metrics_test_best_weights.json:
the metrics, per-class precision, recall, F1 and support, balanced accuracy), report_<split>_<restore>_weights.md
(the per-class table) and confusion_<split>_<restore>_weights.png, and prints one table over all folders. With
--tta hflip, predictions are averaged over each image and its mirror image, and the file names end in _tta_hflip.
"""

import argparse
import os

from tabulate import tabulate

from core.config import Params, fixed_overrides, resolve
from core.data.loaders import fetch_dataloader
from core.rundir.folder import check_model_dir, checkpoint_path
from core.rundir.record import provenance
from core.rundir.report import check_same_data, per_class_metrics, write_report
from core.training.engine import evaluate, pick_runtime
from core.training.state import evaluated_weights
from data.build_dataset import DEFAULT_DST, ensure_data
from model.metrics import metric_names
from model.net import build_model
from utils import UserError, load_checkpoint, one_line, run_cli


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model_dir", nargs="+", default=["experiments/base_model"], help="one or more run folders")
    ap.add_argument("--data_dir", default=DEFAULT_DST, help="data set folder (default: built on first use)")
    ap.add_argument("--split", default="test", choices=["test", "valid", "train"])
    ap.add_argument("--restore_file", default="best", choices=["best", "last"], help="which checkpoint to evaluate")
    ap.add_argument("--tta", choices=["hflip"], help="test-time augmentation: average over the mirrored images")
    return ap.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    ckpt_paths = [trained_checkpoint(d, args.restore_file) for d in args.model_dir]
    data_dir = ensure_data(args.data_dir)
    # evaluate every folder first, write after: one bad folder leaves no folder half done
    results = [evaluate_checkpoint(path, data_dir, args.split, args.tta) for path in ckpt_paths]
    for model_dir in args.model_dir:
        check_same_data(model_dir, args.split, args.restore_file, args.tta, data_dir)
    rows = []
    for model_dir, (metrics, confusion, classes) in zip(args.model_dir, results):
        metrics["data_dir"] = os.path.abspath(data_dir)
        write_report(model_dir, args.split, args.restore_file, args.tta, metrics, confusion, classes)
        rows.append([model_dir, metrics["epoch"]] + [metrics.get(k) for k in metric_names()] + [provenance(model_dir)])
    headers = ["model_dir", "epoch", *metric_names(), "code (commit, model/ snapshot)"]
    print(tabulate(rows, headers=headers, floatfmt=".4f", tablefmt="github"))
    return 0


def trained_checkpoint(model_dir, restore_file):
    check_model_dir(model_dir)
    path = checkpoint_path(model_dir, restore_file)
    if not os.path.isfile(path):
        raise UserError(f"--model_dir {model_dir}: no {os.path.basename(path)} (train it first: "
                        f"python train.py --model_dir {model_dir})")
    return path


def evaluate_checkpoint(path, data_dir, split, tta=None):
    """Metrics (per class too), confusion matrix and class names of one checkpoint on `split`, with the params it
    was trained with and the weights its validation saw (the EMA's when it kept one)."""
    ckpt = load_checkpoint(path)
    if not isinstance(ckpt, dict) or not {"params", "classes", "model", "epoch"} <= set(ckpt):
        raise UserError(f"{path}: not a checkpoint written by train.py (needs params, classes, model, epoch)")
    # the whole split, and the model as trained (weights come from the checkpoint, not from pretraining)
    params = Params(resolve(ckpt["params"], f"{path} (params)",
                            fixed_overrides("evaluate")))
    rt = pick_runtime(params.cuda)
    loaders, classes = fetch_dataloader([split], data_dir, params, rt.pin_memory, training=False)
    if classes != ckpt["classes"]:
        raise UserError(f"{data_dir}: classes {classes} differ from those {path} was trained on {ckpt['classes']}")
    model = build_model(params, len(classes))
    try:
        model.load_state_dict(evaluated_weights(ckpt))
    except RuntimeError as e:
        raise UserError(f"{path}: does not fit model/net.py as it is now (edited since?): "
                        f"{one_line(e)[:200]}") from None
    metrics, details = evaluate(rt.prepare(model), loaders[split], rt, len(classes), split, tta)
    per_class, balanced = per_class_metrics(loaders[split].dataset.labels, details["prediction"].tolist(), classes)
    metrics.update(balanced_accuracy=balanced, epoch=ckpt["epoch"], weights=ckpt.get("weights", "raw"),
                   tta=tta or "none", per_class=per_class)
    return metrics, details["confusion"], classes


if __name__ == "__main__":
    run_cli(main)
