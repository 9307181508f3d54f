"""The repository root, defined once: train.py, model/ and the cell server are found from here wherever a command
runs (a search started from another directory, a Slurm task, a forked cell)."""

import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(ROOT, "train.py")


def repo_path(path):
    """A path a params file names (data_dir, init_weights_path, pretrained_path): absolute as it is, else relative to
    the repository, so a run means the same file whatever directory it is started from."""
    return path if os.path.isabs(path) else os.path.join(ROOT, path)
