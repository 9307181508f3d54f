"""The repository root, defined once: train.py, model/ and the cell server are found from here wherever a command
runs (a search started from another directory, a Slurm task, a forked cell)."""

import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(ROOT, "train.py")
