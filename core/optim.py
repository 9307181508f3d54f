"""Optimizer and learning-rate schedule from params, with one learning rate per layer group."""

import torch
import torch.nn as nn

from utils import UserError

# schedulers stepped after every batch; the others step once per epoch
PER_BATCH = ("one_cycle", "cosine")


def layer_groups(model, n_groups):
    """Split the parameters into `n_groups` lists in model order; the last group is the classifier head.

    The head is the final Linear layer; the body before it is cut into n_groups - 1 contiguous chunks, so
    `learning_rate: [1e-4, 1e-3, 1e-2]` gives early layers the smallest rate (discriminative fine-tuning).
    """
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears and n_groups == 1:
        return [list(model.parameters())]
    if not linears:
        raise UserError(f"params key 'learning_rate': {n_groups} rates need layer groups, which end at a final "
                        f"nn.Linear classifier head; {type(model).__name__} (model/net.py) has none")
    head_module = linears[-1]
    head_ids = {id(p) for p in head_module.parameters()}
    body = [p for p in model.parameters() if id(p) not in head_ids]
    if n_groups == 1:
        return [body + list(head_module.parameters())]
    if n_groups - 1 > len(body):
        raise UserError(f"params key 'learning_rate': {n_groups} rates but the model has only "
                        f"{len(body) + 1} parameter tensors")
    size, extra = divmod(len(body), n_groups - 1)
    groups, start = [], 0
    for i in range(n_groups - 1):
        end = start + size + (i < extra)
        groups.append(body[start:end])
        start = end
    return groups + [list(head_module.parameters())]


def learning_rates(params):
    return params.learning_rate if isinstance(params.learning_rate, list) else [params.learning_rate]


def build_optimizer(params, model):
    lrs = learning_rates(params)
    groups = [{"params": ps, "lr": lr} for ps, lr in zip(layer_groups(model, len(lrs)), lrs)]
    if params.optimizer == "sgd":
        return torch.optim.SGD(groups, momentum=params.momentum, weight_decay=params.wd, nesterov=params.momentum > 0)
    cls = torch.optim.Adam if params.optimizer == "adam" else torch.optim.AdamW
    return cls(groups, betas=(params.momentum, 0.999), weight_decay=params.wd)


def build_scheduler(params, optimizer, steps_per_epoch):
    total = params.num_epochs * steps_per_epoch
    s = params.scheduler
    if s == "one_cycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=learning_rates(params), total_steps=total,
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
