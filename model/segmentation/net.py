"""Segmentation models: `build_model(params, n_clas)`, the head of each (`head_of`), their two output shapes
(`outputs_of`) and tiled inference for images larger than the training crops (`sliding_window`).

`arch` is "unet" (defined below: edit it freely) or one of torchvision's segmenters in TORCHVISION, built with
`num_classes=n_clas` and, where the model has one, an auxiliary head (whose loss build_loss adds with aux_weight).
`ps` is the dropout before the UNet head; torchvision's heads keep their own dropout.
"""

import difflib

import torch
import torch.nn as nn
import torch.nn.functional as F

from utils import UserError

# torchvision segmenter -> the ImageNet classifier its backbone is cut from (pretrain=1 loads that one's weights)
TORCHVISION = {
    "fcn_resnet50": "resnet50",
    "deeplabv3_resnet50": "resnet50",
    "deeplabv3_mobilenet_v3_large": "mobilenet_v3_large",
    "lraspp_mobilenet_v3_large": "mobilenet_v3_large",
}
ARCHS = ("unet", *TORCHVISION)
WITH_AUX = ("fcn_resnet50", "deeplabv3_resnet50", "deeplabv3_mobilenet_v3_large")  # LRASPP has no aux head


def double_conv(c_in, c_out):
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """A small U-Net: `depth` levels of two 3x3 conv-BN-ReLU (width, 2 width, 4 width, ...), max-pooled down,
    bilinearly upsampled back and concatenated with the level's features. ~0.3 M parameters at the defaults.

    The bottleneck keeps the deepest level's width: on a 64x64 input it sees 8x8 pixels, and doubling it again
    would add 0.2 M parameters for 64 pixels. Any H, W: pooling rounds up and upsampling goes to each skip's size."""

    def __init__(self, n_clas, width=16, depth=3, ps=0.0):
        super().__init__()
        widths = [width * 2**i for i in range(depth)]
        self.down = nn.ModuleList(double_conv(c_in, c) for c_in, c in zip([3, *widths], widths))
        self.bottom = double_conv(widths[-1], widths[-1])
        below = [*widths[1:], widths[-1]]  # the width arriving from underneath each level
        self.up = nn.ModuleList(double_conv(b + c, c) for b, c in reversed(list(zip(below, widths))))
        self.drop = nn.Dropout2d(ps)
        self.head = nn.Conv2d(widths[0], n_clas, 1)

    def forward(self, x):
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = F.max_pool2d(x, 2, ceil_mode=True)  # ceil: an odd side keeps its last row, a 1-pixel side survives
        x = self.bottom(x)
        for block, skip in zip(self.up, reversed(skips)):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], 1))
        return self.head(self.drop(x))


def build_model(params, n_clas):
    if params.arch == "unet":
        return UNet(n_clas, ps=params.ps)
    if params.arch not in TORCHVISION:
        close = difflib.get_close_matches(params.arch, ARCHS, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise UserError(f"params key 'arch': unknown segmentation architecture '{params.arch}' "
                        f"({hint}choices: {', '.join(ARCHS)})")
    import torchvision.models as tvm  # only now: importing torchvision.models costs ~1 s

    extra = {"aux_loss": True} if params.arch in WITH_AUX else {}
    model = tvm.get_model(params.arch, weights=None, weights_backbone=None, num_classes=n_clas, **extra)
    if params.pretrain:
        load_backbone(model, params.arch, params.pretrained_path)
    return model


def load_backbone(model, arch, pretrained_path):
    """The ImageNet classifier weights of the backbone (pretrained_path, else torch's cache), less what the
    segmenter cut off: resnet's fc; mobilenet's classifier, and the "features." prefix its backbone drops."""
    from core.training.tv_models import pretrained_state  # the classification task's loader and its messages

    backbone = TORCHVISION[arch]
    state = pretrained_state(backbone, pretrained_path)
    if backbone.startswith("resnet"):
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    else:
        state = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
    try:
        model.backbone.load_state_dict(state)
    except RuntimeError:
        source = pretrained_path or f"the cached {backbone} file"
        raise UserError(f"pretrain=1: {source} does not hold {backbone} ImageNet weights (the backbone of {arch}): "
                        f"its keys or shapes differ") from None


def head_of(model):
    """The layers that turn features into class scores: the ones a new task initialises afresh and the last
    learning rate of `learning_rate: [...]` trains. UNet: its 1x1 `head`. FCN and DeepLabV3: the last conv of
    the classifier and of the auxiliary classifier. LRASPP: its two class-score convs (low- and high-resolution
    branches). One module to call .parameters() on: several are wrapped in a ModuleList (which does not add them
    to the model a second time)."""
    if isinstance(model, UNet):
        return model.head
    if hasattr(model.classifier, "low_classifier"):  # LRASPPHead
        return nn.ModuleList([model.classifier.low_classifier, model.classifier.high_classifier])
    heads = [model.classifier[-1]]
    if getattr(model, "aux_classifier", None) is not None:
        heads.append(model.aux_classifier[-1])
    return nn.ModuleList(heads) if len(heads) > 1 else heads[0]


def outputs_of(raw):
    """(main logits, auxiliary logits or None): torchvision segmenters return {"out", "aux"?}, UNet a tensor."""
    if isinstance(raw, dict):
        return raw["out"], raw.get("aux")
    return raw, None


def tile_starts(size, window, stride):
    """Tile offsets along one side: every `stride` pixels, plus a last tile flush with the border."""
    starts = list(range(0, size - window + 1, stride))
    return starts if starts[-1] == size - window else [*starts, size - window]


def sliding_window(forward, x, n_clas, window, stride, tiles_per_call=None):
    """Logits [B,K,H,W] (float) of images larger than the model was trained on: the model sees window x window
    tiles, `stride` apart, and overlapping tiles' logits are averaged. window 0: one forward(x) of the whole batch.

    forward(tiles) returns the logits of the tiles (a dict of torchvision outputs also does: its "out"). A side
    shorter than the window is padded (reflected, or repeated where it is too short to reflect) and cropped back.
    Each call carries tiles_per_call tiles (default B, so memory stays that of one batch of window-sized images).
    n_clas None: the number of channels the first tiles come back with.
    """
    if not window:
        return outputs_of(forward(x))[0].float()
    if not 0 < stride <= window:
        raise ValueError(f"sliding_window: stride {stride} must be in 1..window ({window}), or tiles leave gaps")
    b, _, h, w = x.shape
    pad_h, pad_w = max(window - h, 0), max(window - w, 0)
    if pad_h or pad_w:
        mode = "reflect" if pad_h < h and pad_w < w else "replicate"
        x = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
    ph, pw = x.shape[-2:]
    corners = [(i, j) for i in tile_starts(ph, window, stride) for j in tile_starts(pw, window, stride)]
    total, count = None, torch.zeros(1, 1, ph, pw, device=x.device)
    per_call = max(1, (tiles_per_call or b) // b)  # tile positions per call, each with all B images
    for start in range(0, len(corners), per_call):
        group = corners[start:start + per_call]
        tiles = torch.cat([x[:, :, i:i + window, j:j + window] for i, j in group])
        logits = outputs_of(forward(tiles))[0].float()
        n_clas = n_clas or logits.shape[1]
        if total is None:
            total = torch.zeros(b, n_clas, ph, pw, device=x.device)
        if logits.shape != (len(group) * b, n_clas, window, window):
            raise ValueError(f"sliding_window: forward gave {tuple(logits.shape)} for {len(group) * b} tiles of "
                             f"{window}x{window}, not [{len(group) * b}, {n_clas}, {window}, {window}]")
        for (i, j), part in zip(group, logits.split(b)):
            total[:, :, i:i + window, j:j + window] += part
            count[:, :, i:i + window, j:j + window] += 1
    return (total / count)[:, :, :h, :w]


class MainOutput(nn.Module):
    """A torchvision segmenter's main logits alone (its auxiliary head only trains): what export.py traces."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return outputs_of(self.model(x))[0]


def export_parts(model, params):
    """(the graph export.py writes, decode): the model's main logits, at any image size; no decoding."""
    return (model if isinstance(model, UNet) else MainOutput(model)), None
