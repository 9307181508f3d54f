"""What a segmenter's predictions are shown as: the predictor (sliding windows, flip TTA), the per-class evaluation
report (IoU, Dice and pixels per class, worst first) and the figures of a new best epoch: a gallery of image | true
mask | predicted mask for fixed valid examples and the worst ones by IoU, and the pixel confusion matrix."""

import base64
import math
import os

import numpy as np
import torch

from model.segmentation.metrics import IGNORE, per_class, predicted_classes
from model.segmentation.net import outputs_of, sliding_window


def predictor(params, tta=None, classes=None):
    """predict(model, x) -> logits [B,K,H,W] of batch x: the whole image, or eval_window tiles eval_stride apart
    (default half a window) averaged where they overlap. With tta "hflip", the log of the class probabilities
    averaged over x and its mirror image, flipped back so each pixel's scores stay that pixel's. With keep_regions,
    the small stray regions of each class then go to the background (keep_largest_regions; `classes`: the class
    names, which a keep_regions object names)."""
    window = params.eval_window if params else 0
    stride = (params.eval_stride or max(1, window // 2)) if window else 0
    keep = params.keep_regions if params else 0
    if isinstance(keep, dict):
        keep = {classes.index(name): n for name, n in keep.items()}

    def logits(model, x, targets=None):
        return sliding_window(lambda tiles: outputs_of(model(tiles))[0], x, None, window, stride)

    def flipped(model, x, targets=None):
        plain = logits(model, x).log_softmax(1)
        mirrored = torch.flip(logits(model, torch.flip(x, dims=[3])), dims=[3]).log_softmax(1)
        return torch.logsumexp(torch.stack([plain, mirrored]), 0) - math.log(2)

    predict = flipped if tta else logits
    if not keep:
        return predict
    return lambda model, x, targets=None: keep_largest_regions(predict(model, x), keep)


def keep_largest_regions(logits, keep):
    """Seed 001's post-processing: in each image's predicted mask, only the `keep` largest 8-connected regions of
    each foreground class stay (keep: N for every class, or {class index: N} for some); every other region of it
    goes to the background (class 0), whose logit there is raised just above the best, so the metrics, which take
    each pixel's highest logit, see the cleaned mask. Runs on the CPU (scipy.ndimage.label)."""
    from scipy import ndimage

    pred = predicted_classes(logits).cpu().numpy()
    dropped = np.zeros_like(pred, dtype=bool)
    limits = keep if isinstance(keep, dict) else dict.fromkeys(range(1, logits.shape[1]), keep)
    eight = np.ones((3, 3), dtype=bool)
    for b in range(pred.shape[0]):
        for k, n in limits.items():
            regions, count = ndimage.label(pred[b] == k, structure=eight)
            if count > n:
                sizes = np.bincount(regions.ravel())[1:]
                kept = np.argsort(-sizes, kind="stable")[:n] + 1
                dropped[b] |= (regions > 0) & ~np.isin(regions, kept)
    if not dropped.any():
        return logits
    drop = torch.from_numpy(dropped).to(logits.device)
    out = logits.clone()
    out[:, 0] = torch.where(drop, logits.max(1).values + 1, logits[:, 0])
    return out


# ---------------------------------------------------------------- evaluate.py's report


def evaluation_report(details, dataset, classes):
    """{"per_class": {class: {iou, dice, pixels, predicted}}} from the split's pixel confusion matrix."""
    return {"per_class": per_class(details["confusion"].double(), classes)}


def report_markdown(metrics, title):
    """The per-class table, worst IoU first (where the model fails); classes in neither the labels nor the
    predictions last, as n/a; then the means (over the classes present) and the pixel accuracy."""
    from tabulate import tabulate

    rows = metrics["per_class"].items()
    present = sorted(((c, m) for c, m in rows if m["iou"] is not None), key=lambda kv: kv[1]["iou"])
    table = [[name, f"{m['iou']:.4f}", f"{m['dice']:.4f}", m["pixels"], m["predicted"]] for name, m in present]
    table += [[name, "n/a", "n/a", 0, 0] for name, m in rows if m["iou"] is None]
    text = tabulate(table, headers=["class", "iou", "dice", "pixels", "predicted"], tablefmt="github",
                    disable_numparse=True)
    return (f"# {title}\n\n{text}\n\nmiou {metrics['miou']:.4f}, dice {metrics['dice']:.4f} (means over the "
            f"{len(present)} classes present), pixel accuracy {metrics['pixel_accuracy']:.4f}\n")


def plot_evaluation(details, classes, model_dir, tag, title):
    """evaluate.py's figure: confusion_<tag>.png."""
    import os

    plot_confusion(details["confusion"].numpy(), classes, os.path.join(model_dir, f"confusion_{tag}.png"), title)


def plot_confusion(confusion, classes, path, title=""):
    """The pixel confusion matrix as percentages of each true class's pixels (raw pixel counts are unreadable)."""
    from core.rundir import plots

    cm = np.asarray(confusion, dtype=np.float64)
    share = 100 * cm / np.maximum(cm.sum(1, keepdims=True), 1)
    plots.plot_confusion(np.rint(share), classes, path, title=f"{title} (%)")


# ---------------------------------------------------------------- the figures of a new best epoch


def best_figures(epoch, details, dataset, classes, fixed):
    """What predictions.png and confusion_valid_best.png need, as plain data for the plotter process: the fixed
    examples (indices into the valid set), then the images of lowest IoU."""
    iou = details["image_iou"]
    scored = [i for i in range(len(iou)) if not math.isnan(iou[i].item())]
    worst = sorted(scored, key=lambda i: iou[i].item())[:max(4, len(fixed) // 2)]
    gallery = [{"image": dataset.paths[i], "mask": dataset.targets[i], "iou": iou[i].item(), "worst": group,
                "prediction": packed(details["prediction"][i])}
               for group, indices in ((False, fixed), (True, worst)) for i in indices]
    return {"epoch": epoch, "gallery": gallery, "confusion": details["confusion"].tolist(), "classes": classes}


def packed(mask):
    """A predicted mask as JSON can carry it to the plotter: its shape and its bytes in base64."""
    array = mask.numpy().astype(np.uint8)
    return {"shape": list(array.shape), "bytes": base64.b64encode(array.tobytes()).decode()}


def unpacked(p):
    return np.frombuffer(base64.b64decode(p["bytes"]), dtype=np.uint8).reshape(p["shape"])


def palette(n_clas):
    """A fixed colour per class (background black, then tab20's colours), and grey for IGNORE."""
    import matplotlib

    colours = np.zeros((256, 3), dtype=np.uint8)
    tab = matplotlib.colormaps["tab20"].colors
    for k in range(1, n_clas):
        colours[k] = np.array(tab[(k - 1) % len(tab)]) * 255
    colours[IGNORE] = 128
    return colours


def overlay(image, mask, colours):
    """The image with each labelled pixel tinted by its class colour (background left as it is)."""
    tinted = image.astype(np.float32)
    shown = mask > 0
    tinted[shown] = 0.35 * tinted[shown] + 0.65 * colours[mask[shown]]
    return tinted.astype(np.uint8)


def draw_best(best, model_dir):
    """The drawings of best_figures' data, one function each (the plotter runs them, maybe in parallel)."""
    import os

    title = f"valid, best epoch {best['epoch']}"
    return [lambda: plot_gallery(best, os.path.join(model_dir, "predictions.png"), f"{model_dir}: {title}"),
            lambda: plot_confusion(best["confusion"], best["classes"],
                                   os.path.join(model_dir, "confusion_valid_best.png"), title)]


def plot_gallery(best, path, title, per_row=4, side=160):
    """Rows of image | true mask | predicted mask triplets, the masks over the image in a fixed palette; each
    triplet titled with its IoU (red: one of the worst). One mosaic, written by Pillow: cheap to redraw."""
    from PIL import Image

    from core.rundir.plots import Text, mosaic_grid, save_mosaic
    from model.images import load_image
    from model.segmentation.data_loader import load_mask

    items, colours = best["gallery"], palette(len(best["classes"]))
    band, top, cell_w = 18, 30, 3 * side + 12
    mosaic, corners = mosaic_grid(len(items), per_row, cell_w, side + band, top)
    labels = [Text(mosaic.shape[1] / 2, top / 2, title, size=9)]
    for (y, x), item in zip(corners, items):
        y += band  # the images' top, under the triplet's title
        image, truth = load_image(item["image"]), load_mask(item["mask"])
        h, w = truth.shape
        pred = unpacked(item["prediction"])[:h, :w]  # a padded batch's prediction, cropped to the image
        for j, panel in enumerate((image, overlay(image, truth, colours), overlay(image, pred, colours))):
            tile = np.asarray(Image.fromarray(panel).resize((side, side), Image.NEAREST))
            mosaic[y:y + side, x + j * side:x + (j + 1) * side] = tile
        label = f"{'worst: ' if item['worst'] else ''}IoU {item['iou']:.2f}   image | true | predicted"
        labels.append(Text(x + cell_w / 2, y - band / 2, label, "red" if item["worst"] else "black"))
    save_mosaic(mosaic, labels, path)


# ---------------------------------------------------------------- predict.py's outputs


def save_predictions(logits, images, out_dir, classes):
    """masks/<image>.png per image: its predicted class index per pixel, at the image's own size, as a palette PNG
    (palette_mask); the row counts each class's pixels."""
    from core.rundir.predictions import output_path
    from utils import atomic_write

    masks = predicted_classes(logits).to(torch.uint8).cpu().numpy()
    rows = []
    for im, mask in zip(images, masks):
        w, h = im["size"]
        mask = mask[:h, :w]  # a batch of several sizes is padded at the bottom and right
        path = output_path(out_dir, "masks", im["stem"], ".png")
        picture = palette_mask(mask, len(classes))
        atomic_write(path, lambda f, p=picture: p.save(f, format="png"), mode="wb")
        counts = np.bincount(mask.ravel(), minlength=len(classes))
        rows.append({"image": im["image"], "mask": os.path.relpath(path, out_dir),
                     "pixels": {c: int(n) for c, n in zip(classes, counts) if n}})
    return rows


def palette_mask(mask, n_clas):
    """A mask of class indices as a palette ('P') PNG image: its pixels are the indices themselves, which PIL and
    numpy read back and training reads as a mask (load_mask), while an image viewer shows each class in its
    gallery colour (palette) instead of the near-black greys 0..K-1."""
    from PIL import Image

    picture = Image.fromarray(mask)
    picture.putpalette(palette(n_clas).ravel().tolist())  # an 'L' image given a palette becomes 'P', pixels kept
    return picture


def finish_predictions(rows, out_dir, classes):
    """classes.json beside the masks: which class each index is."""
    from utils import write_json

    write_json(os.path.join(out_dir, "classes.json"), classes)
    return ["masks/", "classes.json"]


def draw_prediction(image, row, scale, out_dir, classes):
    """predict.py --draw: the predicted mask tinted over the image, the classes present named in their colours."""
    from PIL import Image

    from core.rundir.plots import Text, line_height, text_size

    with Image.open(os.path.join(out_dir, row["mask"])) as m:
        mask = np.asarray(m.resize((m.width * scale, m.height * scale), Image.NEAREST))
    colours = palette(len(classes))
    present = [c for c in classes[1:] if c in row["pixels"]]
    size = text_size(image)
    labels = [Text(3, 3 + line_height(size) * i, name, tuple(int(v) for v in colours[classes.index(name)]),
                   size=size, anchor="lt") for i, name in enumerate(present)]
    return overlay(image, mask, colours), labels
