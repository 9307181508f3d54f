"""Figures written by train.py and evaluate.py, each saved atomically as a PNG."""

import matplotlib

matplotlib.use("Agg")  # files only: works on servers and in subprocesses without a display

import matplotlib.pyplot as plt  # noqa: E402

from utils import atomic_write  # noqa: E402

DPI = 100


def save_figure(fig, path, fixed_size=False):
    """fixed_size: the PNG is exactly figsize x DPI (galleries and matrices whose size is part of the contract);
    otherwise the canvas is cropped to what was drawn."""
    if fixed_size:
        fig.tight_layout()  # fit the drawing to the canvas, not the canvas to the drawing
    bbox = None if fixed_size else "tight"
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=DPI, bbox_inches=bbox), mode="wb")
    plt.close(fig)


def plot_history(rows, path, title=""):
    """One panel per metric (train and valid curves), plus the learning rate; from history.json rows."""
    names = [k for k in rows[0]["val"] if k in rows[0]["train"]]
    epochs = [r["epoch"] for r in rows]
    fig, axes = plt.subplots(1, len(names) + 1, figsize=(3.6 * (len(names) + 1), 3.2), squeeze=False)
    for ax, name in zip(axes[0], names):
        ax.plot(epochs, [r["train"].get(name) for r in rows], "o-", ms=3, label="train")
        ax.plot(epochs, [r["val"].get(name) for r in rows], "o-", ms=3, label="valid")
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0][0].legend()
    lr_ax = axes[0][-1]
    lr_ax.plot(epochs, [r["lr"][-1] for r in rows], "o-", ms=3, color="gray")
    lr_ax.set_title("learning rate (head, end of epoch)")
    lr_ax.set_xlabel("epoch")
    lr_ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    save_figure(fig, path)


def plot_confusion(cm, classes, path, title=""):
    """Confusion matrix with counts in the cells (rows: true class, columns: predicted)."""
    k = len(classes)
    size = max(4.0, 0.45 * k + 2)
    fig, ax = plt.subplots(figsize=(size, size))
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
    save_figure(fig, path, fixed_size=True)


def plot_gradients(rows, path):
    """Per-layer gradient norm and update/weight ratio over epochs (log scale), from history.json rows."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    layers = list(rows[-1]["grad_norm"])
    epochs = [r["epoch"] for r in rows if r.get("grad_norm")]
    colours = plt.get_cmap("viridis")
    for ax, kind, title in ((axes[0], "grad_norm", "gradient norm"), (axes[1], "update_ratio", "update / weight")):
        for i, name in enumerate(layers):
            values = [r[kind].get(name) for r in rows if r.get(kind)]
            ax.plot(epochs, values, color=colours(i / max(1, len(layers) - 1)), lw=1,
                    label=name if len(layers) <= 12 else None)
        ax.set_yscale("log")
        ax.set_title(f"{title} per layer (first: dark, last: light)")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    if len(layers) <= 12:
        axes[0].legend(fontsize=6)
    save_figure(fig, path)


def plot_gallery(items, slots, path, title="", cols=8):
    """A grid of `slots` cells (the items, then blanks) titled 'true → predicted (confidence)', green when right and
    red when wrong. Its size depends only on `slots`: (1.7 x cols) x (1.9 x rows) inches at DPI."""
    from PIL import Image

    rows = max(1, -(-slots // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.7 * cols, 1.9 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (image_path, text, correct) in zip(axes.flat, items):
        with Image.open(image_path) as im:
            ax.imshow(im.convert("RGB"))
        ax.set_title(text, fontsize=7, color="green" if correct else "red")
    fig.suptitle(title, fontsize=9)
    save_figure(fig, path, fixed_size=True)
