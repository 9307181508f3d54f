"""Training plans: a run as a list of stages, each overriding training keys for its own epochs.

    "stages": [{"num_epochs": 2, "freeze": "body", "learning_rate": 0.01},
               {"num_epochs": 8, "learning_rate": [1e-4, 1e-3, 1e-2], "loss": {"ce": 0.3, "dice": 0.7}}]
    "plan": "fine_tune"        the same written for you (PLANS below)

Epochs are numbered across stages. Each stage gets a fresh optimizer and its own schedule over its own epochs; the
model, its EMA, the best-so-far and the early-stopping count carry over. No torch here: the search validates
every cell's plan while it plans.
"""

import copy
import json

from utils import UserError

# what a stage may change: how the model is trained, never what it is (arch, data, task, seed, subsets)
STAGE_KEYS = ("learning_rate", "wd", "wd_norm_bias", "optimizer", "momentum", "scheduler", "div_factor", "pct_start",
              "step_size", "gamma", "plateau_patience", "freeze", "aux_weight",
              "box_loss_weights", "label_smoothing", "augmentation", "mixup_alpha", "cutmix_alpha", "mix_prob",
              "ema_decay", "accumulate_steps", "grad_clip", "batch_size")
PLANS = ("none", "fine_tune")
BLOCKS = ("loss",)  # params blocks a stage may set any key of (the loss terms the task's loss.py declares)


def fine_tune(params):
    """fastai's fine_tune: one epoch of the head on a frozen body at learning_rate (one cycle, almost all warm-up),
    then the rest unfrozen with discriminative rates, base/100 .. base for three layer groups, base halved."""
    lr = params["learning_rate"][-1] if isinstance(params["learning_rate"], list) else params["learning_rate"]
    base = lr / 2
    return [{"num_epochs": 1, "freeze": "body", "learning_rate": lr, "scheduler": "one_cycle", "pct_start": 0.99},
            {"num_epochs": params["num_epochs"] - 1, "learning_rate": [base / 100, base / 10, base],
             "scheduler": "one_cycle", "pct_start": 0.3, "div_factor": 5.0}]


def check_plan(out, given_epochs, where, check_value, flatten):
    """Validate out["stages"] (or expand out["plan"]) in a resolved params dict, in place; num_epochs becomes the sum
    of the stages'. given_epochs: num_epochs as params.json or an override set it (None: left out). check_value and
    flatten: core/config.py's, passed in because config imports this module."""
    stages, plan = out.get("stages"), out.get("plan", "none")
    if not isinstance(stages, list):
        raise UserError(f"{where}: key 'stages' expects a list of objects, got {json.dumps(stages)[:80]}")
    if plan != "none":
        if out["num_epochs"] < 2:
            raise UserError(f"{where}: key 'plan' {json.dumps(plan)} needs num_epochs >= 2 (1 frozen epoch, then "
                            f"the rest), got {out['num_epochs']}")
        if stages and stages != fine_tune(out):  # equal: params already resolved once (params_effective.json)
            raise UserError(f"{where}: key 'plan' is {json.dumps(plan)} and 'stages' is given too; use one of them")
        out["stages"] = stages = fine_tune(out)
    if not stages:
        return
    for i, stage in enumerate(stages):
        check_stage(stage, f"{where}: stages.{i}", check_value, flatten)
    total = sum(s["num_epochs"] for s in stages)
    if given_epochs is not None and given_epochs != total and plan == "none":
        raise UserError(f"{where}: key 'num_epochs' is {given_epochs} but the stages add up to {total}; "
                        f"leave num_epochs out or make them agree")
    out["num_epochs"] = total
    for i in range(len(stages)):  # each stage's own values must make a valid run too (e.g. freeze vs rates)
        check_freeze(stage_params(out, i), f"{where}: stages.{i}")


def check_stage(stage, where, check_value, flatten):
    if not isinstance(stage, dict):
        raise UserError(f"{where}: expected an object with num_epochs, got {json.dumps(stage)[:80]}")
    n = stage.get("num_epochs")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise UserError(f"{where}: key 'num_epochs' must be an int >= 1, got {json.dumps(n)}")
    for key, value in flatten({k: v for k, v in stage.items() if k != "num_epochs"}).items():
        if not is_stage_key(key):
            raise UserError(f"{where}: key '{key}' cannot change within a run (a stage may set: "
                            f"{', '.join(STAGE_KEYS)} and the loss block's terms)")
        check_value(key, value, where)


def is_stage_key(key):
    """Whether a stage may set `key` (a flattened params key)."""
    return key in STAGE_KEYS or key.split(".")[0] in BLOCKS


def check_freeze(params, where):
    """freeze: "none", "body", or N layer groups counted from the input, N below the stage's number of rates."""
    freeze, rates = params["freeze"], params["learning_rate"]
    n_groups = len(rates) if isinstance(rates, list) else 1
    if freeze in ("none", "body"):
        return
    if isinstance(freeze, bool) or not isinstance(freeze, int) or freeze < 0:
        raise UserError(f"{where}: key 'freeze' must be \"none\", \"body\" or a number of layer groups >= 0, got "
                        f"{json.dumps(freeze)}")
    if freeze >= n_groups and freeze > 0:
        raise UserError(f"{where}: key 'freeze' {freeze} leaves nothing to train: learning_rate has {n_groups} "
                        f"layer group(s), head last (freeze at most {n_groups - 1}, or \"body\")")


def stage_params(params, i):
    """The resolved params dict stage i trains with: the run's, its overrides applied, num_epochs its own."""
    out = {k: copy.deepcopy(v) for k, v in params.items() if k not in ("stages", "plan")}
    if not params.get("stages"):
        return out
    for key, value in params["stages"][i].items():
        if key in BLOCKS and isinstance(value, dict):
            out[key] = {**out[key], **value}  # a block (loss) sets only the terms it names
        else:
            out[key] = copy.deepcopy(value)
    return out


def stage_starts(params):
    """The first epoch of each stage ([1] for a run without stages)."""
    starts, epoch = [], 1
    for stage in params.get("stages") or [{"num_epochs": params["num_epochs"]}]:
        starts.append(epoch)
        epoch += stage["num_epochs"]
    return starts


def stage_of(params, epoch):
    """The index of the stage that trains `epoch`."""
    return sum(start <= epoch for start in stage_starts(params)) - 1


def stage_flat(params, flatten):
    """{"stages.0.learning_rate": ...}: each stage's keys, as results tables and TPE name them (flatten: config's)."""
    return {f"stages.{i}.{k}": v for i, stage in enumerate(params.get("stages") or [])
            for k, v in flatten(stage).items()}
