"""What a classifier's predictions are shown as: test-time augmentation, the per-class evaluation report and the
figures of a new best epoch (the prediction gallery and the confusion matrix). Per-class precision, recall, F1 and
support are scikit-learn's."""

import math
import os

import torch

PER_CLASS = ("precision", "recall", "f1", "support")


def predictor(params, tta=None):
    """predict(model, x) -> the model's logits for batch x; with tta "hflip", the log of its class probabilities
    averaged over x and x mirrored left-right (log-probabilities work wherever logits do: argmax, softmax,
    cross-entropy). The mean is taken in log space (logsumexp), so a confident wrong answer gives a large finite
    loss, not log(0)."""
    if tta is None:
        return lambda model, x, targets=None: model(x).float()

    def predict(model, x, targets=None):
        logp = torch.stack([model(x).float().log_softmax(1), model(torch.flip(x, dims=[3])).float().log_softmax(1)])
        return torch.logsumexp(logp, 0) - math.log(2)

    return predict


# ---------------------------------------------------------------- evaluate.py's report


def evaluation_report(details, dataset, classes):
    """{"per_class": {class: {precision, recall, f1, support}}} of the predictions against the true labels. A
    class never predicted has precision 0 (scikit-learn's zero_division=0), not a warning."""
    from sklearn.metrics import precision_recall_fscore_support

    p, r, f, s = precision_recall_fscore_support(dataset.targets, details["prediction"].tolist(),
                                                 labels=list(range(len(classes))), zero_division=0)
    return {"per_class": {c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
                          for i, c in enumerate(classes)}}


def report_markdown(metrics, title):
    """The per-class table (worst recall first: where the model fails; classes absent from the split last, as n/a),
    then the macro means over the classes present (as balanced accuracy and macro F1 take them) and the totals."""
    from tabulate import tabulate

    present = sorted(((c, m) for c, m in metrics["per_class"].items() if m["support"]), key=lambda kv: kv[1]["recall"])
    absent = [c for c, m in metrics["per_class"].items() if not m["support"]]
    table = [[name, *(f"{m[k]:.4f}" for k in PER_CLASS[:3]), m["support"]] for name, m in present]
    table += [[name, "n/a", "n/a", "n/a", 0] for name in absent]
    if present:
        table.append(["macro mean", *(f"{sum(m[k] for _, m in present) / len(present):.4f}" for k in PER_CLASS[:3]),
                      sum(m["support"] for _, m in present)])
    text = tabulate(table, headers=["class", *PER_CLASS], tablefmt="github", disable_numparse=True)
    note = f" ({len(absent)} class(es) absent from this split, left out of the means)" if absent else ""
    return (f"# {title}\n\n{text}\n\naccuracy {metrics['accuracy']:.4f}, balanced accuracy "
            f"{metrics['balanced_accuracy']:.4f} (the mean of the per-class recalls){note}\n")


# ---------------------------------------------------------------- the figures of a new best epoch


def best_figures(epoch, details, dataset, classes, fixed):
    """What predictions.png and confusion_valid_best.png need, as plain data for the plotter process: the fixed
    examples (indices into the valid set), then the most confidently wrong ones."""
    k = max(4, len(fixed) // 2)  # slots for wrong examples, kept even when there are fewer mistakes
    wrong = confidently_wrong(details, dataset.targets, k)
    return {"epoch": epoch, "gallery": gallery_items(dataset, details, fixed, wrong, classes),
            "slots": len(fixed) + k, "confusion": details["confusion"].tolist(), "classes": classes}


def confidently_wrong(details, labels, k):
    """Indices of the k wrong predictions made with the highest confidence."""
    wrong = [i for i, (p, y) in enumerate(zip(details["prediction"].tolist(), labels)) if p != y]
    conf = details["confidence"]
    return sorted(wrong, key=lambda i: -conf[i].item())[:k]


def gallery_items(dataset, details, fixed, wrong, classes):
    """(image path, title, correct?) for the fixed examples, then the confidently wrong ones."""
    items = []
    for group, indices in (("", fixed), ("wrong: ", wrong)):
        for i in indices:
            pred, conf, true = details["prediction"][i].item(), details["confidence"][i].item(), dataset.targets[i]
            title = f"{group}{classes[true]} → {classes[pred]} ({conf:.2f})"
            items.append((dataset.paths[i], title, pred == true))
    return items


def plot_evaluation(details, classes, model_dir, tag, title):
    """evaluate.py's figure: confusion_<tag>.png."""
    import os

    plot_confusion(details["confusion"].numpy(), classes, os.path.join(model_dir, f"confusion_{tag}.png"), title)


def plot_confusion(confusion, classes, path, title=""):
    """The confusion matrix with the count of images in each cell."""
    import numpy as np

    from core.rundir import plots

    plots.plot_confusion(np.asarray(confusion), classes, path, title)


def draw_best(best, model_dir):
    """The drawings of best_figures' data, one function each (the plotter runs them, maybe in parallel)."""
    import os

    from core.rundir import plots

    title = f"{model_dir}: valid predictions (fixed, then most confidently wrong), epoch {best['epoch']}"
    return [
        lambda: plots.plot_gallery([tuple(item) for item in best["gallery"]], best["slots"],
                                   os.path.join(model_dir, "predictions.png"), title=title),
        lambda: plot_confusion(best["confusion"], best["classes"], os.path.join(model_dir, "confusion_valid_best.png"),
                               title=f"valid, best epoch {best['epoch']}"),
    ]


# ---------------------------------------------------------------- predict.py's outputs


def save_predictions(logits, images, out_dir, classes):
    """Each image's top classes (at most 5) and their probabilities, most likely first."""
    probs = logits.float().softmax(1).cpu()
    top = probs.topk(min(5, len(classes)), dim=1)
    return [{"image": im["image"], "labels": [classes[j] for j in idx.tolist()],
             "probs": [round(p, 6) for p in ps.tolist()]} for im, ps, idx in zip(images, top.values, top.indices)]


def finish_predictions(rows, out_dir, classes):
    """predictions.csv: image, then label_1, prob_1, ... label_k, prob_k."""
    from core.rundir.predictions import write_csv

    k = min(5, len(classes))
    header = ["image", *[f"{c}_{i}" for i in range(1, k + 1) for c in ("label", "prob")]]
    write_csv(os.path.join(out_dir, "predictions.csv"), header,
              [[r["image"], *[v for pair in zip(r["labels"], r["probs"]) for v in pair]] for r in rows])
    return ["predictions.csv"]


def draw_prediction(image, row, scale, out_dir, classes):
    """predict.py --draw: the top class and its probability written on the image."""
    from core.rundir.plots import Text, text_size

    return image, [Text(3, 3, f"{row['labels'][0]} {row['probs'][0]:.2f}", "red", size=text_size(image), anchor="lt")]
