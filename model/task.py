"""What a task is: the one interface the machinery in core/ calls, written down once.

A task is everything that depends on what a sample's target is. It is a package model/<name>/ whose task.py
subclasses Task, and one line in model/tasks.py. A task MUST supply six names (required_names() lists them):

    name                                   its "task" params key
    find_classes(data_dir)                 the class names, in the order the model's outputs are numbered
    scan_split(data_dir, split, classes)   the items of one split; by default an item is (image path, target),
                                           the target what torch.as_tensor takes (a class index, a 0/1 per class)
    build_model(params, n_clas)            the nn.Module
    loss_terms                             {name: Term}: the training loss's weighted terms (or {} and build_loss)
    metrics                                {name: Metric}: what an epoch reports, each a formula of its sums

each as a member of its Task subclass, or under the same name (TERMS, METRICS for the tables) in the file its method
names: data_loader.py, net.py, loss.py, metrics.py. Every other fact and method below it MAY override, only to do
better than the default, in its Task subclass or in its own file named beside the method (report.py, ...). The
defaults are model/defaults.py's (the facts' are below), written for any task whose items are (image path, target)
and whose model returns one tensor: model/multilabel/ supplies the six names and little else. Below the class: what
tasks build on (Metric, EpochSums); a loss's Term and weighted_terms are core/losses.py's.

No torch import here, nor at the top of a task's task.py, metrics.py or loss.py: params validation, the search and
the result tables read a task's facts (metrics, loss terms, defaults) without loading torch.
"""

import functools
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from core.losses import loss_keys

# keys only segmentation and detection honour (tiled evaluation), keys only segmentation honours, and keys only
# classification or segmentation honour: the other tasks refuse them
WINDOW_KEYS = {"eval_window": "tiles images (segmentation and detection only)",
               "eval_stride": "tiles images (segmentation and detection only)"}
MASK_KEYS = {**WINDOW_KEYS, "keep_regions": "cleans segmentation masks"}
IMAGE_LABEL_KEYS = {"mixup_alpha": "mixes images", "cutmix_alpha": "mixes images", "label_smoothing": "smooths labels",
                    "class_weights": "weighs classes", **MASK_KEYS}


# a key only the tasks whose pipelines cut targets with the image honour (segmentation, detection, keypoints)
CROP_KEYS = {"crop_size": "crops each image with its targets"}


def required(file, table=None):
    """Marks a name every task supplies, in its Task subclass or in model/<task>/<file>.py (the function of the same
    name, or `table`: a property). The marked method's docstring is its contract; its body is this one."""

    def mark(method):
        name = table or method.__name__

        @functools.wraps(method)
        def from_file(self, *args):
            own = self.own(file, name)
            if own is None:
                raise NotImplementedError(f"task {self.name} supplies no {method.__name__} (in its Task subclass, "
                                          f"or {name} in model/{self.name}/{file}.py; model/task.py)")
            return own if table else own(*args)

        from_file.required = (file, name)
        return property(from_file) if table else from_file

    return mark


def required_names(cls=None):
    """The names every task must supply: Task's facts declared without a value, and its members marked @required."""
    cls = cls or Task
    facts = [name for name in cls.__annotations__ if name not in vars(cls)]
    return facts + [name for name, member in vars(cls).items()
                    if hasattr(getattr(member, "fget", member), "required")]


@functools.cache
def task_module(package, file):
    """model/<task>/<file>.py, imported once; None where the task has no such file."""
    try:
        return importlib.import_module(f"{package}.{file}")
    except ModuleNotFoundError as e:
        if e.name != f"{package}.{file}":
            raise  # the file is there but imports something missing: that error, not a default
        return None


class Task:
    """The interface; a subclass sets the facts and supplies or overrides the rest."""

    # ---- facts, read without importing torch (metrics.py and loss.py import none at the top) ------------------
    name: str  # the "task" params key
    data: str = None  # the default data set's folder, built by build_data on first use (None: always --data_dir)
    arch: str = None  # the default architecture (params "arch": null); None: build_model's own choice
    split_layout: str = "the files scan_split reads"  # what a split folder holds, for the error naming a missing one
    head: str = "its last nn.Linear, else its last module with parameters"  # what head_of finds, for its errors
    classes_are: str = "classes"  # what the data's classes are, in messages ("class folders", "points")
    own_size: bool = False  # evaluation sees each image at its own size (predict.py batches images of one size)
    trains_on: str = "the loss block's terms"  # what its training loss is, for the error that refuses a term
    export_tolerance: float = 1e-4  # export.py's parity check: the largest difference allowed from the checkpoint
    # {params key: what it does}: keys this task cannot honour, refused. Default: every key only some tasks honour
    # (the default loss has no class weights nor smoothing, nothing mixes batches, nothing tiles)
    refused: Mapping = MappingProxyType({**IMAGE_LABEL_KEYS, **CROP_KEYS})

    def __repr__(self):
        return f"<task {self.name}>"

    @property
    def monitor(self):
        """The headline metric: default early_stopping.monitor_metric, it picks best.pth.tar."""
        return next((name for name, m in self.metrics.items() if not m.minimize), "loss")

    @property
    def overfit_metric(self):
        """What overfit mode's sanity check reads on its training batches (must reach 0.99): a score, not an error."""
        return next((name for name, m in self.metrics.items() if not m.minimize), self.monitor)

    @required("metrics", "METRICS")
    def metrics(self):
        """{name: Metric}, in the order an epoch reports them; "loss" (LOSS) first."""

    @required("loss", "TERMS")
    def loss_terms(self):
        """{name: Term}: the training loss's terms; {} when the task writes build_loss and loss_fn instead."""

    def part(self, file):
        """The task's module model/<name>/<file>.py, imported on first use."""
        return importlib.import_module(f"{type(self).__module__.rsplit('.', 1)[0]}.{file}")

    def own(self, file, name):
        """The task's own `name` in model/<task>/<file>.py, or None: no such file, or no such name in it."""
        return getattr(task_module(type(self).__module__.rsplit(".", 1)[0], file), name, None)

    def supplies(self, method, file, name=None):
        """Whether the task has its own `method`, in its Task subclass or as `name` in model/<task>/<file>.py."""
        return getattr(type(self), method) is not getattr(Task, method) or self.own(file, name or method) is not None

    def call(self, file, name, *args):
        """The task's own `name` of model/<task>/<file>.py on args, else model/defaults.py's, given the task first."""
        own = self.own(file, name)
        if own is not None:
            return own(*args)
        from model import defaults

        return getattr(defaults, name)(self, *args)

    def metric_names(self, n_clas=None):
        """The metrics an epoch reports, in order; with n_clas, only those that make sense for that many classes."""
        return metric_names(self.metrics, n_clas)

    # ---- data (data_loader.py) --------------------------------------------------------------------------------
    def build_data(self, dst, **options):
        """Write the default data set into `dst`, offline; options: the builder's (size, seed), from
        data/build_dataset.py --task NAME."""
        from utils import UserError

        raise UserError(f"task {self.name} has no default data set; give --data_dir")

    @required("data_loader")
    def find_classes(self, data_dir):
        """[class name] in index order: what the model's outputs are numbered by (point names for keypoints)."""

    @required("data_loader")
    def scan_split(self, data_dir, split, classes):
        """[item] of one split, in a fixed order: what dataset takes; by default (image path, target)."""

    def item_files(self, item):
        """The files one item reads (image, mask, ...): the start-up check and the image cache key on them."""
        return self.call("data_loader", "item_files", item)

    def check_item(self, item, classes):
        """Raise a one-line UserError naming the file when an item cannot be trained on; checked once per data set."""
        return self.call("data_loader", "check_item", item, classes)

    @property
    def presets(self):
        """{name: steps(im_sz)}: the augmentation presets params.augmentation may name (model/images.py's)."""
        own = self.own("data_loader", "PRESETS")
        if own is not None:
            return own
        from model.images import PRESETS

        return PRESETS

    def build_transforms(self, params):
        """(train transform, eval transform) for params (im_sz, augmentation)."""
        return self.call("data_loader", "build_transforms", params)

    def decoder(self, params):
        """(decode(item) -> HxWxC uint8 array, recipe text, row shape or None): what the image cache stores."""
        return self.call("data_loader", "decoder", params)

    def transforms_record(self, train_tf, eval_tf):
        """The pipelines as JSON (augmentation.json)."""
        return self.call("data_loader", "transforms_record", train_tf, eval_tf)

    def dataset(self, items, transform, images=None):
        """A torch Dataset of (x, target) with .paths, .transform, .reseed(seed) and .collate (None: default)."""
        return self.call("data_loader", "Dataset", items, transform, images)

    def class_counts(self, dataset, n_clas):
        """[samples (or pixels) of each class] in dataset: what class_weights "balanced" weighs by."""
        return self.call("data_loader", "class_counts", dataset, n_clas)

    # ---- model (net.py) ---------------------------------------------------------------------------------------
    @required("net")
    def build_model(self, params, n_clas):
        """An nn.Module with n_clas outputs per prediction (params.arch, ps, pretrain)."""

    def head_of(self, model):
        """The module that makes the predictions (the last layer group: its own rate, never frozen), or None."""
        return self.call("net", "head_of", model)

    def forward(self, model, x, targets):
        """A training step's forward pass: x [B,3,H,W] -> what build_loss's loss and EpochMetrics read. Only a
        model that computes its losses itself (a detector) needs the targets."""
        return model(x)

    # ---- loss (loss.py) ---------------------------------------------------------------------------------------
    def build_loss(self, params, counts):
        """loss(outputs, targets) -> scalar: the training objective for these params (the loss block's weighted
        terms, class_weights from counts). The train `loss` of each epoch is this."""
        return self.call("loss", "build_loss", params, counts)

    def loss_fn(self, outputs, targets):
        """The fixed loss validation and evaluate.py report, the same whatever the params' loss block, so runs
        that train on different terms compare on it."""
        return self.call("loss", "loss_fn", outputs, targets)

    def build_batch_mix(self, params, n_clas):
        """mix(x, y) -> (x, targets) applied to each training batch (MixUp, CutMix), or None."""
        return None

    # ---- metrics (metrics.py) ---------------------------------------------------------------------------------
    def epoch_metrics(self, n_clas, device, keep_details=False):
        """An accumulator with update(outputs, targets or None, batch loss), compute() -> {metric: float} (one
        sync an epoch) and, with keep_details, details(): what the report and the gallery need per sample."""
        return self.call("metrics", "EpochMetrics", n_clas, device, keep_details)

    # ---- evaluation and figures (report.py) -------------------------------------------------------------------
    def predictor(self, params, tta=None, classes=None):
        """predict(model, x, targets) -> outputs, in eval mode: plain, test-time augmented or tiled (and, for
        segmentation, cleaned: keep_regions, which may name `classes`)."""
        return self.call("report", "predictor", params, tta)

    def evaluation_report(self, details, dataset, classes):
        """{name: value}: per-class numbers evaluate.py adds to its metrics file."""
        return self.call("report", "evaluation_report", details, dataset, classes)

    def report_markdown(self, metrics, title):
        """report_<tag>.md's text from evaluate.py's metrics."""
        return self.call("report", "report_markdown", metrics, title)

    def plot_evaluation(self, details, classes, model_dir, tag, title):
        """evaluate.py's figures into model_dir."""
        return self.call("report", "plot_evaluation", details, classes, model_dir, tag, title)

    def best_figures(self, epoch, details, dataset, classes, fixed):
        """Plain data (JSON-able) for the figures of a new best epoch, or None; `fixed`: the gallery's indices."""
        return self.call("report", "best_figures", epoch, details, dataset, classes, fixed)

    def draw_best(self, best, model_dir):
        """[drawing()]: one function per figure of best_figures' data into model_dir (in the plotter's process)."""
        return self.call("report", "draw_best", best, model_dir)

    # ---- predictions on new images (report.py): predict.py -----------------------------------------------------
    def preprocess(self, transform, image):
        """An HxWx3 uint8 image through the run's evaluation transform: the input tensor [3,h,w]."""
        return transform(image=image)["image"]

    def prediction(self, output, classes):
        """One image's prediction, JSON-able, from its output (what the default save_predictions writes for it)."""
        return self.call("report", "prediction", output, classes)

    def save_predictions(self, outputs, images, out_dir, classes):
        """One JSON-able row per image of a batch's outputs (in the images' own pixels), writing the per-image files
        (a mask, a label file) under out_dir. images: [{"image": path, "stem": its output path without extension,
        "size": (width, height) as stored, "input": (width, height) the model saw}]."""
        return self.call("report", "save_predictions", outputs, images, out_dir, classes)

    def draw_prediction(self, image, row, scale, out_dir, classes):
        """(the image with its prediction drawn, [core.rundir.plots.Text labels]) for predict.py --draw. image: HxWx3
        uint8, enlarged `scale` times (nearest) when small; row: what save_predictions returned for it."""
        return self.call("report", "draw_prediction", image, row, scale, out_dir, classes)

    def finish_predictions(self, rows, out_dir, classes):
        """Write the files over all images (a CSV, a COCO JSON) from every row; returns their names."""
        return self.call("report", "finish_predictions", rows, out_dir, classes)

    # ---- export (net.py): export.py ----------------------------------------------------------------------------
    def export_parts(self, model, params):
        """(graph, decode): `graph`, an nn.Module from x [B,3,H,W] to a tensor or a tuple of tensors whose shapes
        follow x's alone (what export.py traces and writes); decode(outputs, x) -> what model(x) gives in eval mode,
        or None where that is the graph's output itself. Default: the model, no decoding."""
        return model, None

    # ---- params -----------------------------------------------------------------------------------------------
    def check_params(self, params, classes, where):
        """A one-line UserError for what params say that this task or the data cannot honour, before anything is
        written: the keys in `refused`, n_clas and class weights against the data, a loss with no term on (another
        task's term turned on is refused when the params are read: core/config.py resolve)."""
        from utils import UserError

        for key, what in self.refused.items():
            if getattr(params, key):
                raise UserError(f"{where}: key '{key}' {what}; not for {self.name} (leave it out)")
        if params.n_clas is not None and params.n_clas != len(classes):
            raise UserError(f"{where}: key 'n_clas' is {params.n_clas} but the data has {len(classes)} "
                            f"{self.classes_are}")
        weights = params.class_weights
        if isinstance(weights, list) and len(weights) != len(classes):
            raise UserError(f"{where}: key 'class_weights' has {len(weights)} weights but the data has "
                            f"{len(classes)} classes")
        self.check_loss(vars(params.loss), where)

    def check_loss(self, block, where, defaults=None):
        """The loss block turns on only this task's terms (another task's stays at its default, in `defaults`), and
        one of them weighs above 0."""
        from utils import UserError

        own = self.loss_keys()
        for key, value in block.items():
            if key not in own and defaults is not None and value != defaults.get(key):
                why = (f"it is not a loss term of {self.name} (its terms: {', '.join(self.loss_terms)})"
                       if self.loss_terms else f"{self.name} trains on {self.trains_on}")
                raise UserError(f"{where}: key 'loss.{key}' is {value}, but {why}")
        if self.loss_terms and not any(block.get(t, term.weight) > 0 for t, term in self.loss_terms.items()):
            raise UserError(f"{where}: key 'loss': every term weighs 0, nothing to train on (terms: "
                            f"{', '.join(self.loss_terms)})")

    def loss_keys(self):
        """{key of the loss block: default}: each term's weight and its settings (<term>_<setting>)."""
        return loss_keys(self.loss_terms)


# ---------------------------------------------------------------- what a task's files build on


@dataclass(frozen=True)
class Metric:
    formula: Callable  # (sums) -> float: sums is what the task's EpochMetrics added up over an epoch
    minimize: bool = False  # True when lower is better
    min_classes: int = 2  # computed only with at least this many classes (keypoints and detection: 1)


def metric_names(metrics, n_clas=None):
    """The names of `metrics` ({name: Metric}) an epoch reports, in order; with n_clas, only those that make sense
    for that many classes."""
    return [name for name, m in metrics.items() if n_clas is None or n_clas >= m.min_classes]


# every task reports its validation loss, the epoch's summed batch losses over its samples (EpochSums)
LOSS = Metric(lambda s: s["loss"] / s["n"], minimize=True, min_classes=1)


class EpochSums:
    """What the tasks' EpochMetrics sum (detection's sums its loss terms on the CPU instead): the loss, each
    batch's mean weighted back by its size (so a short last batch counts for its samples only), and the samples
    seen, on the device: an epoch syncs once, in `sums`."""

    def __init__(self, device):
        import torch

        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.n, self.loss_only = 0, False  # samples seen (a Python int: known without a sync); a targetless batch

    def add_loss(self, loss, n, targets):
        """Add a batch of n samples; False when it has no targets (mixed by MixUp/CutMix), which count for the loss
        only from then on (loss_only)."""
        self.loss_sum += loss.detach().double() * n
        self.n += n
        self.loss_only = self.loss_only or targets is None
        return targets is not None

    def sums(self):
        return {"n": self.n, "loss": self.loss_sum.item()}

    def loss_alone(self):
        """compute()'s answer when the epoch has only a loss to report ({} when empty), else None."""
        if self.n == 0:
            return {}
        return {"loss": self.loss_sum.item() / self.n} if self.loss_only else None


