"""What a user waits for: `python train.py` start to exit, against a bare PyTorch script doing the same training.

    python bench/bench_train_process.py [--experiments base_model resnet18] [--rounds 3] [KEY=VALUE ...]

For each experiment, every round runs `train.py --model_dir FRESH_FOLDER` and `bench/bare_train.py` (same data,
model, optimizer, schedule and epochs; validation each epoch; no bookkeeping) as separate processes, in
alternating order so drift in machine load hits both alike, each in a fresh folder. One warm-up run of each comes
first (the data set, its cache and the OS file cache are then warm for both). Prints each round's wall times and the
ratio of the medians, train.py / bare; the target is <= 1.05. KEY=VALUE overrides go to both (e.g. num_epochs=3).
"""

import os
import shutil
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import ROOT, parse_args, run_script  # noqa: E402

SCRIPTS = {"train.py": os.path.join(ROOT, "train.py"), "bare": os.path.join(ROOT, "bench", "bare_train.py")}


def run(script, experiment, scratch, data_dir, overrides):
    """Wall time of one whole process, start to exit."""
    elapsed, folder = run_script(SCRIPTS[script], experiment, scratch, data_dir, overrides)
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
    args = parse_args(__doc__, rounds=3)
    with tempfile.TemporaryDirectory() as scratch:
        ratios = {e: bench(e, args.rounds, scratch, args.data_dir, args.overrides) for e in args.experiments}
    print("\n" + ", ".join(f"{e} {r:.3f}" for e, r in ratios.items()))


if __name__ == "__main__":
    main()
