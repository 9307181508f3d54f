"""evaluate.py's outputs for one run folder: the metrics JSON with per-class numbers, the per-class markdown table
and the confusion matrix. Per-class precision, recall, F1, support and the balanced accuracy are scikit-learn's."""

import os

from sklearn.metrics import balanced_accuracy_score, precision_recall_fscore_support
from tabulate import tabulate

from core.plots import plot_confusion
from core.run import metrics_file
from utils import atomic_write, write_json

PER_CLASS = ("precision", "recall", "f1", "support")


def output_tag(split, restore_file, tta=None):
    """'test_best', or 'test_best_tta_hflip': a test-time-augmented evaluation never overwrites a plain one."""
    return f"{split}_{restore_file}" + (f"_tta_{tta}" if tta else "")


def per_class_metrics(labels, predictions, classes):
    """({class: {precision, recall, f1, support}}, balanced accuracy) of predictions against true labels. A class
    never predicted has precision 0 (scikit-learn's zero_division=0), not a warning."""
    p, r, f, s = precision_recall_fscore_support(labels, predictions, labels=list(range(len(classes))),
                                                 zero_division=0)
    table = {c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
             for i, c in enumerate(classes)}
    return table, float(balanced_accuracy_score(labels, predictions))


def report_markdown(metrics, title):
    """The per-class table (worst recall first: where the model fails), then the macro means and the totals."""
    rows = sorted(metrics["per_class"].items(), key=lambda kv: kv[1]["recall"])
    table = [[name, *(m[k] for k in PER_CLASS)] for name, m in rows]
    n = len(rows)
    table.append(["macro mean", *(sum(m[k] for _, m in rows) / n for k in PER_CLASS[:3]),
                  sum(m["support"] for _, m in rows)])
    text = tabulate(table, headers=["class", *PER_CLASS], floatfmt=".4f", tablefmt="github")
    return (f"# {title}\n\n{text}\n\naccuracy {metrics['accuracy']:.4f}, balanced accuracy "
            f"{metrics['balanced_accuracy']:.4f} (the mean of the per-class recalls)\n")


def write_report(model_dir, split, restore_file, tta, metrics, confusion, classes):
    """metrics_<split>_<restore>_weights[_tta_<tta>].json, report_<tag>.md and confusion_<tag>.png."""
    tag = output_tag(split, restore_file, tta)
    title = f"{model_dir} ({tag}, epoch {metrics['epoch']}, {metrics['weights']} weights)"
    write_json(os.path.join(model_dir, metrics_file(split, restore_file, tta)), metrics)
    atomic_write(os.path.join(model_dir, f"report_{tag}.md"), lambda f: f.write(report_markdown(metrics, title)),
                 mode="w")
    plot_confusion(confusion.numpy(), classes, os.path.join(model_dir, f"confusion_{tag}.png"), title=title)
