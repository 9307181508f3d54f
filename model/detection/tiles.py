"""Tiled detection (eval_window > 0): a detector trained on im_sz x im_sz inputs finds objects in an image of any size
at the scale it learned them, instead of in the whole image squeezed to im_sz (where a 2048-px scene's 20-px objects
shrink to 5 px and vanish).

    image (its own size) -> eval_window x eval_window tiles, eval_stride apart, the last flush with the border
          -> each tile resized to im_sz (the input the detector and its export take) -> detections per tile
          -> boxes shifted back into the image -> merged: class-wise NMS over all tiles -> at most the detector's
             detections per input, per window of the image's area

Merging: a box that touches a tile border lying inside the image may be a cut object; where a box of the same class
found whole in another tile covers at least half of it, it goes. Then class-wise NMS (torchvision batched_nms) at the
detector's own IoU threshold removes the duplicates of objects found whole in two overlapping tiles: within one tile
it changes nothing (its boxes already passed that very NMS), so one tile covering the image gives exactly the
whole-image prediction. docs/detection.md says why NMS and not weighted box fusion.
"""

import math

import torch
import torch.nn.functional as F
from torchvision.ops import batched_nms, box_area, clip_boxes_to_image

from model.detection.data_loader import DetectionDataset
from model.detection.net import Detector, as_padded
from model.segmentation.net import tile_starts  # the grid of segmentation's sliding window, shared

MERGE_IOU = 0.5  # a detector without an NMS of its own (RT-DETR): same-class boxes overlapping more are one object
MOST = 100  # ... and without its own cap on boxes per image: COCO's mAP reads at most 100
EDGE = 2.0  # input pixels: a box this near a tile border inside the image may be an object the border cuts
COVERED = 0.5  # a cut box goes where a whole box of its class covers this much of it


def tile_corners(h, w, window, stride):
    """[(y, x)] of the window x window tiles covering an h x w image: every `stride` pixels plus one flush with the
    far border; a side shorter than the window has one tile, at 0 (padded)."""

    def starts(size):
        return tile_starts(size, window, stride) if size > window else [0]

    return [(y, x) for y in starts(h) for x in starts(w)]


def image_sizes(x):
    """[(h, w)] of each image of a batch: where its pixels are numbers (WholeImages pads a batch with NaN)."""
    valid = ~x[:, 0].isnan()
    return [(int(v.any(1).sum()), int(v.any(0).sum())) for v in valid]


def cut_tile(image, y, x, window):
    """image[:, y:y+window, x:x+window], padded with zeros (the mean colour, once normalised) where it is smaller."""
    tile = image[:, y:y + window, x:x + window]
    return F.pad(tile, (0, window - tile.shape[2], 0, window - tile.shape[1]))


def placed(det, y, x, scale, window, h, w):
    """One tile's detections [M,6] (its input's pixels; label -1 pads) as (boxes in the image's pixels, scores,
    labels, cut): a box is `cut` where it touches a tile border that lies inside the image."""
    det = det[det[:, 5] >= 0].float()
    boxes = det[:, :4] * scale + det.new_tensor([x, y, x, y])
    inside = (boxes[:, 0] < w) & (boxes[:, 1] < h)  # not wholly in the padding past the image's border
    det, boxes = det[inside], clip_boxes_to_image(boxes[inside], (h, w))
    margin = EDGE * scale
    near = torch.stack([boxes[:, 0] <= x + margin, boxes[:, 1] <= y + margin,
                        boxes[:, 2] >= x + window - margin, boxes[:, 3] >= y + window - margin], 1)
    inner = torch.tensor([x > 0, y > 0, x + window < w, y + window < h], device=boxes.device)
    return boxes, det[:, 4], det[:, 5].long(), (near & inner).any(1)


def covered_cuts(boxes, labels, tiles, cut):
    """Which cut boxes another tile found whole: a box of the same class from another tile, not cut, covers at least
    COVERED of it (intersection over the cut box's area: a cut object's box is part of the whole one, so their IoU
    can be anything down to 0 while this stays near 1)."""
    gone = torch.zeros_like(cut)
    parts, whole = cut.nonzero().squeeze(1), (~cut).nonzero().squeeze(1)
    if not len(parts) or not len(whole):
        return gone
    a, b = boxes[parts], boxes[whole]
    inter = (torch.min(a[:, None, 2:], b[None, :, 2:]) - torch.max(a[:, None, :2], b[None, :, :2])).clamp(min=0)
    share = inter.prod(2) / box_area(a).clamp(min=1e-9)[:, None]
    same = (labels[parts][:, None] == labels[whole][None]) & (tiles[parts][:, None] != tiles[whole][None])
    gone[parts[((share >= COVERED) & same).any(1)]] = True
    return gone


def merge(boxes, scores, labels, tiles, cut, iou, most):
    """Indices of the boxes an image keeps, best first: cut boxes found whole elsewhere dropped, then class-wise
    NMS at `iou`, then the `most` best (detect_in_tiles: the detector's cap on one input, times the windows that
    would tile the image without overlap: the density of boxes the detector allows, and exactly its cap for one
    tile; COCO's mAP reads the best 100 of an image whatever this keeps). The score threshold is the detector's,
    applied in each tile: merging changes no score, so applying it again here would drop nothing."""
    keep = (~covered_cuts(boxes, labels, tiles, cut)).nonzero().squeeze(1)
    return keep[batched_nms(boxes[keep], scores[keep], labels[keep], iou)][:most]


def detector_limits(model):
    """(NMS IoU, boxes per image) of the torchvision detector in `model` (a Detector, a wrapper holding one such as
    the EMA's copy, or an ExportedModel, whose decoding keeps the detector's fixed parts): merging repeats the
    detector's own post-processing over the tiles."""
    net = next((m.net for m in model.modules() if isinstance(m, Detector)), None)
    net = net if net is not None else getattr(getattr(model, "decode", None), "net", None)
    heads = getattr(net, "roi_heads", net)  # Faster R-CNN keeps them in its box head
    return getattr(heads, "nms_thresh", MERGE_IOU), getattr(heads, "detections_per_img", MOST)


def detect_in_tiles(model, x, sizes, window, stride, side, per_call):
    """Per image of x (its own size in `sizes`), {"boxes", "scores", "labels"} merged over its tiles, in its
    pixels. The tiles of the whole batch go through the model per_call at a time (memory: one batch of im_sz
    inputs), each resized from window to side pixels."""
    jobs = [(k, y, x0) for k, (h, w) in enumerate(sizes) for y, x0 in tile_corners(h, w, window, stride)]
    found = []
    for start in range(0, len(jobs), per_call):
        group = jobs[start:start + per_call]
        tiles = torch.stack([cut_tile(x[k], y, x0, window) for k, y, x0 in group])
        if window != side:  # bilinear, as the training pipeline's resize (albumentations' Resize, INTER_LINEAR)
            tiles = F.interpolate(tiles, size=(side, side), mode="bilinear", align_corners=False)
        found += list(model(tiles))
    iou, most = detector_limits(model)
    out = []
    for k, (h, w) in enumerate(sizes):
        mine = [(t, placed(det, y, x0, window / side, window, h, w))
                for t, ((kk, y, x0), det) in enumerate(zip(jobs, found)) if kk == k]
        boxes, scores, labels, cut = (torch.cat([p[i] for _, p in mine]) for i in range(4))
        source = torch.cat([torch.full((len(p[1]),), t, device=x.device) for t, p in mine])  # each box's tile
        keep = merge(boxes, scores, labels, source, cut, iou, most * math.ceil(h / window) * math.ceil(w / window))
        out.append({"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]})
    return out


def whole_images(x, sizes, targets, side):
    """The batch as training's validation sees it: each image resized to side x side, its boxes scaled alike."""
    if x.shape[-2:] == (side, side) and all(s == (side, side) for s in sizes):
        return x, targets
    images = torch.cat([F.interpolate(x[k:k + 1, :, :h, :w], size=(side, side), mode="bilinear", align_corners=False)
                        for k, (h, w) in enumerate(sizes)])
    scale = targets.new_tensor([[side / w, side / h, side / w, side / h, 1.0] for h, w in sizes])
    return images, targets * scale[:, None, :]  # the padding rows keep their label -1


def tiled_predictor(window, stride, side, per_call):
    """predict(model, x, targets) -> detections [B,M,6] in the pixels of x's images (each its own size), found in
    tiles; with targets, {"detections", "losses"}: the losses are the detector's on the whole images resized to
    side, as without tiles (a tile has no loss of its own: its objects are cut)."""
    if not 0 < stride <= window:
        raise ValueError(f"tiled detection: stride {stride} must be in 1..window ({window}), or tiles leave gaps")

    def predict(model, x, targets=None):
        sizes = image_sizes(x)
        x = torch.nan_to_num(x, nan=0.0)
        detections = as_padded(detect_in_tiles(model, x, sizes, window, stride, side, per_call), x.device)
        if targets is None:
            return detections
        return {"detections": detections, "losses": model(*whole_images(x, sizes, targets, side))["losses"]}

    return predict


# ---------------------------------------------------------------- the data tiled evaluation reads


def native(transform, seed):
    """The evaluation pipeline without its resize: each image (and its boxes) at its own size, for the tiles;
    marked `whole_images`, which picks the dataset that batches such images (is_native)."""
    import warnings

    import albumentations as A

    from model.detection.data_loader import BBOX_PARAMS

    steps = [t for t in transform.transforms if not isinstance(t, A.Resize)]
    with warnings.catch_warnings():  # that no step moves the boxes is the point: albumentations warns of it
        warnings.filterwarnings("ignore", message="Got processor for bboxes")
        pipeline = A.Compose(steps, bbox_params=A.BboxParams(**BBOX_PARAMS), seed=seed)
    pipeline.whole_images = True
    return pipeline


def is_native(transform):
    return getattr(transform, "whole_images", False)


class WholeImages(DetectionDataset):
    """The detection samples at each image's own size. A batch of several sizes is padded (bottom and right) with
    NaN, which no image holds: the tiled predictor reads each image's size from it (image_sizes) and the model never
    sees it (nan_to_num before the tiles are cut)."""

    @staticmethod
    def collate(batch):
        h, w = max(x.shape[1] for x, _ in batch), max(x.shape[2] for x, _ in batch)
        padded = [F.pad(x, (0, w - x.shape[2], 0, h - x.shape[1]), value=float("nan")) for x, _ in batch]
        return DetectionDataset.collate([(x, boxes) for x, (_, boxes) in zip(padded, batch)])
