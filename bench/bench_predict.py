"""What a user waits for when applying a model: `python predict.py` start to exit, against a bare inference script.

    python bench/bench_predict.py [--rounds 3] [--images 2000] [--model_dir DIR]

The images are the digits' (scikit-learn's, built offline) copied until there are --images of them; the model is
--model_dir's best.pth.tar (default: experiments/base_model trained for 2 epochs into a scratch folder). Each round
runs predict.py into a fresh output folder and bench/bare_predict.py (decode, the run's evaluation transform, the
model in batches of bs_test, nothing written) as separate processes, in alternating order after one warm-up each.
Prints each round's images/s and the ratio of the medians, predict.py / bare; the target is >= 0.95.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from common import ROOT  # noqa: F401  (puts the project on the path)

import model.tasks  # noqa: F401  (registers the tasks in core/tasks.py)
from core.tasks import TASKS, ensure_data


def images_folder(scratch, n):
    """n PNGs: the digits of every split, copied round-robin (names kept distinct)."""
    data = ensure_data(os.path.join(ROOT, TASKS["classification"].data))
    pngs = sorted(os.path.join(d, f) for d, _, fs in os.walk(data) for f in fs if f.endswith(".png"))
    folder = os.path.join(scratch, "images")
    os.makedirs(folder)
    for i in range(n):
        shutil.copy(pngs[i % len(pngs)], os.path.join(folder, f"image_{i:05d}.png"))
    return folder


def trained(scratch):
    folder = os.path.join(scratch, "model")
    os.makedirs(folder)
    shutil.copy(os.path.join(ROOT, "experiments", "base_model", "params.json"), folder)
    subprocess.run([sys.executable, "train.py", "--model_dir", folder, "num_epochs=2"], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL)
    return folder


def timed(cmd):
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if proc.returncode:
        sys.exit(f"{cmd[1]} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return time.perf_counter() - start


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--model_dir", help="a trained folder (default: base_model trained for 2 epochs)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        model, source = args.model_dir or trained(scratch), images_folder(scratch, args.images)
        commands = {
            "predict.py": lambda r: [sys.executable, "predict.py", "--model_dir", model, "--source", source, "--out",
                                     os.path.join(scratch, f"out{r}")],
            "bare": lambda r: [sys.executable, os.path.join("bench", "bare_predict.py"), "--model_dir", model,
                               "--source", source]}
        for cmd in commands.values():  # warm-up: the OS file cache, imports
            timed(cmd("warm"))
        rates = {name: [] for name in commands}
        print(f"{args.images} images\nround   predict.py (img/s)   bare (img/s)")
        for r in range(args.rounds):
            for name in (commands if r % 2 == 0 else reversed(commands)):
                rates[name].append(args.images / timed(commands[name](r)))
            print(f"{r + 1:>5}   {rates['predict.py'][-1]:18.0f}   {rates['bare'][-1]:12.0f}")
    ratio = statistics.median(rates["predict.py"]) / statistics.median(rates["bare"])
    print(f"ratio predict.py / bare = {ratio:.3f} images/s (median of {args.rounds} rounds each; target >= 0.95)")


if __name__ == "__main__":
    main()
