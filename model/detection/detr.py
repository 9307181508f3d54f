"""DETR-family detection: Hugging Face transformers' RT-DETR behind torchvision's detector interface, so net.py's
`Detector` (and with it the loops, mAP, the gallery and resume) takes it as it takes FCOS.

    training:  net(images, targets) -> {"loss_vfl", "loss_bbox", "loss_giou"}, already weighted as RT-DETR weighs
               them (their sum is HF's loss)
    eval:      net(images) -> [{"boxes" xyxy pixels, "scores", "labels" 1..n}]

`small_rt_detr` is built from an explicit config only (a small in-library ResNet, 3 decoder layers, 30 queries):
nothing is downloaded, no hub, no timm, no pretrained backbone. transformers is an optional dependency
(requirements-detr.txt), imported only when a DETR is built.
"""

import math

import torch
import torch.nn as nn

from utils import UserError

SCORE_THRESH, MAX_DETECTIONS = 0.05, 50  # as small_fcos
TERMS = ("loss_vfl", "loss_bbox", "loss_giou")


def import_transformers():
    try:
        import transformers
    except ImportError as e:
        raise UserError("params key 'arch': small_rt_detr needs Hugging Face transformers: "
                        "pip install -r requirements-detr.txt") from e
    return transformers


def small_rt_detr_config(n_clas, im_sz):
    """RT-DETR sized for 32-64 px scenes on a CPU: backbone strides 4/8/16 (a digit spans 2-4 cells of the
    coarsest), d_model 64, 3 decoder layers, up to 30 queries."""
    tf = import_transformers()
    widths, strides = [32, 64, 128], [4, 8, 16]
    backbone = tf.RTDetrResNetConfig(embedding_size=widths[0],  # HF's basic block needs stage 1 to keep the width
                                     hidden_sizes=widths, depths=[1, 1, 1], layer_type="basic",
                                     out_features=["stage1", "stage2", "stage3"])
    cells = sum(math.ceil(im_sz / s) ** 2 for s in strides)  # the encoder's proposals: the queries are their top k
    return tf.RTDetrConfig(
        backbone_config=backbone, num_labels=n_clas,
        # a backbone trained from scratch needs its BatchNorm to learn: HF freezes it for pretrained ResNets
        freeze_backbone_batch_norms=False, feat_strides=strides,
        d_model=64, encoder_hidden_dim=64, encoder_in_channels=widths, decoder_in_channels=[64, 64, 64],
        encoder_ffn_dim=128, decoder_ffn_dim=128, encoder_attention_heads=4, decoder_attention_heads=4,
        decoder_layers=3, num_queries=min(30, cells), num_denoising=30)


def fp32_loss(loss_function):
    """HF's loss, run in float32 outside autocast. The Hungarian matcher's cost (focal cost, L1, GIoU) decides which
    query answers which box: in bfloat16 (8 bits of mantissa) near-equal costs tie or swap, the matching flips from
    step to step and training stalls; DETR's reference code matches in float32 too."""

    def as_float(x):
        if torch.is_tensor(x):
            return x.float() if x.is_floating_point() else x
        if isinstance(x, (list, tuple)):
            return type(x)(as_float(v) for v in x)
        if isinstance(x, dict):
            return {k: as_float(v) for k, v in x.items()}
        return x

    def loss(*args, **kwargs):
        device = args[2] if len(args) > 2 else kwargs.get("device")
        with torch.autocast(torch.device(device).type, enabled=False):
            return loss_function(*as_float(args), **as_float(kwargs))

    return loss


def hf_labels(targets, h, w):
    """torchvision targets (xyxy pixels, labels 1..n) -> HF's (normalised cx, cy, w, h; class_labels 0..n-1)."""
    scale = torch.tensor([w, h, w, h], dtype=torch.float32)
    out = []
    for t in targets:
        x1, y1, x2, y2 = (t["boxes"].float() / scale.to(t["boxes"].device)).unbind(-1)
        boxes = torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], -1)
        out.append({"boxes": boxes, "class_labels": t["labels"] - 1})
    return out


def grouped(loss_dict):
    """HF's 21 terms (last layer, each auxiliary decoder layer, the encoder's proposals, the denoising groups) ->
    one per kind, summed: history gets three columns, and box_loss_weights can weigh a kind."""
    return {name: sum(v for k, v in loss_dict.items() if k == name or k.startswith(name + "_")) for name in TERMS}


def decode(logits, boxes, h, w):
    """RT-DETR's outputs -> torchvision detections: the top MAX_DETECTIONS (query, class) pairs by sigmoid score
    above SCORE_THRESH (RT-DETR scores classes independently, as HF's post_process_object_detection does)."""
    logits, boxes = logits.float(), boxes.float()
    n_clas = logits.shape[-1]
    scale = torch.tensor([w, h, w, h], dtype=torch.float32, device=boxes.device)
    cx, cy, bw, bh = boxes.unbind(-1)
    xyxy = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], -1).clamp(0, 1) * scale
    out = []
    for scores, image_boxes in zip(logits.sigmoid().flatten(1), xyxy):
        top, index = scores.topk(min(MAX_DETECTIONS, len(scores)))
        keep = top > SCORE_THRESH
        top, index = top[keep], index[keep]
        out.append({"boxes": image_boxes[index // n_clas], "scores": top, "labels": index % n_clas + 1})
    return out


class HFDetector(nn.Module):
    """A transformers object detector that takes and gives what torchvision's detectors do."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        model.loss_function = fp32_loss(model.loss_function)

    def forward(self, images, targets=None):
        x = torch.stack(images)  # data_loader.py resized every image to im_sz: no padding mask
        h, w = x.shape[-2:]
        if targets is None:
            out = self.model(x)
            return decode(out.logits, out.pred_boxes, h, w)
        return grouped(self.model(x, labels=hf_labels(targets, h, w)).loss_dict)

    def eval_losses(self, images, targets):
        """The loss terms in eval mode: no denoising queries (their random noise would make the validation loss
        jitter and draw from the RNG), no dropout, BatchNorm's running statistics. The terms are those of the
        matched queries, as in training."""
        mode = self.training
        self.eval()
        try:
            return self(images, targets)
        finally:
            self.train(mode)


def small_rt_detr(n_clas, im_sz, pretrain):
    if pretrain:
        raise UserError("params key 'pretrain': small_rt_detr has no pretrained weights to load (its small ResNet "
                        "backbone is trained from scratch); use pretrain 0")
    tf = import_transformers()
    return HFDetector(tf.RTDetrForObjectDetection(small_rt_detr_config(n_clas, im_sz)))


def head_of(net):
    """The class and box predictors: the decoder's per-layer ones and the encoder's proposal scorers."""
    m = net.model.model
    return nn.ModuleList([m.decoder.class_embed, m.decoder.bbox_embed, m.enc_score_head, m.enc_bbox_head])
