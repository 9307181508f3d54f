"""What every data set builder shares: the split names, a seeded stratified split, and building a folder in one
step."""

import os
import random
import shutil
import tempfile

SPLITS = ("train", "valid", "test")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")  # what counts as an image file


def split_indices(labels, fractions, seed):
    """Stratified split: for each class, shuffle its indices and cut them by `fractions` (train, valid, test)."""
    rng = random.Random(seed)
    by_class = {}
    for i, y in enumerate(labels):
        by_class.setdefault(y, []).append(i)
    out = {s: [] for s in SPLITS}
    for y in sorted(by_class):
        idx = by_class[y]
        rng.shuffle(idx)
        n_train = round(fractions[0] * len(idx))
        n_valid = round(fractions[1] * len(idx))
        out["train"] += idx[:n_train]
        out["valid"] += idx[n_train:n_train + n_valid]
        out["test"] += idx[n_train + n_valid:]
    return out


def build_in_place(dst, fill):
    """Run fill(tmp) on a temp folder beside dst, then rename it to dst in one step: readers never see a half-built
    data set, and a killed build leaves only a hidden .building-* folder behind."""
    parent = os.path.dirname(os.path.abspath(dst))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=".building-")
    try:
        fill(tmp)
        os.replace(tmp, dst)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not os.path.isdir(os.path.join(dst, "train")):
            raise
        # another process finished building the same data set first: use theirs
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dst
