"""What a detector's predictions are shown as: the predictor, the per-class AP report (worst first) and its figure,
and the gallery of a new best epoch: fixed valid images, then those with the most mistakes, with true boxes (green)
and detections scored >= SCORE_SHOWN (red, with class and score)."""

import math
import os

import numpy as np

from model.detection.metrics import SCORE_SHOWN


def predictor(params, tta=None):
    """predict(model, x, targets) -> {"detections", "losses"} (the losses need the targets), or the detections."""
    if tta:
        from utils import UserError

        raise UserError(f"--tta {tta}: not for detection (flipped boxes would need merging, which this template "
                        f"does not do)")
    return lambda model, x, targets=None: model(x, targets)


# ---------------------------------------------------------------- evaluate.py's report


def class_ap(coco, classes):
    """{class: its mAP@[.5:.95], or None where the split has no box of it} from torchmetrics' result."""
    ap = dict(zip([int(c) for c in np.atleast_1d(coco.get("classes", []))],
                  np.atleast_1d(coco.get("map_per_class", []))))
    return {name: float(ap[k + 1]) if k + 1 in ap and ap[k + 1] >= 0 else None for k, name in enumerate(classes)}


def evaluation_report(details, dataset, classes):
    """{"per_class": {class: {ap (mAP@[.5:.95] of that class), boxes (in the split)}}}."""
    from model.detection.data_loader import class_counts

    ap, counts = class_ap(details["coco"], classes), class_counts(dataset, len(classes))
    return {"per_class": {name: {"ap": ap[name], "boxes": counts[k]} for k, name in enumerate(classes)}}


def report_markdown(metrics, title):
    from tabulate import tabulate

    rows = sorted(((c, m) for c, m in metrics["per_class"].items() if m["ap"] is not None), key=lambda kv: kv[1]["ap"])
    table = [[name, f"{m['ap']:.4f}", m["boxes"]] for name, m in rows]
    table += [[name, "n/a", m["boxes"]] for name, m in metrics["per_class"].items() if m["ap"] is None]
    text = tabulate(table, headers=["class", "ap", "boxes"], tablefmt="github", disable_numparse=True)
    return (f"# {title}\n\n{text}\n\nmAP@[.5:.95] {metrics['map']:.4f}, mAP50 {metrics['map_50']:.4f}, mAP75 "
            f"{metrics['map_75']:.4f}, mAR@100 {metrics['mar_100']:.4f}\n")


def plot_evaluation(details, classes, model_dir, tag, title):
    """ap_<tag>.png: each class's AP."""
    from core.rundir.plots import plt, save_figure

    ap = class_ap(details["coco"], classes)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.45 * len(classes) + 1.5), 3.2))
    ax.bar(range(len(classes)), [ap[c] or 0 for c in classes], color="C0")
    ax.set_xticks(range(len(classes)), classes, rotation=30 if len(classes) > 12 else 0, fontsize=8)
    ax.set_ylabel("AP@[.5:.95]")
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    save_figure(fig, os.path.join(model_dir, f"ap_{tag}.png"))


# ---------------------------------------------------------------- the figures of a new best epoch


def best_figures(epoch, details, dataset, classes, fixed):
    """What predictions.png needs, as plain data for the plotter: boxes in pixels of the stored image."""
    from model.detection.data_loader import input_side

    side = input_side(dataset.transform)
    worst = sorted(range(len(details["mistakes"])), key=lambda i: -details["mistakes"][i])[:max(4, len(fixed) // 2)]
    gallery = []
    for group, indices in ((False, fixed), (True, worst)):
        for i in indices:
            det = details["detections"][i]
            det = det[(det[:, 5] >= 0) & (det[:, 4] >= SCORE_SHOWN)].tolist()
            gallery.append({"image": dataset.paths[i], "truth": [list(b) for b in dataset.boxes[i]],
                            "detections": det, "side": side, "mistakes": details["mistakes"][i], "worst": group})
    return {"epoch": epoch, "gallery": gallery, "classes": classes}


def draw_best(best, model_dir):
    title = f"{model_dir}: valid, best epoch {best['epoch']}"
    return [lambda: plot_gallery(best, os.path.join(model_dir, "predictions.png"), title)]


def plot_gallery(best, path, title, per_row=6, side=160):
    """Each image at side x side with its true boxes (green) and detections (red, 'class score'), titled with its
    mistakes (red: one of the worst)."""
    from matplotlib.patches import Rectangle

    from core.rundir.plots import plt, save_figure
    from model.images import load_image

    items, classes = best["gallery"], best["classes"]
    rows = max(1, math.ceil(len(items) / per_row))
    fig, axes = plt.subplots(rows, per_row, figsize=(per_row * side / 100, rows * (side + 22) / 100 + 0.3),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, item in zip(axes.flat, items):
        image = load_image(item["image"])
        h, w = image.shape[:2]
        ax.imshow(image, extent=(0, w, h, 0), interpolation="nearest")
        for x1, y1, x2, y2, _ in item["truth"]:
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color="lime", lw=1.2))
        sx, sy = w / item["side"], h / item["side"]
        for x1, y1, x2, y2, score, label in item["detections"]:
            ax.add_patch(Rectangle((x1 * sx, y1 * sy), (x2 - x1) * sx, (y2 - y1) * sy, fill=False, color="red",
                                   lw=1, ls="--"))
            ax.text(x1 * sx, y1 * sy, f"{classes[int(label) - 1]} {score:.2f}", color="red", fontsize=6, va="bottom")
        n = item["mistakes"]
        ax.set_title(f"{'worst: ' if item['worst'] else ''}{n} mistake{'' if n == 1 else 's'}", fontsize=7,
                     color="red" if item["worst"] else "black")
    fig.suptitle(f"{title}   (green: true, red: detected >= {SCORE_SHOWN})", fontsize=8)
    save_figure(fig, path)
