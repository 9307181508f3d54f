"""What the memory levers save: the peak resident memory of `python train.py` with the same global batch taken whole,
in accumulated slices (accumulate_steps), per process split over two processes (nproc), and whole with its blocks
recomputed in backward (grad_checkpointing).

    python bench/bench_memory.py [--model_dir experiments/segmentation] [--batch 32] [KEY=VALUE ...]

Each configuration is one train.py process (two for nproc 2) in a fresh folder, one epoch on a small subset; the
peak RSS is read from the kernel (wait4's ru_maxrss, the largest of a process tree's members: the rank with the most,
for nproc). Prints each peak and its ratio to the whole batch's, and the whole command's wall time (what the memory
costs in compute: recomputing, smaller slices, a second process). On a CPU the peak holds the activations of a batch
(what a GPU's memory would), plus the ~0.5 GB that importing torch costs every process.
"""

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def peak_mb(cmd):
    """The largest resident set among the process and the children it waited for, in MB."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    return max(before, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model_dir", default="experiments/segmentation")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    with open(os.path.join(ROOT, args.model_dir, "params.json")) as f:
        params = json.load(f)
    params.update(num_epochs=1, train_subset=4 * args.batch, valid_subset=args.batch, bs_test=args.batch,
                  cache_images=1, plot_every_s=3600)
    configs = {"whole batch": {"batch_size": args.batch},
               "accumulate_steps 4": {"batch_size": args.batch // 4, "accumulate_steps": 4},
               "nproc 2 (per process)": {"batch_size": args.batch, "nproc": 2},
               "grad_checkpointing": {"batch_size": args.batch, "grad_checkpointing": 1}}
    peaks = {}
    # each configuration in its own bench process: RUSAGE_CHILDREN keeps the largest child ever waited for
    for name, change in configs.items():
        scratch = tempfile.mkdtemp(prefix="bench_memory_")
        try:
            with open(os.path.join(scratch, "params.json"), "w") as f:
                json.dump({**params, **change}, f)
            code = (f"import sys; sys.argv = ['bench', {scratch!r}, *{args.overrides!r}]; "
                    f"from bench.bench_memory import one; one()")
            out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
            if out.returncode != 0:
                sys.exit(out.stderr[-2000:])
            peaks[name] = [float(v) for v in out.stdout.split()[-2:]]
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    base, base_s = peaks["whole batch"]
    for name, (mb, seconds) in peaks.items():
        print(f"{name:24s} peak {mb:7.0f} MB   ratio {mb / base:.2f}   whole command {seconds:5.1f} s   "
              f"ratio {seconds / base_s:.2f}")


def one():
    folder, *overrides = sys.argv[1:]
    start = time.perf_counter()
    mb = peak_mb([sys.executable, "train.py", "--model_dir", folder, *overrides])
    print(mb, time.perf_counter() - start)


if __name__ == "__main__":
    main()
