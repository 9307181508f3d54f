"""What "plan": "fine_tune" does for a pretrained body and a new head, against plain training from the same start.

    python bench/bench_fine_tune.py [--epochs 6] [--train_subset 100] [--seeds 3]

No pretrained torchvision weights are on this machine, so the body comes from another run: small_cnn trained on
the whole digits training set, saved without its head (as a backbone checkpoint for init_weights_path would be).
Each target run trains on only --train_subset images (a small labelled set, where fine-tuning matters) and
validates on the whole valid split; each is trained with --seeds seeds:

    scratch     random init, one_cycle
    plain       the body's weights, a random head, one_cycle over all layers at once
    fine_tune   the same start, "plan": "fine_tune" (1 epoch of the head on the frozen body, then all layers
                with discriminative rates)

Prints each run's best valid accuracy and the median per recipe.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import model.tasks  # noqa: E402, F401  (registers the tasks in core/tasks.py)
from core.tasks import TASKS, ensure_data  # noqa: E402

BASE = {"arch": "small_cnn", "im_sz": 32, "batch_size": 32, "learning_rate": 0.004, "cache_images": 1,
        "plot_every_s": 1000, "monitor_gradients": 0}


def train(folder, params, data_dir):
    os.makedirs(folder)
    with open(os.path.join(folder, "params.json"), "w") as f:
        json.dump(params, f)
    proc = subprocess.run([sys.executable, "train.py", "--model_dir", folder, "--data_dir", data_dir], cwd=ROOT,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{folder}: {proc.stderr.strip().splitlines()[-1:]}")
    with open(os.path.join(folder, "metrics_val_best_weights.json")) as f:
        return json.load(f)["accuracy"]


def backbone(source, path):
    """The source run's best weights without its head: what a new task starts from."""
    ckpt = torch.load(os.path.join(source, "best.pth.tar"), map_location="cpu", weights_only=True)
    torch.save({"model": {k: v for k, v in ckpt["model"].items() if not k.startswith("head.")}}, path)
    return path


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--train_subset", type=int, default=100)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--data_dir", default=os.path.join(ROOT, TASKS["classification"].data))
    args = ap.parse_args()
    os.chdir(ROOT)
    ensure_data(os.path.relpath(args.data_dir))
    with tempfile.TemporaryDirectory() as scratch:
        source = os.path.join(scratch, "source")
        print(f"source run (whole training set, 8 epochs): valid accuracy "
              f"{train(source, {**BASE, 'num_epochs': 8}, args.data_dir):.4f}")
        body = backbone(source, os.path.join(scratch, "body.pth.tar"))
        target = {**BASE, "num_epochs": args.epochs, "train_subset": args.train_subset}
        recipes = {"scratch": target, "plain": {**target, "init_weights_path": body},
                   "fine_tune": {**target, "init_weights_path": body, "plan": "fine_tune"}}
        results = {name: [] for name in recipes}
        for seed in range(args.seeds):
            for name, params in recipes.items():
                results[name].append(train(os.path.join(scratch, f"{name}-{seed}"), {**params, "seed": seed},
                                           args.data_dir))
                print(f"seed {seed} {name}: best valid accuracy {results[name][-1]:.4f}")
    for name, accs in results.items():
        print(f"{name}: median best valid accuracy {statistics.median(accs):.4f} over {args.seeds} seeds "
              f"({', '.join(f'{a:.4f}' for a in accs)})")


if __name__ == "__main__":
    main()
