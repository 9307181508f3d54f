"""What a task gets for every name it does not supply (model/task.py): defaults that work for any task whose items are
(image path, target) and whose model returns one tensor per batch. A task overrides one only to do better, in its
Task subclass or in its own file (model/<task>/report.py, ...). Each takes the task first, as a method would.

    data        item_files, check_item, build_transforms, decoder, transforms_record, Dataset, class_counts
    model       head_of
    loss        build_loss, loss_fn
    metrics     EpochMetrics: the epoch's outputs and targets, kept whole for the METRICS formulas
    evaluation  predictor, evaluation_report (per class, where there is one output per class), report_markdown,
                plot_evaluation
    figures     best_figures, draw_best: the gallery of the fixed valid images, then those of highest loss
    predict.py  prediction, save_predictions, draw_prediction, finish_predictions (predictions.csv)
"""

import json
import math
import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no network here: skip albumentations' version check

import albumentations as A  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from albumentations.pytorch import ToTensorV2  # noqa: E402

from core.losses import weighted_terms  # noqa: E402
from model.images import MEAN, STD, ItemDataset, augmentation_steps, image_decoder, load_image, readable_size  # noqa: E402
from model.task import EpochSums, metric_names  # noqa: E402
from utils import UserError  # noqa: E402

# ---------------------------------------------------------------- data


def item_files(task, item):
    """The files an item is read from (what the image cache stamps): its image, which the gallery shows."""
    return [item[0]]


def check_item(task, item, classes):
    """Decode the image once, so a broken or truncated file is reported before training starts (the result is
    kept: core/data/imagecache.py verify_once checks a file again only when it changes)."""
    readable_size(item[0])


def resize_step(sz):
    """The first step of both pipelines. The image cache stores its output (decoder), so a cached image enters the
    pipeline already sz x sz, where A.Resize returns it untouched: cached and decoded runs give identical tensors."""
    return A.Resize(sz, sz)


def build_transforms(task, params):
    """(train, eval) pipelines. Both resize to im_sz x im_sz and normalise; only train augments (task.presets)."""
    augment = augmentation_steps(params, task.presets)
    head, tail = [resize_step(params.im_sz)], [A.Normalize(mean=MEAN, std=STD), ToTensorV2()]
    return A.Compose(head + augment + tail, seed=params.seed), A.Compose(head + tail, seed=params.seed)


def decoder(task, params):
    """(decode, recipe, row_shape) for the image cache. With these pipelines and Dataset: decode(item) is its image as
    resize_step leaves it, recipe that step's serialisation (a changed size or version rebuilds the cache). A task
    with its own pipelines or Dataset may move its targets with the image: its images are cached as stored."""
    if task.supplies("build_transforms", "data_loader") or task.supplies("dataset", "data_loader", "Dataset"):
        return image_decoder()
    sz = params.im_sz
    resize = resize_step(sz)
    recipe = json.dumps(A.to_dict(resize), sort_keys=True)
    return (lambda item: resize(image=load_image(item[0]))["image"]), recipe, lambda items: (sz, sz, 3)


def transforms_record(task, train_tf, eval_tf):
    """The pipelines actually used, in albumentations' own serialisation (readable JSON, no pickle)."""
    return {"train": A.to_dict(train_tf), "eval": A.to_dict(eval_tf)}


class Dataset(ItemDataset, torch.utils.data.Dataset):
    """(image tensor, target tensor) for each (image path, target) item: the target as torch.as_tensor reads it (a
    class index: an int64 scalar; a 0/1 float per class: a float vector), so batches stack."""

    def __init__(self, task, items, transform, images=None):
        super().__init__(items, transform, images)

    def __getitem__(self, i):
        return self.transform(image=self.image(i))["image"], torch.as_tensor(self.targets[i])


def class_counts(task, dataset, n_clas):
    """Samples of each class among dataset's targets, class indices or a 0/1 per class: what class_weights
    "balanced" weighs by (read only when the task honours class_weights: the default `refused` refuses it)."""
    try:
        targets = np.asarray(dataset.targets)
    except ValueError:  # targets of several lengths (boxes): not counted so
        targets = np.empty(0, dtype=object)
    if targets.ndim == 1 and np.issubdtype(targets.dtype, np.integer):
        return np.bincount(targets, minlength=n_clas).tolist()
    if targets.ndim == 2 and targets.shape[1] == n_clas:
        return (targets > 0).sum(0).tolist()
    raise UserError(f"params key 'class_weights' is \"balanced\", but task {task.name}'s targets are neither class "
                    f"indices nor a 0/1 per class: give the task its class_counts (model/task.py)")


# ---------------------------------------------------------------- model and loss


def head_of(task, model):
    """The last nn.Linear (a classifier's head), else the last module holding parameters of its own (a final 1x1
    conv); None for a model without parameters."""
    modules = list(model.modules())
    linear = [m for m in modules if isinstance(m, torch.nn.Linear)]
    own = [m for m in modules if next(m.parameters(recurse=False), None) is not None]
    return (linear or own or [None])[-1]


def build_loss(task, params, counts):
    """The training objective: the loss block's weighted terms (task.loss_terms), each with its own settings."""
    return weighted_terms(task.loss_terms, params.loss)


def loss_fn(task, outputs, targets):
    """Every term at its default weight and settings, whatever the params: the loss validation and evaluate.py
    report, so runs that train on different weights still compare on one loss."""
    return weighted_terms(task.loss_terms, {})(outputs, targets)


# ---------------------------------------------------------------- metrics


class EpochMetrics(EpochSums):
    """Every batch's outputs and targets, detached and on the CPU, so a METRICS formula computes anything from the
    whole epoch: sums["outputs"] [N, ...] and sums["targets"] [N, ...], beside sums["n"] and sums["loss"]. It costs
    a copy to the CPU per batch and N outputs of memory: a task with large outputs (a mask per image) sums what its
    formulas need on the device instead (model/segmentation/metrics.py)."""

    def __init__(self, task, n_clas, device, keep_details=False):
        super().__init__(device)
        self.metrics, self.n_clas, self.outputs, self.targets = task.metrics, n_clas, [], []

    def update(self, outputs, targets, loss):
        """`loss` is the batch mean; targets None (a batch mixed by MixUp/CutMix) counts for the loss only."""
        if self.add_loss(loss, outputs.shape[0], targets):
            self.outputs.append(outputs.detach().float().cpu())
            self.targets.append(targets.detach().cpu())

    def compute(self):
        if (alone := self.loss_alone()) is not None:
            return alone
        sums = {**self.sums(), **self.details()}
        return {name: self.metrics[name].formula(sums) for name in metric_names(self.metrics, self.n_clas)}

    def details(self):
        """Each sample's output and target, in loader order: what the report and the gallery read."""
        return {"outputs": torch.cat(self.outputs), "targets": torch.cat(self.targets)}


# ---------------------------------------------------------------- evaluate.py's report


def predictor(task, params, tta=None):
    """predict(model, x, targets) -> the model's outputs. No test-time augmentation: how to merge a mirrored image's
    outputs depends on what they are (model/classification/report.py averages class probabilities)."""
    if tta:
        raise UserError(f"--tta {tta}: not for {task.name} (its predictor has no test-time augmentation)")
    return lambda model, x, targets=None: model(x)


def per_class(task, details, classes):
    """{class: {metric: value}}: each metric but the loss on that class's column of outputs and targets alone, where
    both are [N, classes] (one output per class: a multi-label task's); None for other outputs."""
    outputs, targets = details.get("outputs"), details.get("targets")
    if outputs is None or outputs.dim() != 2 or outputs.shape != targets.shape or outputs.shape[1] != len(classes):
        return None
    names = [name for name in task.metrics if name != "loss"]
    rows = {}
    for k, c in enumerate(classes):
        sums = {"n": len(outputs), "outputs": outputs[:, k:k + 1], "targets": targets[:, k:k + 1]}
        rows[c] = {name: finite(task.metrics[name].formula(sums)) for name in names}
    return rows


def finite(value):
    return value if math.isfinite(value) else None  # JSON has no NaN: a metric undefined for a class is null


def evaluation_report(task, details, dataset, classes):
    """{"per_class": {class: {metric: value}}} where there is one output per class, else nothing more."""
    rows = per_class(task, details, classes)
    return {"per_class": rows} if rows else {}


def report_markdown(task, metrics, title):
    """The per-class table, worst first by the task's monitor (classes without it last), then the metrics."""
    from tabulate import tabulate

    text = f"# {title}\n\n"
    rows = metrics.get("per_class")
    if rows:
        names = list(next(iter(rows.values())))
        sign = -1 if task.metrics[task.monitor].minimize else 1  # the worst first: the lowest score, highest error
        order = sorted(rows, key=lambda c: (rows[c].get(task.monitor) is None, sign * (rows[c].get(task.monitor) or 0)))
        table = [[c, *("n/a" if rows[c][n] is None else f"{rows[c][n]:.4f}" for n in names)] for c in order]
        text += tabulate(table, headers=["class", *names], tablefmt="github", disable_numparse=True) + "\n\n"
    return text + ", ".join(f"{n} {metrics[n]:.4f}" for n in task.metric_names() if n in metrics) + "\n"


def plot_evaluation(task, details, classes, model_dir, tag, title):
    """<monitor>_<tag>.png, the monitored metric of each class, where there is one output per class; else none."""
    rows = per_class(task, details, classes)
    if rows and task.monitor in next(iter(rows.values())):
        from core.rundir.plots import bar_per_class

        bar_per_class(os.path.join(model_dir, f"{task.monitor}_{tag}.png"), classes,
                      [rows[c][task.monitor] for c in classes], task.monitor, title)


# ---------------------------------------------------------------- the figures of a new best epoch


def best_figures(task, epoch, details, dataset, classes, fixed):
    """predictions.png's data, plain for the plotter process: the fixed valid examples (green), then those of highest
    loss (red, task.loss_fn of each sample), each titled with its prediction's caption and its loss."""
    outputs, targets = details.get("outputs"), details.get("targets")
    if outputs is None:
        return None
    losses = [task.loss_fn(outputs[i:i + 1], targets[i:i + 1]).item() for i in range(len(outputs))]
    worst = sorted(range(len(losses)), key=lambda i: -losses[i])[:max(4, len(fixed) // 2)]
    gallery = [(dataset.paths[i], f"{group}{caption(task.prediction(outputs[i], classes))} ({losses[i]:.2f})",
                not group) for group, indices in (("", fixed), ("worst: ", worst)) for i in indices]
    return {"epoch": epoch, "gallery": gallery, "slots": len(gallery)}


def draw_best(task, best, model_dir):
    from core.rundir import plots

    title = f"{model_dir}: valid predictions (loss): fixed in green, the highest losses in red, epoch {best['epoch']}"
    return [lambda: plots.plot_gallery([tuple(item) for item in best["gallery"]], best["slots"],
                                       os.path.join(model_dir, "predictions.png"), title=title)]


# ---------------------------------------------------------------- predict.py's outputs


def prediction(task, output, classes):
    """One image's prediction from its output: with one output per class, the highest class and every output; else
    the outputs as nested lists."""
    values = output.detach().float().cpu()
    if values.shape == (len(classes),):
        return {"class": classes[int(values.argmax())],
                "outputs": {c: round(v, 6) for c, v in zip(classes, values.tolist())}}
    return {"outputs": np.round(values.numpy(), 6).tolist()}


def caption(prediction):
    """A prediction's first entry as a short text: what the gallery and predict.py --draw write on an image."""
    value = next(iter(prediction.values()), "")
    text = " ".join(map(str, value)) if isinstance(value, list) else f"{value:.3g}" if isinstance(value, float) \
        else str(value)
    return text[:40] or "none"


def save_predictions(task, outputs, images, out_dir, classes):
    """One row per image: its path and task.prediction of its output."""
    return [{"image": im["image"], **task.prediction(out, classes)} for im, out in zip(images, outputs)]


def draw_prediction(task, image, row, scale, out_dir, classes):
    """predict.py --draw: the prediction's caption written on the image."""
    from core.rundir.plots import Text, text_size

    shown = caption({k: v for k, v in row.items() if k != "image"})
    return image, [Text(3, 3, shown, "red", size=text_size(image), anchor="lt")]


def csv_cells(row):
    """A row as CSV columns: a list is one cell (space-separated), a dict one column per key (<entry>_<key>)."""
    out = {}
    for key, value in row.items():
        if isinstance(value, dict):
            out.update({f"{key}_{k}": v for k, v in value.items()})
        else:
            out[key] = " ".join(map(str, value)) if isinstance(value, list) else value
    return out


def finish_predictions(task, rows, out_dir, classes):
    """predictions.csv: image, then each entry of the rows (csv_cells); nothing when there is no row."""
    from core.rundir.predictions import write_csv

    if not rows:
        return []
    cells = [csv_cells(r) for r in rows]
    header = list(dict.fromkeys(k for c in cells for k in c))
    write_csv(os.path.join(out_dir, "predictions.csv"), header, [[c.get(k, "") for k in header] for c in cells])
    return ["predictions.csv"]
