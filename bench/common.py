"""What the whole-process benchmarks share: their command line, and one run of a script in a fresh folder."""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import model.tasks  # noqa: E402, F401  (registers the tasks in core/tasks.py)
from core.tasks import ensure_data  # noqa: E402


def parse_args(doc, rounds, experiments=("base_model", "resnet18"), more=None):
    """--experiments, --rounds, --data_dir and KEY=VALUE overrides (and what more(parser) adds); builds the data set
    if it is missing."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--experiments", nargs="+", default=list(experiments))
    if more:
        more(ap)
    ap.add_argument("--rounds", type=int, default=rounds)
    ap.add_argument("--data_dir", help="default: each experiment's task's own data set (built on first use)")
    ap.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    args = ap.parse_args()
    os.chdir(ROOT)
    if args.data_dir:
        ensure_data(os.path.relpath(args.data_dir))
    return args


def run_script(script, experiment, scratch, data_dir, overrides):
    """Run `script` on a fresh copy of experiments/EXPERIMENT/params.json; (wall seconds, folder). Exits on failure."""
    folder = tempfile.mkdtemp(dir=scratch)
    shutil.copy(os.path.join(ROOT, "experiments", experiment, "params.json"), folder)
    cmd = [sys.executable, script, "--model_dir", folder, *(["--data_dir", data_dir] if data_dir else []), *overrides]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{os.path.basename(script)} failed on {experiment}: {proc.stderr.strip().splitlines()[-1:]}")
    return elapsed, folder
