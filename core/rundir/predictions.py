"""predict.py's output folder: one fixed place per model, source and options, its manifest, and what is already done.

    MODEL_DIR/predictions/<source name>[_<options>]/    e.g. photos/, photos_onnx/, scans_regions1/
        manifest.json        the model (folder, checkpoint, epoch, code), the source, how many images, when
        predictions.jsonl    one line per image, appended as batches finish: what a rerun skips
        ...                  the task's files: predictions.csv, masks/, labels/ and detections.json, keypoints.json

A folder that holds another model's predictions is refused (unless --overwrite); the same model's is resumed: the
images already in predictions.jsonl are not predicted again, and a line torn by a kill is dropped and redone.
"""

import csv
import json
import os
import shutil

import numpy as np

from utils import UserError, atomic_write, read_json, write_json

MANIFEST, ROWS = "manifest.json", "predictions.jsonl"


OURS = (MANIFEST, ROWS, "predictions.csv", "classes.json", "detections.json", "keypoints.json", "keypoints.csv",
        "masks", "labels", "drawn")  # all predict.py writes: what --overwrite removes, and nothing else


def identity(model_dir, checkpoint, ckpt, params, source):
    """What makes two predictions the same: the source, the checkpoint (path, epoch, bytes) and the options that
    change them."""
    st = os.stat(checkpoint)
    return {"source": os.path.abspath(source), "model_dir": os.path.abspath(model_dir),
            "checkpoint": os.path.abspath(checkpoint),
            "epoch": ckpt["epoch"], "checkpoint_bytes": st.st_size, "checkpoint_mtime_ns": st.st_mtime_ns,
            "eval_window": params.eval_window, "eval_stride": params.eval_stride, "keep_regions": params.keep_regions}


def default_out(model_dir, source_name, restore_file, variant):
    """MODEL_DIR/predictions/<source name>, with what else makes the predictions differ appended as evaluate.py's
    file names have it (variant: core.rundir.report.variant_of): photos_onnx (--exported onnx), scans_regions1
    (--keep_regions 1), photos_last (--restore_file last). Each is a folder of its own, so one never refuses
    another."""
    parts = [source_name, *([restore_file] if restore_file != "best" else []), *([variant] if variant else [])]
    return os.path.join(model_dir, "predictions", "_".join(parts))


def check_out(out_dir, model_dir, source_root):
    """An output folder that is a file, holds a run or the source images, or lies in the run's folder outside its
    predictions/, is refused: predict.py writes (and --overwrite removes) its own files only."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UserError(f"--out {out_dir}: is a file, not a folder")
    in_run = inside(out_dir, model_dir) and not inside(out_dir, os.path.join(model_dir, "predictions"))
    if inside(source_root, out_dir) or inside(model_dir, out_dir) or in_run:
        raise UserError(f"--out {out_dir}: would hold the source images or the run folder {model_dir}; give an "
                        f"output folder of its own")
    if os.path.isdir(out_dir) and any(f == "params.json" or f.endswith(".pth.tar") for f in os.listdir(out_dir)):
        raise UserError(f"--out {out_dir}: is a run folder (params.json, checkpoints); give an output folder of its "
                        f"own")


def inside(path, folder):
    """Whether `path` is `folder` or lies under it (links resolved)."""
    folder = os.path.realpath(folder)
    return os.path.commonpath([os.path.realpath(path), folder]) == folder


def claim(out_dir, ident, overwrite):
    """Make out_dir ready for `ident`'s predictions; returns the rows already done there ({image: row})."""
    manifest = os.path.join(out_dir, MANIFEST)
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        old = read_json(manifest).get("identity") if os.path.exists(manifest) else None
        if not isinstance(old, dict) or "checkpoint" not in old:
            raise UserError(f"--out {out_dir}: holds files predict.py did not write; give an empty or new folder")
        if old != ident and not overwrite:
            raise UserError(f"--out {out_dir}: holds predictions of {old['checkpoint']} (epoch {old['epoch']}) on "
                            f"{old.get('source')}; give another --out, or --overwrite to replace them")
        if old != ident:
            for name in OURS:
                path = os.path.join(out_dir, name)
                if os.path.isdir(path):
                    shutil.rmtree(path)
                elif os.path.exists(path):
                    os.remove(path)
    os.makedirs(out_dir, exist_ok=True)
    mend_torn_line(os.path.join(out_dir, ROWS))
    write_json(manifest, {"identity": ident, "status": "running"})
    return done_rows(out_dir)


def mend_torn_line(path):
    """Cut predictions.jsonl after its last complete line: a kill mid-append must not glue the next run's first row
    to the fragment."""
    if not os.path.exists(path):
        return
    with open(path, "rb+") as f:
        data = f.read()
        if data and not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)


def done_rows(out_dir):
    """{image: row} of predictions.jsonl; the last line wins, and a line cut short by a kill is skipped."""
    rows = {}
    path = os.path.join(out_dir, ROWS)
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                rows[row["image"]] = row
    return rows


def append_rows(out_dir, rows):
    """Add a batch's rows to predictions.jsonl, on disk before the next batch starts."""
    with open(os.path.join(out_dir, ROWS), "a", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
        f.flush()
        os.fsync(f.fileno())


def output_stems(paths, root, source):
    """{path: its per-image files' name in the output folder, without extension}: always the image's path under
    `root` without its extension (scans/a/1.jpg -> a/1: masks/a/1.png, labels/a/1.txt, drawn/a/1.png), the name
    training pairs an image with its mask or label file by; an image outside root keeps its file name alone. Two
    images that would share one (a.png beside a.jpg) are refused, as training refuses them."""
    stems, owner = {}, {}
    for path in paths:
        rel = os.path.relpath(os.path.abspath(path), os.path.abspath(root))
        outside = rel == os.pardir or rel.startswith(os.pardir + os.sep)
        stem = os.path.splitext(os.path.basename(path) if outside else rel)[0]
        if stem in owner:
            raise UserError(f"--source {source}: {owner[stem]} and {path} would share the output name {stem} (masks/, "
                            f"labels/, drawn/ name files by the image without its extension); rename one")
        owner[stem], stems[path] = path, stem
    return stems


def output_path(out_dir, folder, stem, ext):
    """out_dir/folder/stem.ext, its folder made: where one image's file goes."""
    path = os.path.join(out_dir, folder, stem + ext)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return path


DRAW_SIDE = 256  # a smaller image is drawn enlarged (nearest neighbour), so that its labels stay legible


def draw(task, rows, out_dir, classes, stems):
    """drawn/<image>.png for each row not drawn yet: the image with its prediction (the task's draw_prediction)."""
    from PIL import Image

    from core.data.images import load_image
    from core.rundir.plots import save_mosaic

    for row in rows:
        path = output_path(out_dir, "drawn", stems[row["image"]], ".png")
        if os.path.exists(path):
            continue
        image = load_image(row["image"])
        h, w = image.shape[:2]
        scale = max(1, -(-DRAW_SIDE // min(h, w)))
        if scale > 1:
            image = np.asarray(Image.fromarray(image).resize((w * scale, h * scale), Image.NEAREST))
        save_mosaic(*task.draw_prediction(image.copy(), row, scale, out_dir, classes), path)
    return "drawn/"


def write_csv(path, header, rows):
    atomic_write(path, lambda f: csv.writer(f).writerows([header, *rows]), mode="w")


def summary(out_dir, n_images, n_tried, n_unreadable, files):
    """predict.py's last line: the source's images, and what became of them this run and before (an unreadable
    image is tried again by every run, so it counts among this run's)."""
    return (f"{out_dir}: {n_images} images: {n_tried - n_unreadable} predicted this run, {n_images - n_tried} "
            f"predicted before, {n_unreadable} unreadable; files: {', '.join([MANIFEST, ROWS, *files])}")


def finish(out_dir, ident, source, rows, files, code):
    """The manifest of a finished run: what made the predictions, of which images, and the files written."""
    unreadable = [r["image"] for r in rows if "error" in r]
    write_json(os.path.join(out_dir, MANIFEST), {
        "identity": ident, "status": "completed", "source": source, "code": code, "count": len(rows),
        "predicted": len(rows) - len(unreadable), "unreadable": unreadable, "files": [ROWS, *files]})
    return unreadable
