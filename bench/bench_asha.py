"""Successive halving against the full grid it prunes: experiments/asha_search (27 cells over learning rate, weight
decay and dropout, 9 epochs each, on the digits), run both ways from fresh folders.

    python bench/bench_asha.py [--workers 2] [--rounds 1]

Each round runs `search_hyperparams.py` twice on copies of the example: once as shipped (ASHA: rungs at 1, 3 and 9
epochs, the top third promoted) and once with the schedule removed (every cell to 9 epochs), in alternating order.
Prints, per round and as medians: wall time of the whole command, epochs trained (history.json rows), the best
validation accuracy among cells trained to the end, and the ratios ASHA / grid. The issue's targets: ASHA's best
within 0.5 accuracy points of the grid's best, with <= 35 % of its epochs.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import model.tasks  # noqa: E402, F401  (registers the tasks in core/tasks.py)
from core.tasks import TASKS, ensure_data  # noqa: E402

EXAMPLE = os.path.join(ROOT, "experiments", "asha_search", "params.json")


def run_search(scratch, mode, workers, data_dir):
    params = json.load(open(EXAMPLE))
    if mode == "grid":
        del params["hyper_search"]["schedule"]
    parent = tempfile.mkdtemp(dir=scratch, prefix=f"{mode}-")
    with open(os.path.join(parent, "params.json"), "w") as f:
        json.dump(params, f)
    cmd = [sys.executable, "search_hyperparams.py", "--parent_dir", parent, "--data_dir", data_dir,
           "--workers", str(workers)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"search ({mode}) failed: {(proc.stderr or proc.stdout).strip().splitlines()[-3:]}")
    return {"wall": wall, **outcome(parent, params["num_epochs"])}


def outcome(parent, num_epochs):
    """Epochs trained, and the best cell trained to the end (by its best-epoch validation accuracy)."""
    epochs, best, best_cell = 0, -1.0, None
    for name in sorted(os.listdir(parent)):
        folder = os.path.join(parent, name)
        if not os.path.isdir(folder):
            continue
        rows = json.load(open(os.path.join(folder, "history.json")))["epochs"]
        epochs += len(rows)
        if len(rows) == num_epochs:
            acc = json.load(open(os.path.join(folder, "metrics_val_best_weights.json")))["accuracy"]
            if acc > best:
                best, best_cell = acc, name
    return {"epochs": epochs, "best": best, "cell": best_cell}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--keep", help="keep the search folders in this folder (default: a temp folder, removed)")
    args = ap.parse_args()
    data_dir = ensure_data(TASKS["classification"].data)
    scratch = args.keep or tempfile.mkdtemp(prefix="bench-asha-")
    os.makedirs(scratch, exist_ok=True)
    runs = {"asha": [], "grid": []}
    try:
        for i in range(args.rounds):
            for mode in (("asha", "grid") if i % 2 == 0 else ("grid", "asha")):
                r = run_search(scratch, mode, args.workers, data_dir)
                runs[mode].append(r)
                print(f"round {i + 1} {mode}: {r['wall']:.1f} s, {r['epochs']} epochs, best val accuracy "
                      f"{r['best']:.4f} ({r['cell']})", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    med = {m: {k: statistics.median(r[k] for r in rs) for k in ("wall", "epochs", "best")} for m, rs in runs.items()}
    a, g = med["asha"], med["grid"]
    print(f"epochs: asha / grid = {a['epochs'] / g['epochs']:.3f} (target <= 0.35)")
    print(f"wall time: asha / grid = {a['wall'] / g['wall']:.3f}")
    print(f"best val accuracy: asha {a['best']:.4f}, grid {g['best']:.4f}, gap {100 * (g['best'] - a['best']):.2f} "
          f"points (target <= 0.5)")


if __name__ == "__main__":
    main()
