"""What a user waits for: `python train.py` start to exit, against a bare PyTorch script doing the same training.

    python bench/bench_train_process.py [--experiments base_model resnet18] [--rounds 3] [KEY=VALUE ...]

For each experiment, every round runs `train.py --model_dir FRESH_FOLDER` and `bench/bare_train.py` (same data,
model, optimizer, schedule and epochs; validation each epoch; no bookkeeping) as separate processes, in
alternating order so drift in machine load hits both alike, each in a fresh folder. One warm-up run of each comes
first (the data set, its cache and the OS file cache are then warm for both). Prints each round's wall times and the
ratio of the medians, train.py / bare; the target is <= 1.05. KEY=VALUE overrides go to both (e.g. num_epochs=3).
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from data.build_dataset import DEFAULT_DST, ensure_data  # noqa: E402

SCRIPTS = {"train.py": os.path.join(ROOT, "train.py"), "bare": os.path.join(ROOT, "bench", "bare_train.py")}


def run(script, experiment, scratch, data_dir, overrides):
    """Wall time of one whole process, from a fresh copy of the experiment's params.json."""
    folder = tempfile.mkdtemp(dir=scratch)
    shutil.copy(os.path.join(ROOT, "experiments", experiment, "params.json"), folder)
    cmd = [sys.executable, SCRIPTS[script], "--model_dir", folder, "--data_dir", data_dir, *overrides]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{script} failed on {experiment}: {proc.stderr.strip().splitlines()[-1:]}")
    shutil.rmtree(folder)
    return elapsed


def bench(experiment, rounds, scratch, data_dir, overrides):
    for script in SCRIPTS:  # warm-up
        run(script, experiment, scratch, data_dir, overrides)
    times = {script: [] for script in SCRIPTS}
    print(f"\n{experiment} {' '.join(overrides)}\nround   train.py (s)   bare (s)")
    for r in range(rounds):
        for script in (SCRIPTS if r % 2 == 0 else reversed(SCRIPTS)):
            times[script].append(run(script, experiment, scratch, data_dir, overrides))
        print(f"{r + 1:>5}   {times['train.py'][-1]:12.2f}   {times['bare'][-1]:8.2f}")
    ratio = statistics.median(times["train.py"]) / statistics.median(times["bare"])
    print(f"{experiment}: ratio train.py / bare = {ratio:.3f} (median of {rounds} rounds each; target <= 1.05)")
    return ratio


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--experiments", nargs="+", default=["base_model", "resnet18"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--data_dir", default=os.path.join(ROOT, DEFAULT_DST))
    ap.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = ap.parse_args()
    os.chdir(ROOT)
    ensure_data(os.path.relpath(args.data_dir))
    with tempfile.TemporaryDirectory() as scratch:
        ratios = {e: bench(e, args.rounds, scratch, args.data_dir, args.overrides) for e in args.experiments}
    print("\n" + ", ".join(f"{e} {r:.3f}" for e, r in ratios.items()))


if __name__ == "__main__":
    main()
