"""What a detector's predictions are shown as: the predictor, the per-class AP report (worst first) and its figure,
and the gallery of a new best epoch: fixed valid images, then those with the most mistakes, with true boxes (green)
and detections scored >= SCORE_SHOWN (red, with class and score); a picture with none says why (hidden_note)."""

import os

import numpy as np

from model.detection.metrics import SCORE_SHOWN


def predictor(params, tta=None):
    """predict(model, x, targets) -> {"detections", "losses"} (the losses need the targets), or the detections:
    of the whole images, or with eval_window of tiles eval_stride apart (default half a window), each resized to
    im_sz, their boxes merged over the image (tiles.py); per_call: bs_test tiles a forward pass."""
    if tta:
        from utils import UserError

        raise UserError(f"--tta {tta}: not for detection (flipped boxes would need merging, which this template "
                        f"does not do)")
    window = params.eval_window if params else 0
    if window:
        from model.detection.tiles import tiled_predictor

        return tiled_predictor(window, params.eval_stride or max(1, window // 2), params.im_sz, params.bs_test)
    return lambda model, x, targets=None: model(x, targets)


# ---------------------------------------------------------------- evaluate.py's report


def class_ap(details, classes):
    """{class: its mAP@[.5:.95], or None where the split has no box of it}: torchmetrics' per-class result,
    computed only now (evaluate.py), since training's validation does not need it."""
    coco = details["per_class"]()
    ap = dict(zip([int(c) for c in np.atleast_1d(coco.get("classes", []))],
                  np.atleast_1d(coco.get("map_per_class", []))))
    return {name: float(ap[k + 1]) if k + 1 in ap and ap[k + 1] >= 0 else None for k, name in enumerate(classes)}


def evaluation_report(details, dataset, classes):
    """{"per_class": {class: {ap (mAP@[.5:.95] of that class), boxes (in the split)}}}."""
    from model.detection.data_loader import class_counts

    ap, counts = class_ap(details, classes), class_counts(dataset, len(classes))
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
    from core.rundir.plots import bar_per_class

    ap = class_ap(details, classes)
    bar_per_class(os.path.join(model_dir, f"ap_{tag}.png"), classes, [ap[c] for c in classes], "AP@[.5:.95]", title,
                  ylim=(0, 1))


# ---------------------------------------------------------------- the figures of a new best epoch


def best_figures(epoch, details, dataset, classes, fixed):
    """What predictions.png needs, as plain data for the plotter: the side of the square the detections' pixels are
    pixels of (im_sz), or None where they are the stored image's (tiled evaluation)."""
    from model.detection.data_loader import input_side
    from model.detection.tiles import is_native

    side = None if is_native(dataset.transform) else input_side(dataset.transform)
    worst = sorted(range(len(details["mistakes"])), key=lambda i: -details["mistakes"][i])[:max(4, len(fixed) // 2)]
    gallery = []
    for group, indices in ((False, fixed), (True, worst)):
        for i in indices:
            det = details["detections"][i]
            det = det[det[:, 5] >= 0]
            scores = det[:, 4]
            gallery.append({"image": dataset.paths[i], "truth": [list(b) for b in dataset.targets[i]],
                            "detections": det[scores >= SCORE_SHOWN].tolist(), "note": hidden_note(scores.tolist()),
                            "side": side, "mistakes": details["mistakes"][i], "worst": group})
    return {"epoch": epoch, "gallery": gallery, "classes": classes}


def hidden_note(scores):
    """What a picture of detections scored `scores` says when it draws none of them, else None: "no boxes
    detected", or "50 boxes below 0.5 hidden (best 0.18)" (a model early in training scores every box low, and a
    blank picture would not tell that from one that found nothing)."""
    if any(s >= SCORE_SHOWN for s in scores):
        return None
    if not scores:
        return "no boxes detected"
    n = len(scores)
    return f"{n} box{'' if n == 1 else 'es'} below {SCORE_SHOWN} hidden (best {max(scores):.2f})"


def draw_best(best, model_dir):
    title = f"{model_dir}: valid, best epoch {best['epoch']}"
    return [lambda: plot_gallery(best, os.path.join(model_dir, "predictions.png"), title)]


def outline(tile, box, colour, dashed=False):
    """A one-pixel rectangle (x1, y1, x2, y2 in tile pixels) drawn into an RGB tile, in place."""
    h, w = tile.shape[:2]
    x1, y1 = (int(np.clip(round(v), 0, n - 1)) for v, n in zip(box[:2], (w, h)))
    x2, y2 = (int(np.clip(round(v) - 1, 0, n - 1)) for v, n in zip(box[2:4], (w, h)))
    keep = (np.arange(max(w, h)) // 3) % 2 == 0 if dashed else np.ones(max(w, h), bool)
    for y in (y1, y2):
        cols = np.arange(x1, x2 + 1)
        tile[y, cols[keep[:len(cols)]]] = colour
    for x in (x1, x2):
        rows = np.arange(y1, y2 + 1)
        tile[rows[keep[:len(rows)]], x] = colour


def plot_gallery(best, path, title, per_row=6, side=160):
    """Each image at side x side with its true boxes (green) and detections (dashed red, 'class score' above),
    titled with its mistakes (red: one of the worst). One mosaic, written by Pillow: cheap to redraw."""
    from PIL import Image

    from core.rundir.plots import Text, mosaic_grid, save_mosaic
    from model.images import load_image

    items, classes, band, top = best["gallery"], best["classes"], 18, 30
    mosaic, corners = mosaic_grid(len(items), per_row, side + 8, side + band, top)
    labels = [Text(mosaic.shape[1] / 2, top / 2, f"{title}   (green: true, red: detected >= {SCORE_SHOWN})", size=8)]
    for (y, x), item in zip(corners, items):
        y, x = y + band, x + 4  # the image's corner, under its cell's title
        image = load_image(item["image"])
        h, w = image.shape[:2]
        tile = np.array(Image.fromarray(image).resize((side, side), Image.NEAREST))
        for x1, y1, x2, y2, _ in item["truth"]:
            outline(tile, (x1 * side / w, y1 * side / h, x2 * side / w, y2 * side / h), (0, 255, 0))
        sx, sy = (side / item["side"],) * 2 if item["side"] else (side / w, side / h)
        for x1, y1, x2, y2, score, label in item["detections"]:
            outline(tile, (x1 * sx, y1 * sy, x2 * sx, y2 * sy), (255, 40, 40), dashed=True)
            labels.append(Text(x + x1 * sx, y + y1 * sy, f"{classes[int(label) - 1]} {score:.2f}", "red",
                               size=6, anchor="ld"))
        mosaic[y:y + side, x:x + side] = tile
        if item["note"]:
            labels.append(Text(x + 3, y + side - 3, item["note"], "red", size=6, anchor="ld"))
        k = item["mistakes"]
        labels.append(Text(x + side / 2, y - band / 2,
                           f"{'worst: ' if item['worst'] else ''}{k} mistake{'' if k == 1 else 's'}",
                           "red" if item["worst"] else "black"))
    save_mosaic(mosaic, labels, path)


# ---------------------------------------------------------------- predict.py's outputs


def save_predictions(detections, images, out_dir, classes):
    """Each image's boxes in its own pixels, [x1, y1, x2, y2, score, class], and labels/<image>.txt: YOLO's
    "class cx cy w h score" lines, normalised to the image (an image without a box gets an empty file)."""
    from core.rundir.predictions import output_path
    from utils import atomic_write

    rows = []
    for im, det in zip(images, detections.float().cpu()):  # det [M, 6]: x1, y1, x2, y2, score, label (-1 pads)
        (w, h), (in_w, in_h) = im["size"], im["input"]
        det = det[det[:, 5] >= 0]
        boxes = det[:, :4].numpy() * np.array([w / in_w, h / in_h, w / in_w, h / in_h])
        found = [[*[round(v, 2) for v in b.tolist()], round(s, 4), int(label) - 1]  # the model's label k + 1 is k
                 for b, s, label in zip(boxes, det[:, 4].tolist(), det[:, 5].tolist())]
        lines = "".join(f"{k} {(x1 + x2) / 2 / w:.6f} {(y1 + y2) / 2 / h:.6f} {(x2 - x1) / w:.6f} {(y2 - y1) / h:.6f} "
                        f"{s:.4f}\n" for x1, y1, x2, y2, s, k in found)
        atomic_write(output_path(out_dir, "labels", im["stem"], ".txt"), lambda f, t=lines: f.write(t))
        rows.append({"image": im["image"], "size": [w, h], "boxes": found})
    return rows


def finish_predictions(rows, out_dir, classes):
    """detections.json: every image and box in COCO's layout, each box with its score (ids from 1, in row order;
    category k + 1 is classes[k], as in the training annotations)."""
    from utils import write_json

    images = [{"id": i, "file_name": r["image"], "width": r["size"][0], "height": r["size"][1]}
              for i, r in enumerate(rows, start=1)]
    boxes = [(i, b) for i, r in enumerate(rows, start=1) for b in r["boxes"]]
    annotations = [{"id": n, "image_id": i, "category_id": k + 1, "bbox": [x1, y1, round(x2 - x1, 2),
                                                                           round(y2 - y1, 2)], "score": s,
                    "area": round((x2 - x1) * (y2 - y1), 2), "iscrowd": 0}  # what COCO tools index by
                   for n, (i, (x1, y1, x2, y2, s, k)) in enumerate(boxes, start=1)]
    categories = [{"id": k + 1, "name": c} for k, c in enumerate(classes)]
    write_json(os.path.join(out_dir, "detections.json"),
               {"images": images, "annotations": annotations, "categories": categories})
    return ["labels/", "detections.json"]


def draw_prediction(image, row, scale, out_dir, classes):
    """predict.py --draw: each box scoring at least SCORE_SHOWN, 'class score' above it (the files keep them all);
    with none, hidden_note at the bottom."""
    from core.rundir.plots import Text, text_size

    size, labels = text_size(image), []
    for x1, y1, x2, y2, score, k in row["boxes"]:
        if score >= SCORE_SHOWN:
            outline(image, [v * scale for v in (x1, y1, x2, y2)], (255, 40, 40))
            labels.append(Text(x1 * scale, y1 * scale, f"{classes[k]} {score:.2f}", "red", size=size, anchor="ld"))
    note = hidden_note([b[4] for b in row["boxes"]])
    if note:  # a footnote: smaller, so the longest fits a 256-px drawing
        labels.append(Text(3, image.shape[0] - 3, note, "red", size=0.75 * size, anchor="ld"))
    return image, labels
