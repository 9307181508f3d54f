"""evaluate.py's outputs for one run folder: the metrics JSON with per-class numbers, the per-class markdown table
and the confusion matrix. Per-class precision, recall, F1, support and the balanced accuracy are scikit-learn's."""

import os

from sklearn.metrics import balanced_accuracy_score, precision_recall_fscore_support
from tabulate import tabulate

from core.rundir.folder import metrics_file
from core.rundir.plots import plot_confusion
from utils import UserError, atomic_write, read_json_field, write_json

PER_CLASS = ("precision", "recall", "f1", "support")


def output_tag(split, restore_file, tta=None):
    """'test_best_weights', or 'test_best_weights_tta_hflip': the stem of the metrics file, so a test-time-augmented
    evaluation never overwrites a plain one, and none clashes with train.py's confusion_valid_best.png."""
    return metrics_file(split, restore_file, tta)[len("metrics_"):-len(".json")]


def check_same_data(model_dir, split, restore_file, tta, data_dir):
    """Refuse to replace an evaluation of another data set: rerunning is safe, evaluating elsewhere needs a choice."""
    path = os.path.join(model_dir, metrics_file(split, restore_file, tta))
    before = read_json_field(path, "data_dir", None)
    if before is not None and before != os.path.abspath(data_dir):
        raise UserError(f"{path}: holds an evaluation on {before}; move it away to evaluate on {data_dir}")


def per_class_metrics(labels, predictions, classes):
    """({class: {precision, recall, f1, support}}, balanced accuracy) of predictions against true labels. A class
    never predicted has precision 0 (scikit-learn's zero_division=0), not a warning."""
    p, r, f, s = precision_recall_fscore_support(labels, predictions, labels=list(range(len(classes))),
                                                 zero_division=0)
    table = {c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
             for i, c in enumerate(classes)}
    return table, float(balanced_accuracy_score(labels, predictions))


def report_markdown(metrics, title):
    """The per-class table (worst recall first: where the model fails; classes absent from the split last, as n/a),
    then the macro means over the classes present (as balanced accuracy and macro F1 take them) and the totals."""
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


def write_report(model_dir, split, restore_file, tta, metrics, confusion, classes):
    """metrics_<tag>.json, report_<tag>.md and confusion_<tag>.png, tag = <split>_<restore>_weights[_tta_<tta>]."""
    tag = output_tag(split, restore_file, tta)
    title = f"{model_dir} ({tag}, epoch {metrics['epoch']}, {metrics['weights']} weights)"
    write_json(os.path.join(model_dir, metrics_file(split, restore_file, tta)), metrics)
    atomic_write(os.path.join(model_dir, f"report_{tag}.md"), lambda f: f.write(report_markdown(metrics, title)),
                 mode="w")
    plot_confusion(confusion.numpy(), classes, os.path.join(model_dir, f"confusion_{tag}.png"), title=title)
