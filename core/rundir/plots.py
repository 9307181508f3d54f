"""Figures written by train.py and evaluate.py, each saved atomically as a PNG."""

import functools
import os
from typing import NamedTuple

import matplotlib

matplotlib.use("Agg")  # files only: works on servers and in subprocesses without a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from utils import atomic_write  # noqa: E402

DPI = 100


def save_figure(fig, path, fixed_size=False):
    """fixed_size: the PNG is exactly figsize x DPI, laid out by the figure itself (see `margins`); otherwise the
    canvas is cropped to what was drawn, which costs a second drawing pass."""
    bbox = None if fixed_size else "tight"
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=DPI, bbox_inches=bbox), mode="wb")
    plt.close(fig)


def bar_per_class(path, classes, values, ylabel, title, color="C0", ylim=None, tick_width=0.45, rotate_over=12):
    """evaluate.py's per-class bar chart (detection's AP, keypoints' error): one bar per class, None drawn as 0."""
    fig, ax = plt.subplots(figsize=(max(4.0, tick_width * len(classes) + 1.5), 3.2))
    ax.bar(range(len(classes)), [v or 0 for v in values], color=color)
    ax.set_xticks(range(len(classes)), classes, rotation=30 if len(classes) > rotate_over else 0, fontsize=8)
    ax.set_ylabel(ylabel)
    if ylim:
        ax.set_ylim(*ylim)
    ax.set_title(title, fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    save_figure(fig, path)


def margins(fig, left, bottom, right, top, wspace=0.2):
    """Fixed margins in inches: a layout that needs no extra drawing pass (tight layouts and tight bounding boxes
    draw the figure twice), which halves the cost of the figures a run redraws."""
    width, height = fig.get_size_inches()
    fig.subplots_adjust(left=left / width, right=1 - right / width, bottom=bottom / height, top=1 - top / height,
                        wspace=wspace)


def plot_history(rows, path, title="", checks=()):
    """One panel per metric (train and valid curves), plus the learning rate, three panels a row; from history.json
    rows. A metric a run does not report for training (accuracy of mixed batches) has only its valid curve.
    checks: validations within epochs (val_every_batches), a thinner valid curve through them and the epochs'."""
    names = list((rows or checks)[0]["val"])
    epochs = [r["epoch"] for r in rows]
    finer = sorted([*rows, *checks], key=lambda r: r["epoch"])
    n_cols = min(3, len(names) + 1)
    n_rows = -(-(len(names) + 1) // n_cols)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(3.6 * n_cols, 2.9 * n_rows + 0.3), squeeze=False)
    panels = list(axes.flat)
    for ax, name in zip(panels, names):
        if rows and name in rows[0]["train"]:
            ax.plot(epochs, [r["train"].get(name) for r in rows], "o-", ms=3, color="C0", label="train")
        ax.plot(epochs, [r["val"].get(name) for r in rows], "o-", ms=3, color="C1", label="valid")  # same in all
        if checks:
            ax.plot([r["epoch"] for r in finer], [r["val"].get(name) for r in finer], ".-", ms=2, lw=0.8,
                    color="C1", alpha=0.5, label="valid, within epochs")
        ax.set_title(name)
        ax.grid(alpha=0.3)
    fig.legend(*panels[0].get_legend_handles_labels(), loc="upper right", ncol=2, frameon=False, fontsize=8)
    lr_ax = panels[len(names)]
    lr_ax.plot([r["epoch"] for r in finer], [r["lr"][-1] for r in finer], "o-", ms=3 if not checks else 1.5,
               color="gray")
    lr_ax.set_title("learning rate (head)")
    lr_ax.grid(alpha=0.3)
    boundaries = stage_boundaries(rows)
    for ax in panels[:len(names) + 1]:
        epoch_axis(ax)
        for x, stage in boundaries:  # a plan's stages: where each begins
            ax.axvline(x, color="gray", ls="--", lw=0.8)
            ax.annotate(f"stage {stage}", (x, 1), xycoords=("data", "axes fraction"), xytext=(2, -2),
                        textcoords="offset points", va="top", fontsize=7, color="gray")
    for ax in panels[len(names) + 1:]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    margins(fig, left=0.55, bottom=0.5, right=0.15, top=0.75 if title else 0.5, wspace=0.3)
    fig.subplots_adjust(hspace=0.55)
    save_figure(fig, path, fixed_size=True)


def epoch_axis(ax):
    """An x axis of epochs, ticked at whole ones only: a 2-epoch run's axis reads 1, 2 rather than 1.0, 1.2, ..."""
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def stage_boundaries(rows):
    """[(x, stage)]: halfway between the last epoch of a stage and the first of the next, in history rows."""
    return [(r["epoch"] - 0.5, r["stage"]) for prev, r in zip(rows, rows[1:])
            if "stage" in r and r["stage"] != prev.get("stage")]


def plot_confusion(cm, classes, path, title=""):
    """Confusion matrix with counts in the cells (rows: true class, columns: predicted)."""
    k = len(classes)
    size = max(4.0, 0.45 * k + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    label = 0.45 + 0.075 * max(len(str(c)) for c in classes)  # room for the longest class name (10 pt)
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(k), classes, rotation=90 if k > 10 else 0)
    ax.set_yticks(range(k), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if k <= 30:
        top = cm.max() or 1
        for i in range(k):
            for j in range(k):
                ax.text(j, i, int(cm[i][j]), ha="center", va="center", fontsize=8,
                        color="white" if cm[i][j] > top / 2 else "black")
    ax.set_title(title)
    margins(fig, left=label, bottom=label if k > 10 else 0.6, right=0.15, top=0.4)
    save_figure(fig, path, fixed_size=True)


def plot_gradients(rows, path):
    """Per-layer gradient norm and update/weight ratio over epochs (log scale), from history.json rows."""
    layers = list(rows[-1]["grad_norm"])
    fig, axes = plt.subplots(1, 2, figsize=(13.8 if len(layers) <= 12 else 12, 4))
    epochs = [r["epoch"] for r in rows if r.get("grad_norm")]
    colours = plt.get_cmap("viridis")
    for ax, kind, title in ((axes[0], "grad_norm", "gradient norm"), (axes[1], "update_ratio", "update / weight")):
        for i, name in enumerate(layers):
            values = [r[kind].get(name) for r in rows if r.get(kind)]
            ax.plot(epochs, values, color=colours(i / max(1, len(layers) - 1)), lw=1,
                    label=name if len(layers) <= 12 else None)
        ax.set_yscale("log")
        ax.set_title(f"{title} per layer (first: dark, last: light)")
        epoch_axis(ax)
        ax.grid(alpha=0.3)
    named = len(layers) <= 12
    if named:  # beside the panels, never over a curve
        axes[1].legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
    margins(fig, left=0.85, bottom=0.5, right=1.9 if named else 0.15, top=0.35, wspace=0.22)
    save_figure(fig, path, fixed_size=True)


def plot_gallery(items, slots, path, title="", cols=8):
    """A grid of `slots` cells (the items, then blanks) titled 'true → predicted (confidence)', green when right and
    red when wrong. Its size depends only on `slots`: (1.7 x cols) x (1.9 x rows) inches at DPI."""
    rows = max(1, -(-slots // cols))
    width, height = int(1.7 * cols * DPI), int(1.9 * rows * DPI)  # pixels, one per pixel of the PNG
    top, band = int(0.3 * DPI), int(0.25 * DPI)  # the figure's title, each cell's title
    cell_w, cell_h = width // cols, (height - top) // rows
    side = min(cell_w, cell_h - band) - 8
    mosaic = np.full((height, width, 3), 255, dtype=np.uint8)
    cells = [(top + (k // cols) * cell_h, (k % cols) * cell_w) for k in range(min(len(items), rows * cols))]
    labels = [Text(width / 2, top / 2, title, size=9)]
    for (y, x), (image_path, text, correct) in zip(cells, items):
        left = x + (cell_w - side) // 2
        mosaic[y + band:y + band + side, left:left + side] = read_tile(image_path, side)
        labels.append(Text(x + cell_w / 2, y + band / 2, text, "green" if correct else "red"))
    save_mosaic(mosaic, labels, path)


def mosaic_grid(n, per_row, cell_w, cell_h, top):
    """A white canvas for a gallery of n cells of cell_w x cell_h pixels, per_row to a row, under a title band `top`
    pixels high; and each cell's top-left corner (y, x)."""
    rows = max(1, -(-n // per_row))
    canvas = np.full((top + rows * cell_h, per_row * cell_w, 3), 255, dtype=np.uint8)
    return canvas, [(top + (k // per_row) * cell_h, (k % per_row) * cell_w) for k in range(n)]


class Text(NamedTuple):
    """A label on a mosaic, at pixel (x, y); anchor is Pillow's: "mm" centres it, "ld" puts its bottom-left there."""
    x: float
    y: float
    text: str
    colour: str = "black"
    size: float = 7  # points, as matplotlib's fontsize
    anchor: str = "mm"


TEXT_SHARE, TEXT_MIN_PX = 1 / 16, 12  # a picture's label: this share of its shorter side, at least this many pixels


def text_size(picture):
    """Text.size (points) for labels on an H x W x 3 `picture` (predict.py's drawings): proportional to its shorter
    side, so a label reads alike on a 256-px drawing and on a 4000-px photo seen whole, and never below
    TEXT_MIN_PX."""
    return max(TEXT_MIN_PX, TEXT_SHARE * min(picture.shape[:2])) * 72 / DPI


def line_height(size):
    """Pixels from one line of Text of `size` points to the next."""
    return round(1.3 * size * DPI / 72)


def save_mosaic(mosaic, labels, path):
    """A gallery: tiles already pasted into one RGB array, and Text labels over them, written with Pillow alone.
    A matplotlib figure around the same pixels costs three times as much (an imshow resamples the whole mosaic
    even at one figure pixel per image pixel), and the galleries are the figures a run redraws most."""
    from PIL import Image, ImageDraw

    image = Image.fromarray(mosaic)
    draw = ImageDraw.Draw(image)
    for label in labels:
        draw.text((label.x, label.y), label.text, fill=label.colour, font=font(label.size), anchor=label.anchor)
    atomic_write(path, lambda f: image.save(f, format="png"), mode="wb")


@functools.cache
def font(points):
    """matplotlib's own DejaVu Sans at `points` for DPI: the galleries' text matches the other figures'."""
    from PIL import ImageFont

    path = os.path.join(matplotlib.get_data_path(), "fonts", "ttf", "DejaVuSans.ttf")
    return ImageFont.truetype(path, round(points * DPI / 72))


def read_tile(image_path, side):
    from PIL import Image

    with Image.open(image_path) as im:
        return np.asarray(im.convert("RGB").resize((side, side), Image.NEAREST))
