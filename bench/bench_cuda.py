"""Every task's default experiment on a GPU: images/s and peak GPU memory of the CUDA path (bf16 autocast,
channels_last, pinned memory, decided by core/training/engine.py), eager and compiled, and with grad_checkpointing.

    python bench/bench_cuda.py [--experiments base_model segmentation keypoints detection] [--epochs 3] [KEY=VALUE ...]

Each configuration is one `python train.py` in a fresh folder; it reads the last epoch's row of history.json
(images_per_s, gpu_peak_mb: the first epochs pay for cuDNN's kernel search and compiling) and the whole command's
wall time. Prints one table row per configuration, with each ratio to the eager run of the same experiment. On a
machine without a GPU it says so and exits 1 (--allow_cpu runs the same plumbing on the CPU, for testing the script).
"""

import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.common import run_script  # noqa: E402

CONFIGS = {"eager": [], "compile": ["compile=1"], "grad_checkpointing": ["grad_checkpointing=1"]}


def main():
    import argparse

    import torch

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--experiments", nargs="+", default=["base_model", "segmentation", "keypoints", "detection"])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--allow_cpu", action="store_true")
    ap.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = ap.parse_args()
    if not torch.cuda.is_available() and not args.allow_cpu:
        sys.exit("no GPU here (torch.cuda.is_available() is False): this benchmark measures the CUDA path")
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    print(f"{device}, torch {torch.__version__}, {args.epochs} epochs each, last epoch's row\n")
    print("| experiment | configuration | images/s | ratio | peak GPU MB | ratio | whole command s |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="bench_cuda_") as scratch:
        for experiment in args.experiments:
            base = None
            for name, extra in CONFIGS.items():
                overrides = [f"num_epochs={args.epochs}", "plot_every_s=3600", *extra, *args.overrides]
                seconds, folder = run_script("train.py", experiment, scratch, None, overrides)
                with open(os.path.join(folder, "history.json")) as f:
                    last = json.load(f)["epochs"][-1]
                row = (last["images_per_s"], last.get("gpu_peak_mb"))
                base = base or row
                peak = f"{row[1]:,.0f}" if row[1] is not None else "-"
                print(f"| {experiment} | {name} | {row[0]:,.0f} | {ratio(row[0], base[0])} | {peak} | "
                      f"{ratio(row[1], base[1])} | {seconds:.1f} |", flush=True)


def ratio(value, base):
    return f"{value / base:.2f}" if value and base else "-"


if __name__ == "__main__":
    main()
