"""Every params key, once: its default, type, one-line meaning, allowed values, whether a resume may change it,
whether it is a hyperparameter and what evaluation and a smoke test set it to. The one home for defaults;
core/config.py validates params.json against it.
"""

from collections.abc import Mapping
from dataclasses import dataclass

from core.stages import PLANS
from core.tasks import loss_defaults, registered  # no torch there: search planning and tables stay fast

FLAG, LR, OPT_INT, AUG, ANY = "0/1", "float or list of floats", "int or null", "preset name or dict", "any"
INT_LIST, OPT_FLAG, OPT_STR = "list of ints", "0/1 or null", "string or null"
WEIGHTS = '"balanced", a list of numbers or null'


def at_least(n):
    return lambda v: v >= n, f">= {n}"


def above(n):
    return lambda v: v > n, f"> {n}"


def between(low, high):
    return lambda v: low <= v <= high, f"in [{low}, {high}]"


def class_weights_ok(v):
    """null, "balanced" or a list of positive numbers (its length is checked against the data's classes)."""
    return v is None or v == "balanced" or (isinstance(v, list) and len(v) > 0 and all(x > 0 for x in v))


def keep_regions_ok(v):
    """0 (off), N >= 1 for every class, or {class name: N >= 1} (checked against the data's classes later)."""
    is_int = lambda x: isinstance(x, int) and not isinstance(x, bool)  # noqa: E731
    return (is_int(v) and v >= 0) or (isinstance(v, dict) and all(is_int(n) and n >= 1 for n in v.values()))


def fraction(closed_low=True):
    return (lambda v: 0 <= v < 1, "in [0, 1)") if closed_low else (lambda v: 0 < v < 1, "in (0, 1)")


SAME = "same as the default"


TRACKERS = ("tensorboard", "mlflow", "wandb")
# keys that params files of earlier versions may hold: what they became (config.py's upgrade() applies it)
RETIRED = {"tensorboard": lambda on: ("loggers", ["tensorboard"] if on else [])}


def positive_or_null(v):
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0)


def loggers_ok(v):
    return isinstance(v, list) and all(x in TRACKERS for x in v) and len(set(v)) == len(v)


def loss_keys():
    """{"loss.<term>": Key, "loss.<term>_<setting>": Key} over every task's loss terms (model/<task>/loss.py
    TERMS): the loss block's keys, learned from the tasks. A run's params carry every task's terms, the others'
    at their defaults (each task's check_params refuses another's term turned on)."""
    docs = {}  # {key: {what it is: [the tasks it is that for]}}: a name two tasks share may mean two things
    for task in registered().values():
        for name, term in task.loss_terms.items():
            for key, doc in {name: f"weight of {term.doc}", **{f"{name}_{s}": f"{name}'s {s}" for s in term.settings}
                             }.items():
                docs.setdefault(key, {}).setdefault(doc, []).append(task.name)
    return {f"loss.{key}": Key(default, float, "training loss: " + "; ".join(
        f"{doc} ({', '.join(names)})" for doc, names in docs[key].items()), check=at_least(0))
            for key, default in loss_defaults().items()}


@dataclass(frozen=True)
class Key:
    """Everything the project knows about one params key."""

    default: object
    type: object  # int, float, str, or one of the compound kinds above
    doc: str  # one line; README's params table says the same
    choices: tuple = ()
    check: tuple = None  # (test, what a value must be), e.g. at_least(1)
    resumable: bool = False  # a resume may change it: it alters how a run executes or is shown, not what it computes
    hyperparam: bool = True  # a column of results tables and a key hyper_search may vary
    evaluate: object = None  # the value evaluate.py uses, whatever the run had (None: the run's own)
    smoke: object = None  # the value search --smoke uses: in its own process, writing nothing (None: the cell's own)
    legacy: object = SAME  # what runs did before the key existed (SAME: its default), for resuming their checkpoints

    @property
    def before_it_existed(self):
        return self.default if self.legacy is SAME else self.legacy


class Keys(Mapping):
    """KEYS, a read-only dict built on first use: the `task` key's choices and the loss block's keys come from the
    registered tasks (core/tasks.py), so core/ may be imported before model.tasks registers them."""

    def __init__(self, build):
        self.build, self.built = build, None

    def all(self):
        if self.built is None:
            self.built = self.build()
            assert {key.split(".")[0] for key in self.built if "." in key} == NESTED, "a new block: add it to NESTED"
        return self.built

    def __getitem__(self, key):
        return self.all()[key]

    def __iter__(self):
        return iter(self.all())

    def __len__(self):
        return len(self.all())

    def __contains__(self, key):
        return key in self.all()


NESTED = {"early_stopping", "loss"}  # the blocks of dotted keys: params.early_stopping.patience, params.loss.ce

KEYS = Keys(lambda: {
    "task": Key("classification", str, "what a sample's target is: classification (a label per image), "
                "segmentation (a class per pixel), keypoints (K named points), detection (boxes) or multilabel (a set "
                "of labels per image); model/tasks.py",
                choices=tuple(registered())),
    # model
    "arch": Key(None, OPT_STR, "the task's architecture (null: its default, small_cnn, unet, small_fcos or "
                "heatmap_unet): small_cnn or a torchvision classifier (resnet18, ...); unet or a torchvision "
                "segmenter (deeplabv3_resnet50, ...); small_fcos, small_rt_detr or a torchvision detector "
                "(fasterrcnn_resnet50_fpn, ...); heatmap_unet or a torchvision classifier as a point regressor; a "
                "multilabel task takes the classifiers"),
    "pretrain": Key(0, FLAG, "1: start from torchvision's ImageNet weights (torch cache or pretrained_path)",
                    evaluate=0),  # evaluation loads the trained weights instead
    "pretrained_path": Key("", str, "torchvision weights file, for pretrain=1 on a machine without network"),
    "init_weights_path": Key("", str, "start from another run's checkpoint (model weights whose shapes match)"),
    "n_clas": Key(None, OPT_INT, "number of classes; null: the number of class folders in the data",
                  check=(lambda v: v is None or v >= 2, ">= 2")),
    "ps": Key(0.25, float, "dropout before the head", check=fraction()),
    # loss and labels (model/<task>/loss.py): loss.<term> and loss.<term>_<setting> come from the tasks' TERMS
    **loss_keys(),
    "aux_weight": Key(0.4, float, "segmentation: weight of the auxiliary head's loss (fcn, deeplabv3)",
                      check=at_least(0)),
    "box_loss_weights": Key(None, ANY, "detection training loss: {term: weight} over the detector's loss terms "
                            "(a term left out weighs 1); null: their plain sum", check=(
                                lambda v: v is None or (isinstance(v, dict) and all(
                                    isinstance(w, (int, float)) and not isinstance(w, bool) and w >= 0
                                    for w in v.values())), "null or an object of weights >= 0")),
    "point_loss": Key("smooth_l1", str, "keypoints training loss over the labelled points, in pixels",
                      choices=("smooth_l1", "l1", "mse")),
    "label_smoothing": Key(0.0, float, "training loss: spread this much of each target over all classes",
                           check=fraction()),
    "class_weights": Key(None, WEIGHTS, "training loss: per-class weights; balanced: n / (n_classes * count) from "
                         "the training split; null: all 1", check=(class_weights_ok, 'null, "balanced" or a list '
                                                                   'of numbers > 0')),
    # data
    "im_sz": Key(32, int, "images are resized to im_sz x im_sz", check=at_least(8)),
    "crop_size": Key(0, int, "segmentation, detection, keypoints: train on crop_size x crop_size crops of each image "
                     "at its own resolution (padded where smaller) instead of resizing it to im_sz; 0: resize",
                     check=(lambda v: v == 0 or v >= 8, "0 or >= 8")),
    "crop_mode": Key("objects", str, "which crops: objects (one holding an object, where the image has one) or "
                     "random", choices=("objects", "random")),
    "augmentation": Key("light", AUG, "train augmentation: a preset of model/<task>/data_loader.py or an "
                        "albumentations dict"),
    "cache_images": Key(0, FLAG, "1: decode each split once into DATA_DIR/.cache, memory-mapped and shared by all runs",
                        resumable=True, smoke=0),
    "mixup_alpha": Key(0.0, float, "MixUp: blend pairs of training images and their labels, weight ~ "
                       "Beta(alpha, alpha) (0: off)", check=at_least(0)),
    "cutmix_alpha": Key(0.0, float, "CutMix: paste a box of another training image, area ~ Beta(alpha, alpha) "
                        "(0: off; with mixup_alpha too, one of the two per batch)", check=at_least(0)),
    "mix_prob": Key(1.0, float, "probability that a training batch is mixed, when mixup_alpha or cutmix_alpha "
                    "is on", check=between(0, 1)),
    "batch_size": Key(64, int, "training batch size", check=at_least(1)),
    "bs_test": Key(256, int, "evaluation batch size", check=at_least(1), resumable=True),
    "num_workers": Key(0, int, "DataLoader worker processes (0: load in the main process)", check=at_least(0),
                       resumable=True, smoke=0),
    "train_subset": Key(0, int, "use only N training images, a fixed seeded choice (0: all); for quick debugging",
                        check=at_least(0), evaluate=0),
    "valid_subset": Key(0, int, "use only N validation images (0: all)", check=at_least(0), evaluate=0),
    # optimisation
    "optimizer": Key("adamw", str, "sgd, adam or adamw", choices=("sgd", "adam", "adamw")),
    "learning_rate": Key(2e-3, LR, "one rate, or one per layer group with the head last",
                         check=(lambda v: all(x > 0 for x in (v if isinstance(v, list) else [v])), "> 0")),
    "momentum": Key(0.9, float, "sgd momentum (beta1 for adam/adamw)", check=fraction()),
    "wd": Key(1e-4, float, "weight decay", check=at_least(0)),
    "wd_norm_bias": Key(0, FLAG, "1: weight decay on normalisation weights and biases too (0: only on weight "
                        "matrices and kernels)", legacy=1),  # older runs decayed every parameter
    "grad_clip": Key(0.0, float, "clip the gradient norm to this before each optimizer step (0: off)",
                     check=at_least(0)),
    "accumulate_steps": Key(1, int, "gradient accumulation: one optimizer step every N batches",
                            check=at_least(1)),
    # recomputing gives the very same gradients (tests/test_distributed.py): a resume may switch it
    "grad_checkpointing": Key(0, FLAG, "1: the model's blocks recompute their activations in backward (less memory, "
                              "one more forward pass; core/training/activations.py)", resumable=True),
    "sync_bn": Key(0, FLAG, "several processes (torchrun): 1 makes BatchNorm SyncBatchNorm, statistics over the "
                   "global batch"),
    "ema_decay": Key(0.0, float, "keep an exponential moving average of the weights (decay per optimizer step, "
                     "warmed up) and validate it (0: off)", check=fraction()),
    "scheduler": Key("one_cycle", str, "one_cycle, cosine, step, plateau or none",
                     choices=("one_cycle", "cosine", "step", "plateau", "none")),
    "div_factor": Key(25.0, float, "one_cycle: initial lr = learning_rate / div_factor", check=above(0)),
    "pct_start": Key(0.3, float, "one_cycle: fraction of steps spent warming up", check=fraction(closed_low=False)),
    "step_size": Key(5, int, "step: epochs between decays", check=at_least(1)),
    "gamma": Key(0.1, float, "step and plateau: factor applied to the lr at each decay", check=above(0)),
    "plateau_patience": Key(2, int, "plateau: epochs without improvement before the lr decays", check=at_least(0)),
    "num_epochs": Key(10, int, "number of epochs (with stages: their sum)", check=at_least(1)),
    # training plans (core/stages.py)
    "stages": Key([], ANY, "a training plan: [{num_epochs, and training keys for those epochs only}, ...]; epochs "
                  "are numbered across stages, each gets a fresh optimizer and its own schedule"),
    "plan": Key("none", str, "a preset plan: fine_tune (1 epoch on a frozen body, then discriminative rates)",
                choices=PLANS),
    "freeze": Key("none", ANY, "parameters not trained: none, body (all but the head), or N layer groups from the "
                  "input (of learning_rate's groups); frozen BatchNorm keeps its statistics"),
    "early_stopping.patience": Key(10, int, "stop after this many epochs without improvement (0: never)",
                                   check=at_least(0)),
    "early_stopping.monitor_metric": Key(None, OPT_STR, "validation metric that picks best.pth.tar and drives "
                                         "stopping: one of the task's (null: its headline; model/<task>/metrics.py)"),
    "early_stopping.min_delta": Key(0.0, float, "smallest change that counts as an improvement", check=at_least(0)),
    "early_stopping.minimize": Key(None, OPT_FLAG, "1 when a smaller monitor_metric is better; null: the metric's "
                                   "own direction (model/<task>/metrics.py)"),
    # evaluation
    "eval_window": Key(0, int, "segmentation, detection: evaluate in window x window tiles (pixels; 0: the whole "
                       "image)", check=at_least(0)),
    "eval_stride": Key(0, int, "segmentation, detection: pixels between tiles (0: eval_window // 2)",
                       check=at_least(0)),
    "keep_regions": Key(0, ANY, "segmentation: keep each class's N largest connected regions of a predicted mask, the "
                        "rest becomes background (0: off; or {class name: N} for the classes named)",
                        check=(keep_regions_ok, "an int >= 0 or an object of ints >= 1")),
    # run
    "data_dir": Key(None, OPT_STR, "the data set: a folder, relative to the repository or absolute (null: the task's "
                    "own); train.py --data_dir overrides it; hyper_search may vary it"),
    "seed": Key(230, int, "seed for torch, numpy, random, data order and augmentation", check=at_least(0)),
    "cuda": Key(1, FLAG, "use a GPU when one is available", resumable=True),
    # how many run it, not what they compute; resumable only in that check_resume leaves it to
    # core/training/distributed.py check, which refuses a resume with another world size
    "nproc": Key(1, int, "processes that train the run together (DDP through torchrun: one a GPU, or CPU "
                 "processes); batch_size stays the global batch", check=at_least(1), resumable=True, smoke=1),
    # like cuda, compiling changes how the forward pass runs (float rounding may differ), not what is computed
    "compile": Key(0, FLAG, "1: torch.compile the model for training (eager, with a message, where it cannot)",
                   resumable=True, smoke=0),
    # which kernels run, not what they compute; a resume that toggles it is not bit-identical on a GPU
    "deterministic": Key(0, FLAG, "1: deterministic kernels only (cuDNN without autotuning, torch's deterministic "
                         "algorithms): GPU runs and their resumes bit-identical, a little slower; the CPU's already "
                         "are", resumable=True),
    # when a checkpoint is written changes nothing the run computes (tested bit-identical): a resume may change it
    "checkpoint_every_s": Key(None, ANY, "also write last.pth.tar within an epoch, every S seconds of training (at "
                              "an optimizer step), so a preempted run resumes from that batch (null: at epoch ends "
                              "only)", check=(positive_or_null, "a number > 0, or null"), resumable=True),
    "checkpoint_every_batches": Key(None, OPT_INT, "also write last.pth.tar within an epoch every N training "
                                    "batches (null: at epoch ends only)", check=(positive_or_null, "an int >= 1, "
                                    "or null"), resumable=True),
    # validating changes no weights (no RNG drawn, no statistics updated): a resume may change it
    "val_every_batches": Key(0, int, "also validate every N training batches within an epoch (history.json "
                             "'checks', train_history.png); best.pth.tar and early stopping read the end-of-epoch "
                             "validations (0: off)", check=at_least(0), resumable=True, smoke=0),
    "save_summary_steps": Key(10, int, "refresh the progress bar every N batches (each refresh waits for the GPU)",
                              check=at_least(1), resumable=True),
    # insight and debugging
    "monitor_gradients": Key(1, FLAG, "per-layer gradient norms and update/weight ratios in history and "
                             "gradients.png", resumable=True),
    # trackers mirror the folder (docs/trackers.md): turning one on or off changes nothing the run computes
    "loggers": Key([], ANY, "experiment trackers that also show the run: a list of tensorboard, mlflow, wandb "
                   "(each an optional install: requirements-trackers.txt)", check=(loggers_ok, "a list of "
                   "distinct names from tensorboard, mlflow, wandb"), resumable=True),
    "log_checkpoints": Key(0, FLAG, "1: MLflow and W&B also keep best.pth.tar and last.pth.tar at the end of a "
                           "session (they keep the figures and metrics files anyway)", resumable=True),
    "gallery_indices": Key([], INT_LIST, "valid examples shown in predictions.png ([]: a seeded choice)",
                           check=(lambda v: all(i >= 0 for i in v), "a list of indices >= 0"), resumable=True),
    "gallery_size": Key(16, int, "how many valid examples predictions.png shows when gallery_indices is empty",
                        check=at_least(0), resumable=True),
    "plot_every_s": Key(30.0, float, "redraw the figures at most every N s, in a helper process (0: after each "
                        "epoch)", check=at_least(0), resumable=True),
    "overfit_batches": Key(0, int, "debug: train on N fixed batches without augmentation and validate on them",
                           check=at_least(0), evaluate=0, smoke=0),
    "n_repetitions": Key(1, int, "search_hyperparams.py: train every cell this many times with distinct seeds",
                         check=at_least(1), hyperparam=False),
    "hyper_search": Key(None, ANY, "read by search_hyperparams.py; ignored by train.py", hyperparam=False),
})
