"""What predict.py reads: new, unlabelled images from a folder, a glob, a list file or one file, streamed in batches.

    name, root, paths = image_sources("photos/")                  # every image under photos/, sorted
    loader = predict_loader(paths, task, eval_transform, batch)   # (x, indices, sizes) batches; None for unreadable

Each image is decoded, then put through the run's own evaluation transform (the preprocessing it was validated
with: resize and normalisation come from the checkpoint's params, never retyped). An image that cannot be read
yields its index with no tensor, so one bad file is reported and the rest are still predicted.
"""

import glob
import os

import torch

from data.folders import IMAGE_EXTS
from utils import UserError


def image_sources(source):
    """(name, root, [image paths]) of `source`: a folder (its images, sub-folders too), a glob pattern, a text file
    listing one path per line (relative to the list), or one image. name names the output folder; root is what
    each image's output path is relative to."""
    if os.path.isdir(source):
        paths = [os.path.join(d, f) for d, _, files in os.walk(source) for f in files if f.lower().endswith(IMAGE_EXTS)]
        root, name = source, os.path.basename(os.path.abspath(source)) or "root"
    elif os.path.isfile(source) and source.lower().endswith(IMAGE_EXTS):
        paths, root, name = [source], os.path.dirname(source), os.path.splitext(os.path.basename(source))[0]
    elif os.path.isfile(source):
        paths, root, name = listed(source), None, os.path.splitext(os.path.basename(source))[0]
    elif glob.has_magic(source):
        paths = [p for p in glob.glob(source, recursive=True) if p.lower().endswith(IMAGE_EXTS) and os.path.isfile(p)]
        root = literal_prefix(source)  # fixed, whatever matches: output paths stay put between runs
        name = "".join(c if c.isalnum() or c in "-_." else "_" for c in source).strip("_.") or "glob"
    else:
        raise UserError(f"--source {source}: no such folder, file or glob pattern")
    if not paths:
        raise UserError(f"--source {source}: no images ({', '.join(IMAGE_EXTS)})")
    paths = sorted({os.path.abspath(p) for p in paths})  # one key per file, however the source spelled it
    return name, root or os.path.commonpath([os.path.dirname(p) for p in paths]), paths


def literal_prefix(pattern):
    """The folder a glob pattern starts from: its leading parts without wildcards ("photos/**/*.png" -> photos)."""
    parts = []
    for part in pattern.split(os.sep):
        if glob.has_magic(part):
            break
        parts.append(part)
    return os.sep.join(parts) or "."


def listed(path):
    """The image paths a list file names, one a line (blank lines and # comments skipped), relative to the list."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = [line.strip() for line in f]
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"--source {path}: cannot read the list ({type(e).__name__})") from None
    here = os.path.dirname(path)
    paths = [p if os.path.isabs(p) else os.path.join(here, p) for p in lines if p and not p.startswith("#")]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise UserError(f"--source {path}: lists {len(missing)} file(s) that do not exist, the first {missing[0]}")
    return [p for p in paths if p.lower().endswith(IMAGE_EXTS)]


class PredictImages(torch.utils.data.Dataset):
    """(tensor or None, index, (width, height)) for each path: the image through `preprocess(image)`."""

    def __init__(self, paths, preprocess):
        self.paths, self.preprocess = paths, preprocess

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        from core.data.images import load_image

        try:
            image = load_image(self.paths[i])
        except UserError:  # reported by predict.py, which goes on with the others
            return None, i, None
        return self.preprocess(image), i, (image.shape[1], image.shape[0])


def collate(batch):
    """Readable images stacked (padded to the batch's largest, for a segmenter's own-size images) with their
    indices and sizes, and the indices of the unreadable ones."""
    good = [b for b in batch if b[0] is not None]
    bad = [i for x, i, _ in batch if x is None]
    if not good:
        return None, [], [], bad
    h, w = max(x.shape[1] for x, _, _ in good), max(x.shape[2] for x, _, _ in good)
    x = torch.zeros(len(good), good[0][0].shape[0], h, w, dtype=good[0][0].dtype)
    for k, (t, _, _) in enumerate(good):
        x[k, :, :t.shape[1], :t.shape[2]] = t
    return x, [i for _, i, _ in good], [s for _, _, s in good], bad


def predict_loader(paths, preprocess, batch_size, num_workers=0, pin_memory=False, by_size=False):
    """Batches (x, indices, sizes, unreadable indices) in path order; by_size: each batch holds images of one size
    (a segmenter's), so no prediction sees padding and one huge image is not padded onto small ones."""
    batches = size_batches(paths, batch_size) if by_size else None
    return torch.utils.data.DataLoader(PredictImages(paths, preprocess), batch_size=1 if batches else batch_size,
                                       batch_sampler=batches, shuffle=False, num_workers=num_workers,
                                       collate_fn=collate, pin_memory=pin_memory, persistent_workers=num_workers > 0)


def size_batches(paths, batch_size):
    """[[indices]]: images of one (header) size together, at most batch_size each; unreadable headers alone."""
    from core.data.images import image_size

    groups = {}
    for i, path in enumerate(paths):
        try:
            size = image_size(path)
        except UserError:
            size = ("unreadable", i)
        groups.setdefault(size, []).append(i)
    return [idx[k:k + batch_size] for idx in groups.values() for k in range(0, len(idx), batch_size)]
