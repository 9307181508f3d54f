"""What a search costs beyond its cells' training: 8 short cells on 2 workers, warm (default) vs --cold cells, and
with --container IMAGE also each cell in its own container (search_hyperparams.py --container).

    python bench/bench_search.py [--rounds 2] [--workers 2] [--epochs 3] [--container cs230-template]

Each round runs `search_hyperparams.py` on a fresh parent folder of 8 cells (4 learning rates x 2 dropouts,
small_cnn on the whole digits training set), once with the default warm launcher and once with `--cold`, in
alternating order. The wall time is the whole command, start to exit (planning, cells, results table and plots).
Two measures of what a cell does itself, both read from its folder:

    run      record.json's wall_time_s: the cell's training run, first epoch to its last figure (the issue's measure)
    compute  the sum of history.json's epoch_s: training and validation only (stricter: figures count as overhead)

    efficiency        = sum(cell time) / (workers x wall)                target >= 0.9
    overhead per cell = (workers x wall - sum(cell time)) / cells        target < 1 s

Prints each run and the medians over rounds, then the floor no launcher can go below: every cell needs torch & co.
imported before it trains, an import runs on one core, so for the server's import time T no worker trains, and
even a launcher that cost nothing else would reach at most sum(cell time) / (sum(cell time) + workers x T).

With --container, also what a container costs per cell beyond each non-container path:
(workers x (container wall - that wall)) / cells, the container's start and its cold imports included.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import model.tasks  # noqa: E402, F401  (registers the tasks in core/tasks.py)
from core.search.forkserver import ForkServer  # noqa: E402
from core.search.pool import cell_env, threads_per_worker  # noqa: E402
from core.tasks import TASKS, ensure_data  # noqa: E402

PARENT = {"arch": "small_cnn", "im_sz": 32, "batch_size": 64, "cache_images": 1,
          "hyper_search": {"learning_rate": [0.001, 0.002, 0.004, 0.008], "ps": [0.1, 0.3]}}


def search(scratch, mode, workers, epochs, data_dir, image=None):
    parent = tempfile.mkdtemp(dir=scratch, prefix=f"{mode}-")
    with open(os.path.join(parent, "params.json"), "w") as f:
        json.dump({**PARENT, "num_epochs": epochs}, f)
    cmd = [sys.executable, "search_hyperparams.py", "--parent_dir", parent, "--data_dir", data_dir,
           "--workers", str(workers)] + {"cold": ["--cold"], "container": ["--container", image]}.get(mode, [])
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"search ({mode}) failed: {(proc.stderr or proc.stdout).strip().splitlines()[-3:]}")
    cells = [os.path.join(parent, d) for d in os.listdir(parent) if os.path.isdir(os.path.join(parent, d))]
    out = {"wall": wall, "cells": len(cells)}
    for measure, seconds in (("run", run_seconds), ("compute", epoch_seconds)):
        own = sum(seconds(c) for c in cells)
        out[f"{measure} own"] = own
        out[f"{measure} efficiency"] = own / (workers * wall)
        out[f"{measure} overhead"] = (workers * wall - own) / len(cells)
    return out


def server_import_s(workers):
    """Seconds from starting the cell server to its first possible fork: the imports every cell needs."""
    start = time.perf_counter()
    server = ForkServer(cell_env(threads=threads_per_worker(workers)), torchvision=False)  # as run_pool starts it
    server.wait_ready()
    seconds = time.perf_counter() - start
    server.close()
    return seconds


def run_seconds(cell):
    with open(os.path.join(cell, "record.json")) as f:
        return sum(s["wall_time_s"] for s in json.load(f)["sessions"])


def epoch_seconds(cell):
    with open(os.path.join(cell, "history.json")) as f:
        return sum(r["epoch_s"] for r in json.load(f)["epochs"])


def describe(m):
    return (f"wall {m['wall']:.1f} s; vs the cells' runs: efficiency {m['run efficiency']:.2f}, overhead "
            f"{m['run overhead']:.2f} s per cell; vs their compute: efficiency {m['compute efficiency']:.2f}, "
            f"overhead {m['compute overhead']:.2f} s per cell")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--data_dir", default=os.path.join(ROOT, TASKS["classification"].data))
    ap.add_argument("--container", metavar="IMAGE", help="also run every cell in a container of IMAGE")
    args = ap.parse_args()
    os.chdir(ROOT)
    ensure_data(os.path.relpath(args.data_dir))
    runs = {"warm": [], "cold": []} | ({"container": []} if args.container else {})
    with tempfile.TemporaryDirectory() as scratch:
        for mode in runs:  # warm-up: image cache, OS file cache (the image's files too)
            search(scratch, mode, args.workers, 1, args.data_dir, args.container)
        for r in range(args.rounds):
            for mode in list(runs)[r % len(runs):] + list(runs)[:r % len(runs)]:  # each order in turn
                runs[mode].append(search(scratch, mode, args.workers, args.epochs, args.data_dir, args.container))
                print(f"round {r + 1} {mode}: {describe(runs[mode][-1])}")
    for mode, ms in runs.items():
        print(f"{mode}, median of {args.rounds}: {describe({k: statistics.median(m[k] for m in ms) for k in ms[0]})}")
    ratio = statistics.median(m["wall"] for m in runs["warm"]) / statistics.median(m["wall"] for m in runs["cold"])
    print(f"wall time warm / cold = {ratio:.2f}")
    if args.container:
        wall = {mode: statistics.median(m["wall"] for m in ms) for mode, ms in runs.items()}
        for base in ("cold", "warm"):
            extra = args.workers * (wall["container"] - wall[base]) / runs["warm"][0]["cells"]
            print(f"container vs {base}: wall {wall['container'] / wall[base]:.2f}x, {extra:+.2f} s per cell")
    t = statistics.median(server_import_s(args.workers) for _ in range(3))
    own, cells = statistics.median(m["run own"] for m in runs["warm"]), runs["warm"][0]["cells"]
    print(f"floor: the cell server imports for {t:.2f} s (median of 3), while no worker can train; a launcher with "
          f"no other cost would reach efficiency {own / (own + args.workers * t):.2f} and overhead "
          f"{args.workers * t / cells:.2f} s per cell on these cells")


if __name__ == "__main__":
    main()
