"""evaluate.py's outputs for one run folder: the metrics JSON with per-class numbers, the task's per-class markdown
report and its figure (a confusion matrix, per-point errors)."""

import os

from core.rundir.folder import metrics_file
from utils import UserError, atomic_write, read_json_field, write_json


def variant_of(tta=None, eval_window=None, eval_stride=None, keep_regions=None, exported=None):
    """What evaluate.py's options add to its file names ('tta_hflip', 'window96_stride48', 'regions1', 'onnx'), or
    None."""
    parts = [f"tta_{tta}"] if tta else []
    if eval_window is not None:
        parts.append(f"window{eval_window}" + (f"_stride{eval_stride}" if eval_stride is not None else ""))
    elif eval_stride is not None:  # the params' window with another stride: other predictions, another name
        parts.append(f"stride{eval_stride}")
    if keep_regions is not None:
        parts.append(f"regions{keep_regions}")
    if exported:
        parts.append(exported)
    return "_".join(parts) or None


def output_tag(split, restore_file, variant=None):
    """'test_best_weights', or 'test_best_weights_tta_hflip': the stem of the metrics file, so a test-time-augmented
    (or tiled) evaluation never overwrites a plain one, and none clashes with train.py's confusion_valid_best.png."""
    return metrics_file(split, restore_file, variant)[len("metrics_"):-len(".json")]


def check_same_data(model_dir, split, restore_file, variant, data_dir):
    """Refuse to replace an evaluation of another data set: rerunning is safe, evaluating elsewhere needs a choice."""
    path = os.path.join(model_dir, metrics_file(split, restore_file, variant))
    before = read_json_field(path, "data_dir", None)
    if before is not None and before != os.path.abspath(data_dir):
        raise UserError(f"{path}: holds an evaluation on {before}; move it away to evaluate on {data_dir}")


def write_report(model_dir, split, restore_file, variant, metrics, details, classes, task):
    """metrics_<tag>.json, report_<tag>.md and the task's figure (confusion_<tag>.png, errors_<tag>.png), tag =
    <split>_<restore>_weights[_<variant>]."""
    tag = output_tag(split, restore_file, variant)
    title = f"{model_dir} ({tag}, epoch {metrics['epoch']}, {metrics['weights']} weights)"
    write_json(os.path.join(model_dir, metrics_file(split, restore_file, variant)), metrics)
    atomic_write(os.path.join(model_dir, f"report_{tag}.md"), lambda f: f.write(task.report_markdown(metrics, title)),
                 mode="w")
    task.plot_evaluation(details, classes, model_dir, tag, title)
