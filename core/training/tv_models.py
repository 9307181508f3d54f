"""torchvision classifiers with a new head, offline-safe pretrained weights, and weight transfer between runs.

torchvision.models is imported only where a torchvision architecture is asked for: it pulls in torch._dynamo,
about a second of start-up that a small_cnn run never needs.
"""

import difflib
import os

import torch
import torch.nn as nn

from utils import UserError


def torchvision_model(arch, n_clas, ps, pretrain, pretrained_path=""):
    import torchvision.models as tvm

    names = tvm.list_models(module=tvm)
    if arch not in names:
        close = difflib.get_close_matches(arch, names + ["small_cnn"], n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else " (small_cnn or a torchvision classifier name)"
        raise UserError(f"params key 'arch': unknown architecture '{arch}'{hint}")
    model = tvm.get_model(arch, weights=None)
    if pretrain:
        model.load_state_dict(pretrained_state(arch, pretrained_path))
    replace_head(model, arch, n_clas, ps)
    return model


def pretrained_state(arch, pretrained_path):
    """ImageNet weights from `pretrained_path`, else torch's cache, else a download; offline, a clear error."""
    import torchvision.models as tvm

    weights = tvm.get_model_weights(arch).DEFAULT
    cached = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))
    path = pretrained_path or cached
    if os.path.isfile(path):
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise UserError(f"{path}: cannot load {arch} weights ({type(e).__name__})") from None
    if pretrained_path:
        raise UserError(f"params key 'pretrained_path': {pretrained_path} not found")
    try:
        return weights.get_state_dict(progress=False)
    except Exception:
        raise UserError(f"pretrain=1: {arch} weights are not in {cached} and could not be downloaded; "
                        f"fetch {weights.url} to that path, or set pretrained_path") from None


def replace_head(model, arch, n_clas, ps):
    """Swap the last Linear layer for Dropout(ps) + Linear(n_clas), or set the dropout already in front of it."""
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise UserError(f"params key 'arch': '{arch}' has no Linear classifier head to replace")
    *parents, last = linears[-1].split(".")
    owner = model
    for p in parents:
        owner = getattr(owner, p)
    old = getattr(owner, last)
    siblings = list(owner.children()) if isinstance(owner, nn.Sequential) else []
    before = siblings[siblings.index(old) - 1] if old in siblings and siblings.index(old) > 0 else None
    if isinstance(before, nn.Dropout):  # the model's own head dropout (efficientnet, mobilenet, vgg): reuse it
        before.p = ps
        setattr(owner, last, nn.Linear(old.in_features, n_clas))
    else:
        setattr(owner, last, nn.Sequential(nn.Dropout(ps), nn.Linear(old.in_features, n_clas)))
