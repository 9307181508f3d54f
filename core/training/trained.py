"""A trained run as evaluate.py, predict.py and export.py use it: its checkpoint, its params (the whole data, no
pretraining: the weights come from the checkpoint) and its model with the weights its validation saw.

    ckpt, params, task = trained_run(path, option_overrides(args))
    model = trained_model(ckpt, params, task, path)
"""

from core import tasks
from core.config import Params, fixed_overrides, resolve
from core.training.state import evaluated_weights, run_checkpoint
from utils import UserError, one_line

EVAL_OPTIONS = ("eval_window", "eval_stride", "keep_regions")  # params keys evaluate.py and predict.py set as flags


def option_overrides(args):
    """KEY=VALUE overrides of the EVAL_OPTIONS flags given on the command line, for trained_run."""
    return [f"{k}={v}" for k in EVAL_OPTIONS if (v := getattr(args, k)) is not None]


def trained_run(path, overrides=()):
    """(checkpoint, params, task) of a checkpoint train.py wrote, its params as evaluate.py and predict.py use them
    (the whole data, no pretraining: the weights come from the checkpoint) plus `overrides` (KEY=VALUE)."""
    ckpt = run_checkpoint(path)
    params = trained_params(ckpt["params"], f"{path} (params)", overrides)
    return ckpt, params, tasks.load(params.task)


def trained_params(raw, where, overrides=()):
    """A trained run's params as evaluate.py, predict.py and export.py use them: the whole data, no pretraining."""
    return Params(resolve(raw, where, [*fixed_overrides("evaluate"), *overrides]))


def trained_model(ckpt, params, task, path):
    """The model of `ckpt` with the weights its validation saw (the EMA's when it kept one), on the CPU."""
    model = task.build_model(params, len(ckpt["classes"]))
    try:
        model.load_state_dict(evaluated_weights(ckpt))
    except RuntimeError as e:
        raise UserError(f"{path}: does not fit model/{params.task}/net.py as it is now (edited since?): "
                        f"{one_line(e)[:200]}") from None
    return model
