"""The default classification data set: scikit-learn's bundled handwritten digits (1,797 real 8x8 scans, 10 classes)
as PNGs in the class-folder layout, DST/{train,valid,test}/<class>/*.png; built offline, stratified and seeded, so
the same call always gives the same files. data/build_dataset.py writes other images in the same layout."""

import os
import random

from data.folders import build_in_place, split_indices
from utils import UserError


def keep_fractions(labels, keep, seed):
    """The indices of `labels` left after keeping only the fraction keep[c] of each class c named in `keep` (a
    seeded choice, at least one image), all of the other classes: an imbalanced variant of a data set."""
    rng = random.Random(seed)
    by_class = {}
    for i, y in enumerate(labels):
        by_class.setdefault(str(y), []).append(i)
    unknown = sorted(set(keep) - set(by_class))
    if unknown:
        raise UserError(f"--imbalance: no class named {', '.join(unknown)} (classes: {', '.join(sorted(by_class))})")
    kept = []
    for c, idx in by_class.items():
        n = max(1, round(keep.get(c, 1.0) * len(idx)))
        kept += rng.sample(idx, n) if n < len(idx) else idx
    return sorted(kept)


def write_split(images, labels, names, splits, dst, size):
    """Write every image as a size x size PNG into DST/<split>/<class>/, built in place (build_in_place)."""
    from PIL import Image

    def fill(tmp):
        for split, idx in splits.items():
            for i in idx:
                folder = os.path.join(tmp, split, str(labels[i]))
                os.makedirs(folder, exist_ok=True)
                img = images(i).resize((size, size), Image.BICUBIC)
                img.save(os.path.join(folder, names[i] + ".png"))

    build_in_place(dst, fill)


def build_digits(dst, size=32, fractions=(0.7, 0.15, 0.15), seed=230, keep=None):
    """scikit-learn's digits (0..16 grey levels) as PNGs, upscaled from 8x8 to size x size. keep: {class name:
    fraction of its images to keep}, before splitting (so every split is imbalanced alike)."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = (digits.images * (255.0 / 16.0)).round().astype(np.uint8)
    labels = [int(y) for y in digits.target]
    names = [f"digit_{i:04d}" for i in range(len(labels))]
    kept = keep_fractions(labels, keep or {}, seed)
    splits = {s: [kept[i] for i in idx] for s, idx in split_indices([labels[i] for i in kept], fractions, seed).items()}
    write_split(lambda i: Image.fromarray(pixels[i], mode="L"), labels, names, splits, dst, size)
    return dst
