"""Evaluate trained experiment folders on one split of the data.

    python evaluate.py --model_dir experiments/base_model [MORE_DIRS ...] [--split test] [--restore_file best]
                       [--tta hflip]

Writes into each folder MODEL_DIR/metrics_<split>_<restore>_weights.json (e.g. metrics_test_best_weights.json:
the metrics, per-class precision, recall, F1 and support, balanced accuracy), report_<split>_<restore>_weights.md
(the per-class table) and confusion_<split>_<restore>_weights.png, and prints one table over all folders. With
--tta hflip, predictions are averaged over each image and its mirror image, and the file names end in _tta_hflip;
with --exported onnx (or pt2), the file export.py wrote is evaluated, and the names end in _onnx (_pt2). With
--eval_window N [--eval_stride S] (segmentation, detection), the model sees N x N tiles of each image and the names
end in _windowN[_strideS]; a detector's boxes are merged over the tiles and scored against the whole image's.
"""

import argparse
import os

from tabulate import tabulate

import model.tasks  # noqa: F401  (registers the tasks in core/tasks.py)
from core import exporting, tasks
from core.data.loaders import fetch_dataloader
from core.rundir.record import provenance, trained_on
from core.rundir.report import check_same_data, variant_of, write_report
from core.training.engine import keep_freed_memory, pick_runtime
from core.training.trained import option_overrides
from model.loop import evaluate
from utils import UserError, run_cli


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model_dir", nargs="+", default=["experiments/base_model"], help="one or more run folders")
    ap.add_argument("--data_dir", help="data set folder (default: the one the run trained on)")
    ap.add_argument("--split", default="test", choices=["test", "valid", "train"])
    ap.add_argument("--restore_file", default="best", choices=["best", "last"], help="which checkpoint to evaluate")
    ap.add_argument("--tta", choices=["hflip"], help="test-time augmentation: average over the mirrored images")
    ap.add_argument("--exported", metavar="FORMAT", help="evaluate MODEL_DIR/export/<restore_file>.FORMAT (onnx, "
                                                          "pt2: export.py's) instead of the checkpoint")
    ap.add_argument("--eval_window", type=int, metavar="N", help="segmentation, detection: evaluate in N x N tiles "
                                                                   "(0: whole images), whatever the run's params say")
    ap.add_argument("--eval_stride", type=int, metavar="S", help="segmentation, detection: pixels between tiles")
    ap.add_argument("--keep_regions", type=int, metavar="N",
                    help="segmentation: keep each class's N largest connected regions of a predicted mask, the rest "
                         "becomes background (0: off), whatever the run's params say")
    return ap.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    keep_freed_memory()
    variant = variant_of(args.tta, args.eval_window, args.eval_stride, args.keep_regions, args.exported)
    overrides = option_overrides(args)
    runs = [exporting.load_trained(d, args.restore_file, args.exported, overrides) for d in args.model_dir]
    # evaluate every folder first, write after: one bad folder leaves no folder half done
    results = [evaluate_run(*run, args.data_dir, args.split, args.tta, trained_on(d))
               for d, run in zip(args.model_dir, runs)]
    for model_dir, (metrics, *_) in zip(args.model_dir, results):
        check_same_data(model_dir, args.split, args.restore_file, variant, metrics["data_dir"])
    rows = []
    names = list(dict.fromkeys(name for *_, task in results for name in task.metric_names()))
    for model_dir, run, (metrics, details, classes, task) in zip(args.model_dir, runs, results):
        write_report(model_dir, args.split, args.restore_file, variant, metrics, details, classes, task)
        rows.append([model_dir, evaluated(model_dir, run[-1], args.tta), metrics["epoch"]]
                    + [metrics.get(k) for k in names] + [provenance(model_dir)])
    headers = ["model_dir", f"evaluated on {args.split}", "epoch", *names, "code (commit, model/ snapshot)"]
    print(tabulate(rows, headers=headers, floatfmt=".4f", tablefmt="github"))
    return 0


def evaluated(model_dir, path, tta):
    """What the table's row is of: 'best.pth.tar', 'export/best.onnx' (an export, not the checkpoint), '+ tta hflip'."""
    return os.path.relpath(path, model_dir) + (f" + tta {tta}" if tta else "")


def evaluate_run(ckpt, params, task, model, path, data_dir, split, tta=None, trained_data=None):
    """Metrics (per class too), the task's details (confusion matrix, predictions) and class names of one trained
    model on `split` of data_dir, else of the data set it trained on, with the params it was trained with."""
    rt = pick_runtime(params.cuda and not isinstance(model, exporting.ExportedModel))  # an export runs on the CPU
    data_dir = tasks.data_dir_for(params.task, params.data_dir, data_dir, trained_data)
    loaders, classes = fetch_dataloader([split], data_dir, params, rt.pin_memory, training=False)
    if classes != ckpt["classes"]:
        raise UserError(f"{data_dir}: classes {classes} differ from those {path} was trained on {ckpt['classes']}")
    task.check_params(params, classes, f"{path} (params)")
    metrics, details = evaluate(rt.prepare(model), loaders[split], rt, task, len(classes),
                                task.predictor(params, tta, classes), desc=split)
    metrics.update(task.evaluation_report(details, loaders[split].dataset, classes), task=params.task,
                   epoch=ckpt["epoch"], weights=ckpt.get("weights", "raw"), tta=tta or "none",
                   data_dir=os.path.abspath(data_dir))
    if params.eval_window:  # recorded: a tiled evaluation is another evaluation than a whole-image one
        metrics.update(eval_window=params.eval_window, eval_stride=params.eval_stride)
    if params.keep_regions:
        metrics.update(keep_regions=params.keep_regions)
    if isinstance(model, exporting.ExportedModel):
        metrics.update(exported=path)
    return metrics, details, classes, task


if __name__ == "__main__":
    run_cli(main)
