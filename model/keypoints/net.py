"""Keypoint models: `build_model(params, n_points)` returns a model whose output is [B, K, 2], each point's x and y
as fractions of the input image (0..1). Its losses are in loss.py.

`arch` is
- "heatmap_unet" (the default): model/segmentation/net.py's UNet scores every pixel for each point, and a spatial
  softmax turns each point's K score map into a probability map whose expected position is the point (soft-argmax,
  as in DSNT or integral pose regression). Sub-pixel, differentiable, and fully convolutional, so any input size.
- any torchvision classifier ("resnet18", ...): its last Linear becomes a 2K regression head, direct coordinates.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.classification.net import head_of as linear_head
from model.classification.net import torchvision_model
from model.segmentation.net import UNet


class HeatmapPoints(nn.Module):
    """A score map per point -> softmax over its pixels -> the expected (x, y), as fractions of the image."""

    def __init__(self, n_points, ps=0.0):
        super().__init__()
        self.net = UNet(n_points, ps=ps)

    def forward(self, x):
        scores = self.net(x).float()  # the softmax in full precision: bf16 sums over 4,096 pixels lose digits
        b, k, h, w = scores.shape
        prob = F.softmax(scores.flatten(2), dim=-1).view(b, k, h, w)
        xs = (torch.arange(w, device=x.device, dtype=prob.dtype) + 0.5) / w  # pixel centres
        ys = (torch.arange(h, device=x.device, dtype=prob.dtype) + 0.5) / h
        return torch.stack([(prob.sum(2) * xs).sum(-1), (prob.sum(3) * ys).sum(-1)], dim=-1)


class DirectPoints(nn.Module):
    """A classifier whose 2K outputs are read as K (x, y) pairs, squashed into the image by a sigmoid."""

    def __init__(self, backbone, n_points):
        super().__init__()
        self.backbone, self.n_points = backbone, n_points

    def forward(self, x):
        return torch.sigmoid(self.backbone(x).float()).view(-1, self.n_points, 2)


def build_model(params, n_points):
    if params.arch == "heatmap_unet":
        return HeatmapPoints(n_points, params.ps)
    return DirectPoints(torchvision_model(params.arch, 2 * n_points, params.ps, params.pretrain,
                                          params.pretrained_path), n_points)


def head_of(model):
    """The layers that turn features into points: the UNet's 1x1 score conv, or the regression Linear."""
    return model.net.head if isinstance(model, HeatmapPoints) else linear_head(model.backbone)
