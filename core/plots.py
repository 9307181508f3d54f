"""Figures written by train.py and evaluate.py, each saved atomically as a PNG."""

import matplotlib

matplotlib.use("Agg")  # files only: works on servers and in subprocesses without a display

import matplotlib.pyplot as plt  # noqa: E402

from utils import atomic_write  # noqa: E402


def save_figure(fig, path):
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100, bbox_inches="tight"), mode="wb")
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
    save_figure(fig, path)
