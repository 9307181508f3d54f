"""Detectors: `build_model(params, n_clas)` wraps a torchvision detector so that it takes the padded box tensors
of data_loader.py and gives the loops what they expect (`Detector`).

`arch` is
- "small_fcos" (the default, defined below: edit it freely): torchvision's FCOS on a five-conv backbone with two
  feature levels (strides 8 and 16), ~0.4 M parameters: it learns the digit boxes from scratch on a CPU in minutes.
- one of torchvision's detectors in TORCHVISION, built offline (weights=None); pretrain=1 loads its backbone's
  ImageNet weights from torch's cache or pretrained_path. min_size and max_size follow im_sz: the default 800-px
  resize would make a CPU step take 10-48 s.
- "small_rt_detr": Hugging Face transformers' RT-DETR from a small explicit config (detr.py; optional dependency
  requirements-detr.txt, imported only when built).
"""

from collections import OrderedDict

import torch
import torch.nn as nn

from utils import UserError

TORCHVISION = {  # detector -> the ImageNet classifier of its backbone
    "fasterrcnn_mobilenet_v3_large_320_fpn": "mobilenet_v3_large",
    "fasterrcnn_resnet50_fpn": "resnet50",
    "fasterrcnn_resnet50_fpn_v2": "resnet50",
    "retinanet_resnet50_fpn": "resnet50",
    "retinanet_resnet50_fpn_v2": "resnet50",
    "fcos_resnet50_fpn": "resnet50",
    "ssdlite320_mobilenet_v3_large": "mobilenet_v3_large",
}
DETR = ("small_rt_detr",)  # detr.py
ARCHS = ("small_fcos", *DETR, *TORCHVISION)


def conv(c_in, c_out):
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                         nn.ReLU(inplace=True))


class SmallBackbone(nn.Module):
    """Conv blocks down to stride 8 and 16, each level projected to `out_channels` (what FCOS reads)."""

    def __init__(self, width=32, out_channels=64):
        super().__init__()
        w = width
        self.stem = nn.Sequential(conv(3, w), nn.MaxPool2d(2), conv(w, 2 * w), nn.MaxPool2d(2),
                                  conv(2 * w, 2 * w), nn.MaxPool2d(2), conv(2 * w, 4 * w))  # stride 8
        self.down = nn.Sequential(nn.MaxPool2d(2), conv(4 * w, 4 * w))  # stride 16
        self.lateral = nn.ModuleList([nn.Conv2d(4 * w, out_channels, 1), nn.Conv2d(4 * w, out_channels, 1)])
        self.out_channels = out_channels

    def forward(self, x):
        c3 = self.stem(x)
        c4 = self.down(c3)
        return OrderedDict([("0", self.lateral[0](c3)), ("1", self.lateral[1](c4))])


def small_fcos(n_labels, im_sz):
    from torchvision.models.detection import FCOS
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    anchors = AnchorGenerator(sizes=((8,), (16,)), aspect_ratios=((1.0,), (1.0,)))
    return FCOS(SmallBackbone(), n_labels, anchor_generator=anchors, **plain_transform(im_sz), score_thresh=0.05,
                detections_per_img=50)


def plain_transform(im_sz):
    """The detector's own transform, made a no-op: data_loader.py already resized to im_sz and normalised."""
    return {"min_size": im_sz, "max_size": im_sz, "image_mean": [0.0, 0.0, 0.0], "image_std": [1.0, 1.0, 1.0]}


def torchvision_detector(arch, n_labels, im_sz, pretrain, pretrained_path):
    import torchvision.models.detection as tvd

    transform = plain_transform(im_sz)
    if arch.startswith("ssdlite"):  # SSD resizes to its fixed 320 x 320 whatever it is given: only the normalisation
        transform = {k: v for k, v in transform.items() if k.startswith("image_")}
    model = getattr(tvd, arch)(weights=None, weights_backbone=None, num_classes=n_labels, **transform)
    if pretrain:
        from core.training.tv_models import pretrained_state

        backbone = TORCHVISION[arch]
        state = pretrained_state(backbone, pretrained_path)
        body = model.backbone.body if hasattr(model.backbone, "body") else model.backbone.features
        if backbone.startswith("mobilenet"):
            state = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
        missing = body.load_state_dict(state, strict=False).missing_keys
        if missing:
            raise UserError(f"pretrain=1: the {backbone} weights do not fit the backbone of {arch} ({missing[0]}, ...)")
    return model


def build_model(params, n_clas):
    """A Detector with n_clas classes plus the background (label 0)."""
    if params.arch == "small_fcos":
        return Detector(small_fcos(n_clas + 1, params.im_sz))
    if params.arch in DETR:
        from model.detection.detr import small_rt_detr

        return Detector(small_rt_detr(n_clas, params.im_sz, params.pretrain))  # no background class: n_clas logits
    if params.arch not in TORCHVISION:
        import difflib

        close = difflib.get_close_matches(params.arch, ARCHS, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise UserError(f"params key 'arch': unknown detection architecture '{params.arch}' "
                        f"({hint}choices: {', '.join(ARCHS)})")
    return Detector(torchvision_detector(params.arch, n_clas + 1, params.im_sz, params.pretrain,
                                         params.pretrained_path))


def head_of(model):
    """The layers that score classes and regress boxes: a new task's freshly initialised part."""
    net = model.net
    if hasattr(net, "eval_losses"):  # detr.py's adapter
        from model.detection.detr import head_of as detr_head

        return detr_head(net)
    if hasattr(net, "roi_heads"):  # Faster R-CNN
        return net.roi_heads.box_predictor
    return net.head  # FCOS, RetinaNet, SSD


def as_targets(padded):
    """[B, N, 5] padded boxes (label -1: none) -> torchvision's [{"boxes": [n,4], "labels": [n]}]."""
    out = []
    for rows in padded:
        rows = rows[rows[:, 4] >= 0]
        out.append({"boxes": rows[:, :4].float(), "labels": rows[:, 4].long()})
    return out


def as_padded(detections, device):
    """torchvision's detections -> [B, M, 6]: x1, y1, x2, y2, score, label; label -1 pads."""
    most = max([len(d["boxes"]) for d in detections] + [0])
    out = torch.full((len(detections), most, 6), -1.0, device=device)
    for k, d in enumerate(detections):
        n = len(d["boxes"])
        out[k, :n, :4], out[k, :n, 4], out[k, :n, 5] = d["boxes"], d["scores"], d["labels"].float()
    return out


def is_norm(m):
    return isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm))


class Detector(nn.Module):
    """A torchvision detector behind tensors. Training: forward(x, targets) -> its loss dict. Evaluation:
    forward(x) -> detections [B, M, 6]; forward(x, targets) -> {"detections", "losses"}, the losses computed as in
    training, with BatchNorm statistics frozen, so validation reports a loss that early stopping can watch."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x, targets=None):
        images = list(x)
        if self.training:
            return self.net(images, as_targets(targets))
        detections = as_padded(self.net(images), x.device)
        if targets is None:
            return detections
        return {"detections": detections, "losses": self.eval_losses(images, as_targets(targets))}

    def eval_losses(self, images, targets):
        if hasattr(self.net, "eval_losses"):  # detr.py's adapter knows its own eval-mode loss
            return self.net.eval_losses(images, targets)
        modes = [(m, m.training) for m in self.net.modules()]
        self.net.train()
        for m in self.net.modules():
            if is_norm(m) or isinstance(m, nn.Dropout):
                m.eval()
        try:
            return self.net(images, targets)
        finally:
            for m, mode in modes:
                m.training = mode


# ---------------------------------------------------------------- export.py
DENSE = ("small_fcos", "fcos_resnet50_fpn", "retinanet_resnet50_fpn", "retinanet_resnet50_fpn_v2")


class DenseHeads(nn.Module):
    """What export.py writes for a one-stage detector: backbone and head, x [B,3,im_sz,im_sz] -> the head's raw
    outputs per anchor (cls_logits, bbox_regression, bbox_ctrness for FCOS), by name. Decoding (anchors, score
    threshold, NMS) picks a data-dependent number of boxes, which torch.export cannot trace: it stays in Python
    (decode_dense), the very torchvision code eager evaluation runs."""

    def __init__(self, net):
        super().__init__()
        self.backbone, self.head = net.backbone, net.head
        self.pad = net.transform.size_divisible  # torchvision pads the batch to a multiple of this: so do we

    def forward(self, x):
        h, w = x.shape[-2:]
        x = nn.functional.pad(x, (0, -w % self.pad, 0, -h % self.pad))
        outputs = self.head(list(self.backbone(x).values()))
        return tuple(outputs[k] for k in sorted(outputs))


def export_parts(model, params):
    """(DenseHeads of the model, decode): decode(outputs, x) -> the padded detections [B,M,6] model(x) gives."""
    if params.arch in DETR:
        raise UserError(f"export: {params.arch} is not exported: torch.export of transformers' RT-DETR fixes the "
                        f"batch size, and its ONNX file's scores differed from the model's by 3.7 (tried on "
                        f"transformers 5.24); these export: {', '.join(DENSE)}")
    if params.arch.startswith("fasterrcnn"):
        raise UserError(f"export: {params.arch} is a two-stage detector (its region proposals have a data-dependent "
                        f"count, which torch.export cannot trace); these export: {', '.join(DENSE)}")
    if params.arch not in DENSE:
        raise UserError(f"export: {params.arch} is not exported (the export's decoding is FCOS's and RetinaNet's, "
                        f"not SSD's default boxes); these export: {', '.join(DENSE)}")
    return DenseHeads(model.net), DenseDecoder(model.net)


class DenseDecoder:
    """The head's raw outputs -> detections [B,M,6], as FCOS/RetinaNet.forward do after their head: anchors,
    score threshold, top-k, NMS. Uses the fixed parts of `net` (anchor generator, thresholds), not its weights."""

    def __init__(self, net):
        self.net, self.levels = net, {}

    def level_sizes(self, padded):
        """[(h, w)] of the feature levels for this padded input size: from one backbone pass, once per size."""
        key = tuple(padded.shape[-2:])
        if key not in self.levels:
            with torch.no_grad():
                features = self.net.backbone(padded.new_zeros(1, *padded.shape[1:]))
            self.levels[key] = [tuple(f.shape[-2:]) for f in features.values()]
        return self.levels[key]

    def __call__(self, outputs, x, targets=None):
        from torchvision.models.detection.image_list import ImageList

        names = ["bbox_ctrness", "bbox_regression", "cls_logits"] if len(outputs) == 3 else \
            ["bbox_regression", "cls_logits"]  # DenseHeads' order: sorted
        head = dict(zip(names, outputs))
        pad = self.net.transform.size_divisible
        h, w = x.shape[-2:]
        padded = x.new_empty(x.shape[0], 3, h + -h % pad, w + -w % pad)
        images = ImageList(padded, [(h, w)] * x.shape[0])
        features = [padded.new_empty(0, 0, *size) for size in self.level_sizes(padded)]  # the generator reads shapes
        anchors = self.net.anchor_generator(images, features)
        cells = [fh * fw for fh, fw in self.level_sizes(padded)]
        per_level = [n * (head["cls_logits"].shape[1] // sum(cells)) for n in cells]  # RetinaNet: 9 anchors a cell
        split = {k: list(v.split(per_level, dim=1)) for k, v in head.items()}
        found = self.net.postprocess_detections(split, [list(a.split(per_level)) for a in anchors], images.image_sizes)
        detections = as_padded(self.net.transform.postprocess(found, images.image_sizes, images.image_sizes), x.device)
        return detections if targets is None else {"detections": detections, "losses": {}}  # no loss: no heads
