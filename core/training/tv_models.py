"""torchvision's pretrained weights, offline-safe: from pretrained_path or torch's cache, else a clear error.

Shared by every task's torchvision architectures (model/*/net.py). torchvision.models is imported only here and
only when asked for: it pulls in torch._dynamo, about a second of start-up that a small_cnn run never needs.
"""

import os

import torch

from core.paths import repo_path
from utils import UserError


def pretrained_state(arch, pretrained_path):
    """ImageNet weights from `pretrained_path`, else torch's cache, else a download; offline, a clear error."""
    import torchvision.models as tvm

    weights = tvm.get_model_weights(arch).DEFAULT
    cached = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))
    path = repo_path(pretrained_path) if pretrained_path else cached
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
