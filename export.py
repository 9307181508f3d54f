"""Export a trained experiment folder's model for use outside PyTorch, checked against its checkpoint.

    python export.py --model_dir experiments/base_model [--format onnx|pt2] [--restore_file best]

Writes MODEL_DIR/export/<restore>.<format>: ONNX (torch.onnx's dynamo exporter; run with onnxruntime; needs
`pip install -r requirements-export.txt`) or torch.export's .pt2, with the run's metadata inside (task, classes,
params, input size and preprocessing, epoch, code), and beside it <file>.json: the checkpoint it came from, its
SHA-256, the parity and the latency measured. The input is the preprocessed batch [B,3,H,W]; what the graph holds
per task is model/<task>/net.py's export_parts (a detector: backbone and head, decoded in Python: docs/export.md).

Before anything is written, the file is run on real validation images through the run's own preprocessing and
compared with the checkpoint's model: the largest difference is printed, and above the task's tolerance (1e-4;
detection 1e-3, in pixels) nothing is written. Rerunning keeps an export of the same checkpoint; one of another
checkpoint is replaced only with --overwrite. evaluate.py and predict.py run an export with --exported FORMAT.
"""

import argparse
import os

import model.tasks  # noqa: F401  (registers the tasks in core/tasks.py)
from core import exporting, tasks
from core.data.loaders import fetch_dataloader
from core.rundir.folder import trained_checkpoint
from core.rundir.record import provenance, trained_on
from core.training.engine import keep_freed_memory
from core.training.trained import trained_model, trained_run
from utils import UserError, atomic_path, run_cli


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model_dir", required=True, help="a trained experiment folder")
    ap.add_argument("--format", default="onnx", help="onnx (default) or pt2")
    ap.add_argument("--restore_file", default="best", choices=["best", "last"], help="which checkpoint")
    ap.add_argument("--data_dir", help="where the validation images of the parity check are (default: the run's "
                                      "training data)")
    ap.add_argument("--images", type=int, default=64, help="validation images the parity check runs (default 64)")
    ap.add_argument("--overwrite", action="store_true", help="replace an export of another checkpoint")
    args = ap.parse_args(argv)
    if args.images < 1:
        raise UserError(f"--images {args.images}: must be >= 1")
    return args


def main(argv=None):
    args = parse_args(argv)
    keep_freed_memory()
    fmt = exporting.check_format(args.format)
    checkpoint = trained_checkpoint(args.model_dir, args.restore_file)
    ckpt, params, task = trained_run(checkpoint, ["eval_window=0"])  # the graph sees one input: tiling is outside it
    path = exporting.export_path(args.model_dir, args.restore_file, fmt)
    identity = exporting.checkpoint_identity(checkpoint, ckpt)
    if is_up_to_date(path, identity, args.overwrite):
        print(f"{path}: up to date (exported from {identity['file']}, epoch {identity['epoch']}); nothing to do")
        return 0
    graph, decode = task.export_parts(trained_model(ckpt, params, task, checkpoint).eval(), params)
    data_dir = tasks.data_dir_for(params.task, params.data_dir, args.data_dir, trained_on(args.model_dir))
    batches = validation_batches(data_dir, params, ckpt["classes"], args.images)
    program = exporting.trace(graph, batches[0], task.own_size)
    meta = exporting.metadata(ckpt, params, task, identity, provenance(args.model_dir), decode is not None)
    folder = os.path.dirname(path)
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise UserError(f"{folder}: is a file, where export.py writes its folder")
    os.makedirs(folder, exist_ok=True)
    with atomic_path(path) as tmp:  # in place only once the parity check passed
        exporting.write(program, fmt, tmp, meta)
        run, _ = exporting.runner(tmp, fmt)
        diff, n = exporting.parity(graph, run, batches)
        tolerance = task.export_tolerance
        if not diff <= tolerance:
            raise UserError(f"export: parity check failed on {n} validation images: max abs diff {diff:.3g} > "
                            f"{tolerance:g} (nothing written)")
        eager_ms, exported_ms = (exporting.latency_ms(fn, batches[0]) for fn in (graph, run))
    runtime = "onnxruntime" if fmt == "onnx" else "torch.export"
    exporting.write_record(path, {"checkpoint": identity, "format": fmt, "parity": {
        "images": n, "max_abs_diff": diff, "tolerance": tolerance}, "latency_ms": {
        "batch": batches[0].shape[0], "eager": eager_ms, runtime: exported_ms}})
    print(f"{path}: parity on {n} validation images: max abs diff {diff:.3g} (tolerance {tolerance:g})")
    print(f"latency, batch of {batches[0].shape[0]} on the CPU: eager {eager_ms:.1f} ms, {runtime} "
          f"{exported_ms:.1f} ms ({eager_ms / exported_ms:.2f}x)")
    return 0


def is_up_to_date(path, identity, overwrite):
    """True for an export of this very checkpoint; an export of another one is refused unless `overwrite`."""
    record = exporting.read_record(path)
    if record is None:
        return False  # none, or one whose writing was cut short: ours to replace
    if record["checkpoint"] == identity:
        return True
    if not overwrite:
        old = record["checkpoint"]
        raise UserError(f"{path}: exported from {old['file']} epoch {old['epoch']}, which has changed since (epoch "
                        f"{identity['epoch']} now); --overwrite replaces it")
    return False


def validation_batches(data_dir, params, classes, n):
    """The first `n` validation images, preprocessed as evaluation does, in batches."""
    loader, data_classes = fetch_dataloader(["valid"], data_dir, params, training=False)
    if data_classes != classes:
        raise UserError(f"{data_dir}: classes {data_classes} differ from those the run was trained on {classes}")
    batches, seen = [], 0
    for x, _ in loader["valid"]:
        batches.append(x[: n - seen])
        seen += len(batches[-1])
        if seen >= n:
            break
    return batches


if __name__ == "__main__":
    run_cli(main)
