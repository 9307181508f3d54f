"""Build a data set in the layout every script reads: DST/{train,valid,test}/<class>/*.png

    python data/build_dataset.py                                  # default: data/digits from scikit-learn
    python data/build_dataset.py --src RAW_DIR --dst data/NAME    # your images: RAW_DIR/<class>/*.jpg ...
    python data/build_dataset.py --dst data/digits_imbalanced --imbalance 0=0.1,1=0.1   # keep 10 % of 0s and 1s
    python data/build_dataset.py --task segmentation [--size 64] [--test_size 96]      # data/digit_scenes
    python data/build_dataset.py --task keypoints [--size 64]                          # data/digit_points
    python data/build_dataset.py --task multilabel [--size 32]                         # data/digit_tags
    python data/build_dataset.py --task detection --large                # data/digit_boxes_large: 1024-px scenes

The default set is scikit-learn's bundled handwritten digits (1,797 real 8x8 scans, 10 classes), so it builds
offline. Splits are stratified and seeded: the same command always gives the same files.

--task segmentation builds the default segmentation set instead: scenes of 1-3 of those digits with a mask and
boxes each, in DST/{train,valid,test}/{images,masks}/ (data/scenes.py, which describes the layout). --task keypoints
builds one-digit scenes with the corners and centre of the digit's box as named points (data/points.py); --task
detection writes the digit scenes with their boxes in the COCO layout (data/boxes.py); --task multilabel writes scenes
of 1-3 distinct digits labelled with the digits drawn, images/ + labels.csv (data/tags.py).
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from anywhere

import model.tasks  # noqa: E402, F401  (registers the tasks in core/tasks.py; no torch)
from core.tasks import TASKS  # noqa: E402  (each task's facts, its default data set among them)
from data.boxes import LARGE, LARGE_DATA  # noqa: E402
from data.digits import build_digits, keep_fractions, write_split  # noqa: E402
from data.folders import IMAGE_EXTS, SPLITS, split_indices  # noqa: E402
from utils import UserError, run_cli  # noqa: E402


def list_images(src):
    """[(path, class_name)] for src/<class>/<image>; class folders without images are an error."""
    if not os.path.isdir(src):
        raise UserError(f"--src {src}: not a directory")
    found = {c: sorted(f for f in os.listdir(os.path.join(src, c)) if f.lower().endswith(IMAGE_EXTS))
             for c in sorted(d for d in os.listdir(src) if os.path.isdir(os.path.join(src, d)))}
    if not found:
        raise UserError(f"--src {src}: no class sub-folders (expected {src}/<class>/<image>)")
    items = []
    for c, files in found.items():
        if not files:
            raise UserError(f"--src {src}: class folder '{c}' has no images")
        items += [(os.path.join(src, c, f), c) for f in files]
    return items


def build_from_folder(src, dst, size=64, fractions=(0.7, 0.15, 0.15), seed=230, keep=None):
    """Any folder of class sub-folders -> the train/valid/test layout, resized to size x size RGB PNGs."""
    from PIL import Image, UnidentifiedImageError

    items = list_images(src)
    items = [items[i] for i in keep_fractions([c for _, c in items], keep or {}, seed)]
    labels = [c for _, c in items]
    names = [f"{os.path.splitext(os.path.basename(p))[0]}_{i:06d}" for i, (p, _) in enumerate(items)]

    def load(i):
        try:
            return Image.open(items[i][0]).convert("RGB")
        except (OSError, UnidentifiedImageError) as e:
            raise UserError(f"{items[i][0]}: cannot read image ({e.__class__.__name__})") from None

    write_split(load, labels, names, split_indices(labels, fractions, seed), dst, size)
    return dst


def parse_fractions(text):
    try:
        parts = [float(x) for x in text.split(",")]
    except ValueError:
        parts = []
    if len(parts) != 3 or any(p < 0 for p in parts) or abs(sum(parts) - 1) > 1e-6 or parts[0] == 0:
        raise UserError(f"--fractions {text}: expected three non-negative numbers TRAIN,VALID,TEST summing to 1")
    return tuple(parts)


def parse_imbalance(text):
    """'0=0.1,1=0.2' -> {'0': 0.1, '1': 0.2}: the fraction of each named class's images to keep."""
    keep = {}
    for part in text.split(",") if text else []:
        name, _, value = (x.strip() for x in part.partition("="))
        try:
            fraction = float(value)
        except ValueError:
            fraction = -1.0
        if not name or not 0 < fraction <= 1:
            raise UserError(f"--imbalance {text}: expected CLASS=FRACTION,... with fractions in (0, 1]")
        if name in keep:
            raise UserError(f"--imbalance {text}: class '{name}' is named twice")
        keep[name] = fraction
    return keep


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", choices=tuple(TASKS), default="classification",
                    help="segmentation: digit scenes with masks instead of class folders; keypoints: one-digit "
                         "scenes with five named points each; detection: the scenes' boxes, COCO layout; "
                         "multilabel: scenes labelled with the digits in them")
    ap.add_argument("--src", help="folder of class sub-folders (default: scikit-learn's digits)")
    ap.add_argument("--dst", help="output folder (default: the task's own, " +
                    ", ".join(f"{t.name} {t.data}" for t in TASKS.values() if t.data) + ")")
    ap.add_argument("--size", type=int, default=None, help="output images are SIZE x SIZE (digits: 32, else 64)")
    ap.add_argument("--test_size", type=int, default=None,
                    help="segmentation: test scenes are TEST_SIZE x TEST_SIZE (default: --size)")
    ap.add_argument("--fractions", help="train,valid,test fractions (default: 0.7,0.15,0.15)")
    ap.add_argument("--seed", type=int, default=230)
    ap.add_argument("--large", action="store_true", help="detection: 1024-px scenes of 4-16 small digits (16-32 px), "
                                                        "in data/digit_boxes_large: for crop_size and tiles")
    ap.add_argument("--imbalance", metavar="CLASS=FRACTION,...",
                    help="keep only this fraction of the named classes' images (an imbalanced variant)")
    args = ap.parse_args(argv)
    if args.large and args.task != "detection":
        raise UserError("--large: only with --task detection")
    if args.task != "classification":
        return main_scenes(args)
    if args.test_size is not None:
        raise UserError("--test_size: only with --task segmentation")
    args.dst = args.dst or TASKS["classification"].data
    fractions = parse_fractions(args.fractions or "0.7,0.15,0.15")
    keep = parse_imbalance(args.imbalance)
    if os.path.exists(args.dst):
        raise UserError(f"--dst {args.dst}: already exists; remove it first to rebuild")
    if args.size is not None and args.size < 1:
        raise UserError(f"--size {args.size}: must be >= 1")
    if args.src:
        build_from_folder(args.src, args.dst, args.size or 64, fractions, args.seed, keep)
    else:
        build_digits(args.dst, args.size or 32, fractions, args.seed, keep)
    counts = {s: sum(len(files) for _, _, files in os.walk(os.path.join(args.dst, s))) for s in SPLITS}
    print(f"wrote {args.dst}: " + ", ".join(f"{s} {n}" for s, n in counts.items()))


def main_scenes(args):
    """--task other than classification: that task's default data set (its Task.build_data: the digit scenes of
    data/scenes.py, data/points.py, data/boxes.py); the class-folder options do not apply."""
    for flag in ("src", "imbalance", "fractions") + (("test_size",) if args.task != "segmentation" else ()):
        if getattr(args, flag) is not None:
            raise UserError(f"--{flag}: not with --task {args.task} (its data set is built by its "
                            f"model/{args.task}/task.py build_data)")
    dst = args.dst or (LARGE_DATA if args.large else TASKS[args.task].data)
    if dst is None:
        raise UserError(f"--task {args.task}: has no default data set; give --dst and build it yourself")
    if os.path.exists(dst):
        raise UserError(f"--dst {dst}: already exists; remove it first to rebuild")
    for flag in ("size", "test_size"):
        if getattr(args, flag) is not None and getattr(args, flag) < 8:
            raise UserError(f"--{flag} {getattr(args, flag)}: must be >= 8 for scenes")
    options = {k: v for k, v in (("size", args.size), ("test_size", args.test_size)) if v is not None}
    if args.large:
        options = {**LARGE, **options}
    TASKS[args.task].build_data(dst, seed=args.seed, **options)
    inputs = {s: os.path.join(dst, s, "images") if os.path.isdir(os.path.join(dst, s, "images")) else
              os.path.join(dst, s) for s in SPLITS}  # the images, not the masks beside them
    counts = {s: sum(f.lower().endswith(IMAGE_EXTS) for _, _, fs in os.walk(d) for f in fs) for s, d in inputs.items()}
    print(f"wrote {dst}: " + ", ".join(f"{s} {n} images" for s, n in counts.items()))


if __name__ == "__main__":
    run_cli(main)
