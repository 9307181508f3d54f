"""The model and its loss. `build_model(params, n_clas)` and `loss_fn(outputs, labels)` are all train.py,
evaluate.py and the search's smoke test call.

`arch` is "small_cnn" (defined below: edit it freely) or any torchvision classifier ("resnet18", "resnet50",
"efficientnet_b0", ...), whose last Linear layer is replaced by dropout (`ps`) and a fresh `n_clas` head.
"""

import torch.nn as nn
import torch.nn.functional as F


def conv_block(c_in, c_out):
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class SmallCNN(nn.Module):
    """Three conv stages (32-64-128 channels), global pooling, dropout, linear head. ~0.3 M parameters."""

    def __init__(self, n_clas, ps=0.25, width=32):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            conv_block(3, w), nn.MaxPool2d(2),
            conv_block(w, 2 * w), nn.MaxPool2d(2),
            conv_block(2 * w, 4 * w), conv_block(4 * w, 4 * w),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.head = nn.Sequential(nn.Dropout(ps), nn.Linear(4 * w, n_clas))

    def forward(self, x):
        return self.head(self.features(x))


def loss_fn(outputs, labels):
    """The training objective (mean over the batch); the `loss` metric of every epoch is this loss."""
    return F.cross_entropy(outputs, labels)


def build_model(params, n_clas):
    if params.arch == "small_cnn":
        return SmallCNN(n_clas, params.ps)
    from core.tv_models import torchvision_model  # only now: importing torchvision.models costs ~1 s

    return torchvision_model(params.arch, n_clas, params.ps, params.pretrain, params.pretrained_path)
