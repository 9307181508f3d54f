"""What sliding-window evaluation costs against whole-image evaluation, on the same images and the same model.

    python bench/bench_sliding_window.py --model_dir experiments/segmentation [--size 128] [--rounds 3]
                                         [--windows 64:32 64:64 32:16]

Builds a scratch digit-scene test set of --size px scenes (larger than the 64-px training scenes, as tiles are for),
then times evaluate()'s pass over it (the one train.py's validation and evaluate.py run) for the whole image and for
each WINDOW:STRIDE, in alternating order, and prints each one's median seconds and its ratio to whole-image. Also
prints each one's miou: tiles see the context a crop the size of the training images gives, whole images more.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import model.tasks  # noqa: E402, F401  (registers the tasks in core/tasks.py)
from core import tasks  # noqa: E402
from core.config import Params, fixed_overrides, resolve  # noqa: E402
from core.data.loaders import fetch_dataloader  # noqa: E402
from core.training.engine import pick_runtime  # noqa: E402
from core.training.state import evaluated_weights  # noqa: E402
from data.scenes import build_scenes  # noqa: E402
from model.loop import evaluate  # noqa: E402
from utils import load_checkpoint  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model_dir", default="experiments/segmentation", help="a trained segmentation folder")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--windows", nargs="+", default=["64:32", "64:64", "32:16"], metavar="WINDOW:STRIDE")
    args = ap.parse_args()
    ckpt = load_checkpoint(os.path.join(args.model_dir, "best.pth.tar"))
    with tempfile.TemporaryDirectory() as scratch:
        data = build_scenes(os.path.join(scratch, "scenes"), size=64, test_size=args.size, counts=(8, 8, 100))
        settings = [(0, 0)] + [tuple(int(v) for v in w.split(":")) for w in args.windows]
        times = {s: [] for s in settings}
        scores = {}
        for r in range(args.rounds):
            for setting in settings if r % 2 == 0 else settings[::-1]:
                seconds, scores[setting] = timed(ckpt, data, *setting)
                times[setting].append(seconds)
    whole = statistics.median(times[(0, 0)])
    print(f"{100} test scenes of {args.size} px, {args.rounds} rounds, {torch.get_num_threads()} threads")
    for (window, stride), t in times.items():
        name = "whole image" if not window else f"window {window} stride {stride}"
        print(f"{name:>22}: {statistics.median(t):6.2f} s  x{statistics.median(t) / whole:5.2f}  "
              f"miou {scores[(window, stride)]:.4f}")


def timed(ckpt, data_dir, window, stride):
    """(seconds, miou) of one evaluation pass over the test split with these tiles."""
    params = Params(resolve(ckpt["params"], "checkpoint", [*fixed_overrides("evaluate"), f"eval_window={window}",
                                                          f"eval_stride={stride}", "cache_images=0"]))
    task, rt = tasks.load(params.task), pick_runtime(params.cuda)
    loaders, classes = fetch_dataloader(["test"], data_dir, params, training=False)
    model = task.build_model(params, len(classes))
    model.load_state_dict(evaluated_weights(ckpt))
    model = rt.prepare(model)
    start = time.perf_counter()
    metrics, _ = evaluate(model, loaders["test"], rt, task, len(classes), task.predictor(params), desc="bench")
    return time.perf_counter() - start, metrics["miou"]


if __name__ == "__main__":
    main()
