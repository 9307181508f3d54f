"""Optimizer and learning-rate schedule from params, with one learning rate per layer group."""

import math

import torch

from utils import UserError

# schedulers stepped after every batch; the others step once per epoch
PER_BATCH = ("one_cycle", "cosine")


def layer_groups(model, n_groups, task):
    """Split the parameters into `n_groups` lists in model order; the last group is the head (the task's head_of).

    The body before the head is cut into n_groups - 1 contiguous chunks, so `learning_rate: [1e-4, 1e-3, 1e-2]`
    gives early layers the smallest rate (discriminative fine-tuning).
    """
    head = task.head_of(model)
    head_params = list(head.parameters()) if head is not None else []
    if not head_params and n_groups == 1:
        return [list(model.parameters())]
    if not head_params:
        raise UserError(f"params key 'learning_rate': {n_groups} rates need layer groups, which end at "
                        f"{task.head}; {type(model).__name__} (model/{task.name}/net.py) has none")
    head_ids = {id(p) for p in head_params}
    body = [p for p in model.parameters() if id(p) not in head_ids]
    if n_groups == 1:
        return [body + head_params]
    if n_groups - 1 > len(body):
        raise UserError(f"params key 'learning_rate': {n_groups} rates but the model has only "
                        f"{len(body) + 1} parameter tensors")
    size, extra = divmod(len(body), n_groups - 1)
    groups, start = [], 0
    for i in range(n_groups - 1):
        end = start + size + (i < extra)
        groups.append(body[start:end])
        start = end
    return groups + [head_params]


def learning_rates(params):
    return params.learning_rate if isinstance(params.learning_rate, list) else [params.learning_rate]


def decays(p, wd_norm_bias):
    """Whether weight decay applies to parameter p: to weight matrices and conv kernels, and to 1-D parameters
    (normalisation weights, biases) only with wd_norm_bias: shrinking those towards 0 only hurts (timm, nanoGPT)."""
    return p.dim() > 1 or bool(wd_norm_bias)


def param_groups(params, model, task):
    """The optimizer's parameter groups: each layer group (its own learning rate) split into the parameters that
    decay and those that do not. `layer_group` tags each, so one learning rate per layer group can be reported."""
    lrs = learning_rates(params)
    groups = []
    for i, (ps, lr) in enumerate(zip(layer_groups(model, len(lrs), task), lrs)):
        ps = [p for p in ps if p.requires_grad]  # frozen: no gradient, no decay, no optimizer state
        decay = [p for p in ps if decays(p, params.wd_norm_bias)]
        rest = [p for p in ps if not decays(p, params.wd_norm_bias)]
        groups += [{"params": decay, "lr": lr, "layer_group": i}] if decay else []
        groups += [{"params": rest, "lr": lr, "layer_group": i, "weight_decay": 0.0}] if rest else []
    return groups


def freeze(model, task, spec, n_groups):
    """Freeze "body" (all but the task's head), the first N of the n_groups layer groups, or nothing ("none");
    unfreeze the rest. Returns the BatchNorm layers left with nothing to train, which must stay in eval mode: in
    train mode they would go on updating their running statistics."""
    frozen = set()
    if spec == "body":
        head = task.head_of(model)
        if head is None:
            raise UserError(f"params key 'freeze': \"body\" freezes all but the head, which ends at {task.head}; "
                            f"{type(model).__name__} has none")
        head_ids = {id(p) for p in head.parameters()}
        frozen = {id(p) for p in model.parameters() if id(p) not in head_ids}
    elif isinstance(spec, int) and spec > 0:
        frozen = {id(p) for group in layer_groups(model, n_groups, task)[:spec] for p in group}
    for p in model.parameters():
        p.requires_grad_(id(p) not in frozen)
    return tuple(m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                 and any(True for _ in m.parameters(recurse=False))
                 and all(id(p) in frozen for p in m.parameters(recurse=False)))


def layer_lrs(optimizer):
    """The current learning rate of each layer group, head last (its decay and no-decay halves share it)."""
    # groups restored from a checkpoint older than the decay split carry no tag: one group per layer group then
    return list({g.get("layer_group", i): g["lr"] for i, g in enumerate(optimizer.param_groups)}.values())


def optimizer_steps(n_batches, accumulate_steps):
    """Optimizer steps in an epoch of n_batches: one per accumulate_steps batches, plus one for a remainder
    (accumulation never crosses an epoch's end)."""
    return math.ceil(n_batches / accumulate_steps)


def build_optimizer(params, model, task):
    groups = param_groups(params, model, task)
    if params.optimizer == "sgd":
        return torch.optim.SGD(groups, momentum=params.momentum, weight_decay=params.wd, nesterov=params.momentum > 0)
    cls = torch.optim.Adam if params.optimizer == "adam" else torch.optim.AdamW
    return cls(groups, betas=(params.momentum, 0.999), weight_decay=params.wd)


def build_scheduler(params, optimizer, steps_per_epoch):
    """steps_per_epoch: optimizer steps per epoch (optimizer_steps), which per-batch schedules count."""
    total = params.num_epochs * steps_per_epoch
    s = params.scheduler
    if s == "one_cycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=total,
            div_factor=params.div_factor, pct_start=params.pct_start,
            cycle_momentum=False)  # keep params.momentum as given (cycling would silently replace it)
    if s == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    if s == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=params.step_size, gamma=params.gamma)
    if s == "plateau":
        mode = "min" if params.early_stopping.minimize else "max"
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode=mode, factor=params.gamma,
                                                          patience=params.plateau_patience)
    return None


def step_per_epoch(scheduler, params, monitored_value):
    """Advance an epoch-level schedule (step, plateau); batch-level ones were stepped in the loop."""
    if scheduler is None or params.scheduler in PER_BATCH:
        return
    if params.scheduler == "plateau":
        scheduler.step(monitored_value)
    else:
        scheduler.step()
