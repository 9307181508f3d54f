"""How long synthesize_results takes over many cells (target: 2,000 cells in under a second).

    python bench/bench_synthesize.py [--cells 2000]

Generates a search parent with N finished cells (params.json, status.json, metrics_val_best_weights.json) in a
temporary folder, then times one synthesize() call: planning the search and matching each cell to its folder, reading
every JSON, grouping, sorting and writing results.md and results.csv.
"""

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from synthesize_results import synthesize  # noqa: E402


def make_cells(parent, n):
    """A search of n cells (a zip) and each cell's folder: synthesize plans the search and finds every cell's folder
    by what it trained, as it does for a real search parent."""
    values = [(1e-4 * (i + 1), (i % 7) / 10) for i in range(n)]
    with open(os.path.join(parent, "params.json"), "w") as f:
        json.dump({"num_epochs": 10, "hyper_search": {"zip": {"learning_rate": [lr for lr, _ in values],
                                                              "ps": [ps for _, ps in values]}}}, f)
    for i in range(n):
        cell = os.path.join(parent, f"learning_rate_{i}__ps_{i % 7}")
        os.makedirs(cell)
        files = {
            "params.json": {"learning_rate": 1e-4 * (i + 1), "ps": (i % 7) / 10, "num_epochs": 10},
            "status.json": {"status": "completed", "epoch": 10},
            "metrics_val_best_weights.json": {"loss": 1 / (i + 1), "accuracy": (i % 1000) / 1000, "epoch": 10},
        }
        for name, obj in files.items():
            with open(os.path.join(cell, name), "w") as f:
                json.dump(obj, f)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cells", type=int, default=2000)
    n = ap.parse_args().cells
    with tempfile.TemporaryDirectory() as parent:
        make_cells(parent, n)
        start = time.perf_counter()
        markdown = synthesize(parent)
        elapsed = time.perf_counter() - start
    rows = len(markdown.splitlines()) - 2
    print(f"synthesize over {n} cells: {elapsed:.3f} s ({rows} rows; target < 1 s)")


if __name__ == "__main__":
    main()
