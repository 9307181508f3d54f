"""Digit tags: the default offline multi-label data set, digit scenes of data/scenes.py labelled with the digits in
them.

    python data/build_dataset.py --task multilabel      # data/digit_tags, or let train.py build it on first use

    DST/{train,valid,test}/images/NAME.png     RGB, 32 x 32: 1-3 distinct digits on a noisy dark canvas
    DST/{train,valid,test}/labels.csv          image,labels: "scene_00000.png,3 7", the digits drawn, space-separated

A scene names each digit once, so its labels are a set; a digit that could not be placed without overlapping the
others too much is left out of the image and of its labels. The scans are split as for the other digit scenes.
"""

import csv
import os

from data.folders import SPLITS
from data.scenes import MAX_DIGITS, build_scene_set, render_scene, scene_rng


def draw_tags(split, count, size, pool, scans, labels, seed):
    """Yield (name, image, [digits drawn, sorted]) for a split's scenes of 1-3 distinct digits."""
    by_digit = {d: [int(i) for i in pool if labels[i] == d] for d in range(10)}
    for k in range(count):
        rng = scene_rng(seed, split, k)
        digits = [int(d) for d in rng.choice(10, size=int(rng.integers(1, MAX_DIGITS + 1)), replace=False)]
        chosen = [by_digit[d][int(rng.integers(0, len(by_digit[d])))] for d in digits]
        image, _, drawn = render_scene(rng, size, [scans[i] for i in chosen], digits)
        yield f"scene_{k:05d}", image, sorted(d for d, _ in drawn)


def write_tags(folder, scenes):
    from PIL import Image

    os.makedirs(os.path.join(folder, "images"))
    rows = [["image", "labels"]]
    for name, image, digits in scenes:
        Image.fromarray(image, mode="RGB").save(os.path.join(folder, "images", name + ".png"))
        rows.append([name + ".png", " ".join(map(str, digits))])
    with open(os.path.join(folder, "labels.csv"), "w", newline="") as f:
        csv.writer(f).writerows(rows)


def build_tags(dst, size=32, counts=(1500, 300, 300), seed=230):
    """Build the digit tags in dst (never over an existing one). Returns dst."""

    def write_split(folder, split, count, size, pool, scans, labels):
        write_tags(folder, draw_tags(split, count, size, pool, scans, labels, seed))

    return build_scene_set(dst, dict.fromkeys(SPLITS, size), counts, seed, write_split)
