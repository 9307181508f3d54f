"""Apply a trained experiment folder to new, unlabelled images.

    python predict.py --model_dir experiments/base_model --source photos/ [--out DIR] [--restore_file best]
    python predict.py --model_dir experiments/segmentation --source "scans/**/*.png" [--keep_regions 1]

--source is a folder (its images, sub-folders too), a glob pattern (quoted), a text file listing one image path a
line, or one image. Each image goes through the run's own preprocessing (from the checkpoint's params), in batches
of bs_test. Results go to MODEL_DIR/predictions/<source name>/ (photos_onnx/ with --exported onnx, photos_last/ with
--restore_file last, scans_regions1/ with --keep_regions 1; or --out): manifest.json, predictions.jsonl (one line
per image) and the task's files: predictions.csv (classification: top-5 labels and probabilities),
masks/<image>.png (segmentation: each pixel's class index, a palette PNG), labels/<image>.txt and detections.json
(detection: YOLO lines and COCO boxes with scores), keypoints.json and keypoints.csv; with --draw, drawn/<image>.png
too (the image with its prediction drawn). <image> is the image's path under the source without its extension
(a.jpg -> masks/a.png); two images sharing one (a.png, a.jpg) are refused. Every image gets a result, an empty one
too; an unreadable image gets one line naming it and the rest are still predicted. Rerunning skips the images
already done; a folder holding another model's predictions is refused unless --overwrite. With --exported onnx (or
pt2), the file export.py wrote predicts, through the same preprocessing and decoding. With --eval_window N
(segmentation, detection), the model sees N x N tiles of each image, --exported too: the tiling is this script's.
"""

import argparse
import functools

import torch

import model.tasks  # noqa: F401  (registers the tasks in core/tasks.py)
from core import exporting
from core.data.sources import image_sources, predict_loader
from core.rundir import predictions
from core.rundir.record import provenance
from core.rundir.report import variant_of
from core.training.engine import keep_freed_memory, pick_runtime
from core.training.trained import option_overrides
from model.loop import progress
from utils import UserError, run_cli


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model_dir", required=True, help="a trained experiment folder")
    ap.add_argument("--source", required=True, help="images: a folder, a glob pattern, a list file or one image")
    ap.add_argument("--out", help="output folder (default: MODEL_DIR/predictions/<source name>, its options appended: "
                                  "photos_onnx, scans_regions1)")
    ap.add_argument("--restore_file", default="best", choices=["best", "last"], help="which checkpoint")
    ap.add_argument("--exported", metavar="FORMAT", help="predict with MODEL_DIR/export/<restore_file>.FORMAT (onnx, "
                                                          "pt2: export.py's) instead of the checkpoint")
    ap.add_argument("--overwrite", action="store_true", help="replace another model's predictions in --out")
    ap.add_argument("--batch_size", type=int, help="images per batch (default: the run's bs_test)")
    ap.add_argument("--eval_window", type=int, metavar="N",
                    help="segmentation, detection: predict in N x N tiles (0: whole images)")
    ap.add_argument("--eval_stride", type=int, metavar="S", help="segmentation, detection: pixels between tiles")
    ap.add_argument("--draw", action="store_true",
                    help="also drawn/<image>.png: each image with its prediction drawn (mask, boxes, points, label)")
    ap.add_argument("--keep_regions", type=int, metavar="N",
                    help="segmentation: keep each class's N largest regions of a mask, the rest becomes background")
    args = ap.parse_args(argv)
    if args.batch_size is not None and args.batch_size < 1:
        raise UserError(f"--batch_size {args.batch_size}: must be >= 1")
    return args


def main(argv=None):
    args = parse_args(argv)
    keep_freed_memory()
    # the model is loaded before anything is written
    ckpt, params, task, model, checkpoint = exporting.load_trained(args.model_dir, args.restore_file, args.exported,
                                                                   option_overrides(args))
    classes = ckpt["classes"]
    task.check_params(params, classes, f"{checkpoint} (params)")
    name, root, paths = image_sources(args.source)
    variant = variant_of(None, args.eval_window, args.eval_stride, args.keep_regions, args.exported)
    out_dir = args.out or predictions.default_out(args.model_dir, name, args.restore_file, variant)
    predictions.check_out(out_dir, args.model_dir, root)
    # never read our own outputs, nor the run's files, back as input
    paths = [p for p in paths if not predictions.inside(p, out_dir) and not predictions.inside(p, args.model_dir)]
    stems = predictions.output_stems(paths, root, args.source)
    rt = pick_runtime(params.cuda and not args.exported)  # an export runs on the CPU
    model = rt.prepare(model).eval()
    ident = predictions.identity(args.model_dir, checkpoint, ckpt, params, args.source)
    done = predictions.claim(out_dir, ident, args.overwrite)
    todo = [p for p in paths if p not in done or "error" in done[p]]  # an unreadable image is tried again

    predict = task.predictor(params, classes=classes)
    eval_tf = task.build_transforms(params)[1]
    # tiles are cut from each image at its own size: a batch of one size, so none is padded into another's tiles
    loader = predict_loader(todo, functools.partial(task.preprocess, eval_tf), args.batch_size or params.bs_test,
                            params.num_workers, rt.pin_memory, by_size=task.own_size or bool(params.eval_window))
    with torch.inference_mode():
        for x, indices, sizes, unreadable in progress(loader, "predict"):
            rows = [{"image": todo[i], "error": "cannot read image"} for i in unreadable]
            for row in rows:
                print(f"{row['image']}: cannot read image (skipped)")
            if x is not None:
                x = rt.inputs(x)
                with rt.autocast():
                    outputs = predict(model, x)
                images = [{"image": todo[i], "stem": stems[todo[i]], "size": size,
                           "input": (x.shape[3], x.shape[2])} for i, size in zip(indices, sizes)]
                rows += task.save_predictions(outputs, images, out_dir, classes)
            predictions.append_rows(out_dir, rows)

    done = predictions.done_rows(out_dir)
    rows = [done[p] for p in paths if p in done]  # in source order, this run's and earlier runs' alike
    predicted = [r for r in rows if "error" not in r]
    files = task.finish_predictions(predicted, out_dir, classes)
    if args.draw:
        files.append(predictions.draw(task, predicted, out_dir, classes, stems))
    # every unreadable row is this run's: each run tries them again
    unreadable = predictions.finish(out_dir, ident, args.source, rows, files, provenance(args.model_dir))
    print(predictions.summary(out_dir, len(paths), len(todo), len(unreadable), files))
    return 0


if __name__ == "__main__":
    run_cli(main)
