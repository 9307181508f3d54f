"""How long plot_results.py and synthesize_results.py take over a large search, start to exit.

    python bench/bench_search_figures.py [--cells 2000] [--small 200]

Writes two successive-halving parents of synthetic cells (params.json, status.json, metrics and a 9-epoch
history.json each; a third of the cells pruned at each rung, some failed) in a temporary folder, then runs each
script on both as a user would, and prints the seconds and how they scale from the small parent to the large one.
"""

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EPOCHS = 9
SPACE = {"method": "sobol", "n_samples": 1, "learning_rate": {"loguniform": [1e-4, 1e-1]},
         "ps": {"uniform": [0.0, 0.6]}, "batch_size": {"choice": [32, 64, 128]}, "wd": {"loguniform": [1e-6, 1e-2]},
         "schedule": {"type": "asha", "min_epochs": 1, "reduction_factor": 3}}


def write(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f)


def make_cells(parent, n):
    os.makedirs(parent)
    write(os.path.join(parent, "params.json"), {"num_epochs": EPOCHS, "hyper_search": dict(SPACE, n_samples=n)})
    for i in range(n):
        lr, ps, bs, wd = 10 ** (-4 + 3 * ((i * 0.618) % 1)), 0.6 * ((i * 0.414) % 1), [32, 64, 128][i % 3], 1e-4
        final = 0.95 - 0.08 * abs(math.log10(lr) + 2.5) - 0.05 * ps
        epochs = EPOCHS if i % 9 == 0 else 3 if i % 3 == 0 else 1
        status = "failed" if i % 50 == 7 else "completed" if epochs == EPOCHS else "pruned"
        cell = os.path.join(parent, f"c{i:05d}")
        os.makedirs(cell)
        write(os.path.join(cell, "params.json"), {"learning_rate": lr, "ps": ps, "batch_size": bs, "wd": wd,
                                                  "num_epochs": EPOCHS})
        write(os.path.join(cell, "status.json"), {"status": status, "epoch": epochs})
        if status == "failed":
            continue
        rows = [{"epoch": e, "lr": [lr], "train": {m: final * e / EPOCHS for m in ("loss", "accuracy", "f1")},
                 "val": {m: final * e / EPOCHS for m in ("loss", "accuracy", "f1", "balanced_accuracy", "top5")}}
                for e in range(1, epochs + 1)]
        write(os.path.join(cell, "history.json"), {"epochs": rows})
        write(os.path.join(cell, "metrics_val_best_weights.json"), {**rows[-1]["val"], "epoch": epochs})


def timed(script, parent):
    start = time.perf_counter()
    subprocess.run([sys.executable, script, "--parent_dir", parent], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cells", type=int, default=2000)
    ap.add_argument("--small", type=int, default=200)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        parents = {n: os.path.join(scratch, f"p{n}") for n in (args.small, args.cells)}
        for n, parent in parents.items():
            make_cells(parent, n)
        for script in ("plot_results.py", "synthesize_results.py"):
            small, large = (timed(script, parents[n]) for n in (args.small, args.cells))
            print(f"{script:24s} {args.small} cells {small:6.2f} s   {args.cells} cells {large:6.2f} s   "
                  f"x{large / small:.2f} for x{args.cells / args.small:.0f} the cells")


if __name__ == "__main__":
    main()
