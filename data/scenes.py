"""Digit scenes: the default offline segmentation data set (M2NIST-style), built from scikit-learn's digits.

    python data/build_dataset.py --task segmentation      # data/digit_scenes, or let train.py build it on first use

Each scene is a noisy dark RGB picture holding 1-3 real 8x8 digit scans, upscaled to random sizes and pasted at
random places in random bright colours. Its mask (PNG mode "L", same size) holds 0 for background and digit + 1 on
each digit's strokes, so 11 classes; boxes.json keeps each digit's tight box for detection:

    DST/classes.json                          ["background", "0", ..., "9"]
    DST/{train,valid,test}/images/NAME.png    RGB
    DST/{train,valid,test}/masks/NAME.png     same stem, class index per pixel
    DST/{train,valid,test}/boxes.json         {NAME: [{"bbox": [x, y, w, h], "category_id": d + 1, "digit": d,
                                                      "scan": i}, ...]}  (COCO boxes, in pixels; i: load_digits index)

The source scans are split (stratified, seeded) before any scene is drawn, so valid and test scenes hold no scan
that a train scene holds. Every scene has its own seeded generator: the same arguments give byte-identical files,
and a smaller build's scenes are the first scenes of a bigger one.
"""

import json
import os

import numpy as np

from data.folders import SPLITS, build_in_place, split_indices
from utils import UserError

__all__ = ["CLASSES", "build_scenes", "build_scene_set", "source_splits", "render_scene"]
CLASSES = ["background"] + [str(d) for d in range(10)]
SOURCE_FRACTIONS = (0.7, 0.15, 0.15)  # of the 1,797 scans, before any scene is drawn
MAX_DIGITS = 3
SCALE = (0.3, 0.55)  # a digit's side, as a fraction of the scene's side
# a pixel is the digit's stroke where its upscaled intensity is above this fraction of its maximum: there the pixel is
# nearer the digit's colour than the background's; 0.35 fills the loops of 4, 8 and 9, 0.6 breaks thin strokes
STROKE = 0.5
MAX_OVERLAP = 0.15  # of the smaller of two digit squares; a digit that cannot be placed so is left out
PLACE_TRIES = 20


def source_splits(labels, seed):
    """{split: indices into labels}: the scans each split's scenes may use, disjoint across splits."""
    return split_indices(labels, SOURCE_FRACTIONS, seed)


def scene_rng(seed, split, k):
    """Scene k of a split draws only from its own generator, so scenes do not depend on the counts."""
    return np.random.default_rng([seed, SPLITS.index(split), k])


def place_squares(rng, size, n, scale=SCALE):
    """Up to n (x, y, side) squares inside size x size, each pair overlapping at most MAX_OVERLAP of the smaller:
    rejection sampling, PLACE_TRIES per square; the first square always fits."""
    placed = []
    for _ in range(n):
        for _ in range(PLACE_TRIES):
            side = max(2, round(rng.uniform(*scale) * size))
            x, y = (int(v) for v in rng.integers(0, size - side + 1, size=2))
            if all(overlap((x, y, side), p) <= MAX_OVERLAP for p in placed):
                placed.append((x, y, side))
                break
    return placed


def overlap(a, b):
    """Intersection of two squares (x, y, side) over the area of the smaller one."""
    w = min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0])
    h = min(a[1] + a[2], b[1] + b[2]) - max(a[1], b[1])
    return max(w, 0) * max(h, 0) / min(a[2], b[2]) ** 2


def background(rng, size):
    """A dark, slightly tinted RGB canvas (float, 0..255) with a mild linear gradient and Gaussian noise."""
    base = rng.uniform(10, 60) + rng.uniform(-8, 8, size=3)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = np.linspace(-0.5, 0.5, size)
    gradient = rng.uniform(0, 40) * (np.cos(angle) * ramp[None, :] + np.sin(angle) * ramp[:, None])
    noise = rng.normal(0, rng.uniform(3, 12), size=(size, size, 3))
    return base + gradient[:, :, None] + noise


def bright_colour(rng):
    """An RGB colour (0..255) of random hue, saturation 0.3..1 and value 0.75..1."""
    h, s, v = rng.uniform(0, 6), rng.uniform(0.3, 1.0), rng.uniform(0.75, 1.0)
    rgb = np.clip(np.abs((h - np.array([3.0, 1.0, 5.0])) % 6 - 3) - 1, 0, 1)  # the hue's fully saturated colour
    return 255.0 * v * (1 - s + s * rgb)


def upscale(scan, side):
    """An 8x8 scan (0..16) as a side x side intensity map (0..1, its maximum 1), bicubic."""
    from PIL import Image

    img = Image.fromarray((scan * (255.0 / 16.0)).round().astype(np.uint8), mode="L")
    a = np.asarray(img.resize((side, side), Image.BICUBIC), dtype=np.float64)
    return a / max(a.max(), 1.0)


def render_scene(rng, size, scans, digits, scale=SCALE):
    """(RGB uint8 image, uint8 mask, [(digit, bbox)]) for one scene: digits[i] drawn from scans[i] until the squares
    run out. A later digit wins where it overlaps an earlier one, in the image and the mask alike."""
    image = background(rng, size)
    mask = np.zeros((size, size), np.uint8)
    drawn = []
    for (x, y, side), scan, digit in zip(place_squares(rng, size, len(scans), scale), scans, digits):
        alpha = upscale(scan, side)
        window = image[y:y + side, x:x + side]
        window += alpha[:, :, None] * (bright_colour(rng) - window)
        stroke = alpha > STROKE
        mask[y:y + side, x:x + side][stroke] = digit + 1
        rows, cols = np.nonzero(stroke)
        bbox = [x + int(cols.min()), y + int(rows.min()), int(np.ptp(cols)) + 1, int(np.ptp(rows)) + 1]
        drawn.append((digit, bbox))
    return np.clip(image, 0, 255).round().astype(np.uint8), mask, drawn


def draw_scenes(split, count, size, pool, scans, labels, seed, scale=SCALE, max_digits=MAX_DIGITS):
    """Yield (name, image, mask, boxes) for a split's scenes, each made of scans drawn from pool: 1 to max_digits
    digits, each a square whose side is a fraction of the scene's in `scale`."""
    for k in range(count):
        rng = scene_rng(seed, split, k)
        chosen = [int(pool[j]) for j in rng.integers(0, len(pool), size=int(rng.integers(1, max_digits + 1)))]
        image, mask, drawn = render_scene(rng, size, [scans[i] for i in chosen], [labels[i] for i in chosen], scale)
        boxes = [{"bbox": bbox, "category_id": d + 1, "digit": d, "scan": i} for (d, bbox), i in zip(drawn, chosen)]
        yield f"scene_{k:05d}", image, mask, boxes


def write_scenes(folder, scenes):
    """folder/images/NAME.png, folder/masks/NAME.png and folder/boxes.json, one line per scene."""
    from PIL import Image

    for sub in ("images", "masks"):
        os.makedirs(os.path.join(folder, sub))
    lines = []
    for name, image, mask, boxes in scenes:
        Image.fromarray(image, mode="RGB").save(os.path.join(folder, "images", name + ".png"))
        Image.fromarray(mask, mode="L").save(os.path.join(folder, "masks", name + ".png"))
        lines.append(f"{json.dumps(name)}: {json.dumps(boxes)}")
    with open(os.path.join(folder, "boxes.json"), "w") as f:
        f.write("{\n" + ",\n".join(lines) + "\n}\n")


def build_scene_set(dst, sizes, counts, seed, write_split):
    """What the scene builders share: refuse an existing dst or a scene under 8 px, draw each split's scans from
    scikit-learn's digits (source_splits) and build dst in one step (build_in_place). sizes: {split: pixels};
    write_split(folder, split, count, size, pool, scans, labels) fills one split's folder. Returns dst."""
    from sklearn.datasets import load_digits

    if os.path.exists(dst):
        raise UserError(f"{dst}: already exists; remove it first to rebuild")
    if min(sizes.values()) < 8:
        raise UserError(f"scene size {min(sizes.values())}: must be >= 8 pixels")
    if len(counts) != len(SPLITS) or min(counts) < 0:
        raise UserError(f"scene counts {counts}: expected three non-negative numbers TRAIN,VALID,TEST")
    digits = load_digits()
    labels = [int(y) for y in digits.target]
    pools = source_splits(labels, seed)

    def fill(tmp):
        for split, count in zip(SPLITS, counts):
            write_split(os.path.join(tmp, split), split, count, sizes[split], pools[split], digits.images, labels)

    return build_in_place(dst, fill)


def build_scenes(dst, size=64, test_size=None, counts=(1200, 300, 300), seed=230):
    """Build the digit scenes in dst (never over an existing one): counts scenes per split, size x size pixels
    (test: test_size x test_size when given, to test at another resolution), and classes.json. Returns dst."""

    def write_split(folder, split, count, size, pool, scans, labels):
        write_scenes(folder, draw_scenes(split, count, size, pool, scans, labels, seed))
        if split == SPLITS[0]:
            with open(os.path.join(os.path.dirname(folder), "classes.json"), "w") as f:
                f.write(json.dumps(CLASSES) + "\n")

    return build_scene_set(dst, {"train": size, "valid": size, "test": test_size or size}, counts, seed, write_split)
