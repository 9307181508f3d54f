"""What a keypoint model's predictions are shown as: the predictor, the per-point evaluation report (error and PCK
of each named point, worst first) and its figure, and the gallery of true and predicted points of a new best epoch
(fixed valid examples, then the worst by mean error)."""

import os

import numpy as np

from model.keypoints.metrics import PCK_RADIUS

COLOURS = ((230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212))  # one per point, cycled


def predictor(params, tta=None):
    """predict(model, x) -> points [B,K,2]. No test-time augmentation: a mirrored image swaps left and right
    points, which needs a symmetry map this template does not keep."""
    if tta:
        from utils import UserError

        raise UserError(f"--tta {tta}: not for keypoints (a mirrored image swaps left and right points)")
    return lambda model, x, targets=None: model(x)


# ---------------------------------------------------------------- evaluate.py's report


def per_point(details, classes):
    error, labelled = details["error"], details["labelled"]
    rows = {}
    for k, name in enumerate(classes):
        n = int(labelled[:, k].sum())
        rows[name] = {"error": (error[:, k] * labelled[:, k]).sum().item() / n if n else None, "points": n}
    return rows


def evaluation_report(details, dataset, classes):
    """{"per_point": {name: {error (pixels), points (labelled)}}}."""
    return {"per_point": per_point(details, classes)}


def report_markdown(metrics, title):
    """The per-point table, largest error first, then the overall error and PCK."""
    from tabulate import tabulate

    rows = sorted(((n, m) for n, m in metrics["per_point"].items() if m["error"] is not None),
                  key=lambda kv: -kv[1]["error"])
    table = [[name, f"{m['error']:.3f}", m["points"]] for name, m in rows]
    text = tabulate(table, headers=["point", "error (px)", "labelled"], tablefmt="github", disable_numparse=True)
    return (f"# {title}\n\n{text}\n\nmean point error {metrics['point_error']:.3f} px, PCK@{PCK_RADIUS} of the "
            f"image diagonal {metrics['pck']:.4f}\n")


def plot_evaluation(details, classes, model_dir, tag, title):
    """errors_<tag>.png: each point's mean error in pixels."""
    from core.rundir.plots import bar_per_class

    rows = per_point(details, classes)
    colours = [np.array(COLOURS[k % len(COLOURS)]) / 255 for k in range(len(classes))]  # as the gallery's dots
    bar_per_class(os.path.join(model_dir, f"errors_{tag}.png"), classes, [rows[c]["error"] for c in classes],
                  "mean error (px)", title, color=colours, tick_width=0.7, rotate_over=6)


# ---------------------------------------------------------------- the figures of a new best epoch


def best_figures(epoch, details, dataset, classes, fixed):
    """What predictions.png needs, as plain data for the plotter process: fixed examples, then the worst."""
    labelled = details["labelled"].float()
    error = (details["error"] * labelled).sum(1) / labelled.sum(1).clamp(min=1)
    worst = sorted(range(len(error)), key=lambda i: -error[i].item())[:max(4, len(fixed) // 2)]
    gallery = [{"image": dataset.paths[i], "truth": [list(p) for p in dataset.targets[i]],
                "prediction": details["prediction"][i].tolist(), "error": error[i].item(), "worst": group}
               for group, indices in ((False, fixed), (True, worst)) for i in indices]
    return {"epoch": epoch, "gallery": gallery, "classes": classes}


def draw_best(best, model_dir):
    title = f"{model_dir}: valid, best epoch {best['epoch']}"
    return [lambda: plot_gallery(best, os.path.join(model_dir, "predictions.png"), title)]


def mark(tile, x, y, colour, filled, radius=3):
    """A dot (filled: the truth) or a ring (the prediction) at (x, y) of an RGB tile, in place."""
    h, w = tile.shape[:2]
    yy, xx = np.ogrid[:h, :w]
    d = np.sqrt((xx + 0.5 - x) ** 2 + (yy + 0.5 - y) ** 2)
    tile[(d <= radius) if filled else ((d <= radius + 1) & (d >= radius - 0.5))] = colour


def plot_gallery(best, path, title, per_row=6, side=128):
    """Each image scaled to side x side with its true points as dots and the predicted ones as rings, one colour
    per point; titled with its mean error (red: one of the worst). One mosaic, written by Pillow."""
    from PIL import Image

    from core.rundir.plots import Text, mosaic_grid, save_mosaic
    from model.images import load_image

    items, band, top = best["gallery"], 18, 30
    mosaic, corners = mosaic_grid(len(items), per_row, side + 8, side + band, top)
    labels = [Text(mosaic.shape[1] / 2, top / 2, f"{title}   (dots: true, rings: predicted)", size=8)]
    for (y, x), item in zip(corners, items):
        y, x = y + band, x + 4  # the image's corner, under its cell's title
        image = load_image(item["image"])
        scale = np.array([side / image.shape[1], side / image.shape[0]])
        tile = np.array(Image.fromarray(image).resize((side, side), Image.NEAREST))
        for k, (truth, pred) in enumerate(zip(item["truth"], item["prediction"])):
            colour = COLOURS[k % len(COLOURS)]
            if truth[2] > 0:
                mark(tile, *(np.array(truth[:2]) * scale), colour, filled=True)
            mark(tile, *(np.array(pred) * scale), colour, filled=False)
        mosaic[y:y + side, x:x + side] = tile
        labels.append(Text(x + side / 2, y - band / 2, f"{'worst: ' if item['worst'] else ''}{item['error']:.2f} px",
                           "red" if item["worst"] else "black"))
    save_mosaic(mosaic, labels, path)



# ---------------------------------------------------------------- predict.py's outputs


def save_predictions(points, images, out_dir, classes):
    """Each image's points in its own pixels, {name: [x, y]}; "file": the image's path under the source folder."""
    rows = []
    for im, p in zip(images, points.float().cpu().numpy()):
        w, h = im["size"]
        rows.append({"image": im["image"], "file": im["stem"] + os.path.splitext(im["image"])[1],
                     "points": {c: [round(float(x) * w, 2), round(float(y) * h, 2)] for c, (x, y) in zip(classes, p)}})
    return rows


def finish_predictions(rows, out_dir, classes):
    """keypoints.json in the training layout ({"names", "images": {file: [[x, y, 2], ...]}}, file names under the
    source folder, so the source's images/ and this file can be corrected and trained on) and keypoints.csv (image,
    then x and y of each point)."""
    from core.rundir.predictions import write_csv
    from utils import write_json

    write_json(os.path.join(out_dir, "keypoints.json"),
               {"names": classes, "images": {r["file"]: [[*r["points"][c], 2] for c in classes] for r in rows}})
    write_csv(os.path.join(out_dir, "keypoints.csv"), ["image", *[f"{c}_{a}" for c in classes for a in "xy"]],
              [[r["image"], *[v for c in classes for v in r["points"][c]]] for r in rows])
    return ["keypoints.json", "keypoints.csv"]


def draw_prediction(image, row, scale, out_dir, classes):
    """predict.py --draw: each point a dot in its colour (the gallery's), named beside it."""
    from core.rundir.plots import Text, line_height, text_size

    size = text_size(image)
    radius = max(3, line_height(size) // 6)  # a dot that stays in proportion to its name
    labels = []
    for k, name in enumerate(classes):
        x, y = (v * scale for v in row["points"][name])
        colour = COLOURS[k % len(COLOURS)]
        mark(image, x, y, colour, filled=True, radius=radius)
        labels.append(Text(x + 2 * radius, y, name, colour, size=size, anchor="lm"))
    return image, labels
