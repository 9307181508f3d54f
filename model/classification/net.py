"""The classifier: `build_model(params, n_clas)` and `head_of(model)` (the layers that get the last learning rate).
Its losses are in loss.py.

`arch` is "small_cnn" (defined below: edit it freely; "small_cnn_gn" with GroupNorm) or any torchvision classifier
("resnet18", "resnet50", "efficientnet_b0", ...), whose last Linear layer is replaced by dropout (`ps`) and a
fresh `n_clas` head.
"""

import difflib

import torch.nn as nn

from utils import UserError


def conv_block(c_in, c_out, norm="batch"):
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out) if norm == "batch" else nn.GroupNorm(8, c_out),
        nn.ReLU(inplace=True),
    )


class SmallCNN(nn.Module):
    """Three conv stages (32-64-128 channels), global pooling, dropout, linear head. ~0.3 M parameters.
    norm="group" (arch small_cnn_gn): GroupNorm, whose statistics are each image's own, so a batch split across
    processes trains as the whole batch would (BatchNorm would need SyncBatchNorm, which torch runs on GPUs only)."""

    def __init__(self, n_clas, ps=0.25, width=32, norm="batch"):
        super().__init__()
        w = width
        block = lambda c_in, c_out: conv_block(c_in, c_out, norm)  # noqa: E731
        self.features = nn.Sequential(
            block(3, w), nn.MaxPool2d(2),
            block(w, 2 * w), nn.MaxPool2d(2),
            block(2 * w, 4 * w), block(4 * w, 4 * w),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.head = nn.Sequential(nn.Dropout(ps), nn.Linear(4 * w, n_clas))

    def forward(self, x):
        return self.head(self.features(x))


def build_model(params, n_clas):
    if params.arch in ("small_cnn", "small_cnn_gn"):
        return SmallCNN(n_clas, params.ps, norm="group" if params.arch == "small_cnn_gn" else "batch")
    return torchvision_model(params.arch, n_clas, params.ps, params.pretrain, params.pretrained_path)


def head_name(model):
    """The head is the model's last nn.Linear layer (SmallCNN's head[-1], resnet's fc, ...): the one definition that
    layer groups and replacing a torchvision model's classifier both use. None when the model has no Linear."""
    names = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    return names[-1] if names else None


def head_of(model):
    """The head module, or None when the model has none (then it trains with a single learning rate only)."""
    name = head_name(model)
    return model.get_submodule(name) if name else None


def torchvision_model(arch, n_clas, ps, pretrain, pretrained_path=""):
    """A torchvision classifier with a fresh head; torchvision.models is imported only now (~1 s of start-up a
    small_cnn run never needs)."""
    import torchvision.models as tvm

    from core.training.tv_models import pretrained_state

    names = tvm.list_models(module=tvm)
    if arch not in names:
        close = difflib.get_close_matches(arch, names + ["small_cnn", "small_cnn_gn"], n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else " (small_cnn or a torchvision classifier name)"
        raise UserError(f"params key 'arch': unknown architecture '{arch}'{hint}")
    model = tvm.get_model(arch, weights=None)
    if pretrain:
        model.load_state_dict(pretrained_state(arch, pretrained_path))
    replace_head(model, arch, n_clas, ps)
    return model


def replace_head(model, arch, n_clas, ps):
    """Swap the head for Dropout(ps) + Linear(n_clas), or set the dropout already in front of it."""
    name = head_name(model)
    if name is None:
        raise UserError(f"params key 'arch': '{arch}' has no Linear classifier head to replace")
    parent, _, last = name.rpartition(".")
    owner = model.get_submodule(parent)
    old = getattr(owner, last)
    siblings = list(owner.children()) if isinstance(owner, nn.Sequential) else []
    before = siblings[siblings.index(old) - 1] if old in siblings and siblings.index(old) > 0 else None
    if isinstance(before, nn.Dropout):  # the model's own head dropout (efficientnet, mobilenet, vgg): reuse it
        before.p = ps
        setattr(owner, last, nn.Linear(old.in_features, n_clas))
    else:
        setattr(owner, last, nn.Sequential(nn.Dropout(ps), nn.Linear(old.in_features, n_clas)))
