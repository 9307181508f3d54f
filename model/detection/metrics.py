"""The metrics of a detection epoch, from torchmetrics' MeanAveragePrecision (COCO's definitions, computed by
pycocotools): one entry each in METRICS.

    map       mAP@[.5:.95]: AP averaged over IoU thresholds 0.5, 0.55, ..., 0.95 and over the classes
    map_50    AP at IoU 0.5;  map_75: at IoU 0.75
    mar_100   recall with at most 100 detections per image, averaged like map

Each epoch also reports the model's loss terms (loss_classification, loss_bbox_regression, ... as the detector
names them), so history.json keeps each term. No torch import at module level: the tables read METRICS cheaply.
"""

from model.task import LOSS, Metric

SCORE_SHOWN = 0.5  # detections at least this confident are drawn and counted as found in the gallery


def from_coco(name):
    return lambda s: s["coco"][name]


METRICS = {
    "loss": LOSS,
    "map": Metric(from_coco("map"), min_classes=1),
    "map_50": Metric(from_coco("map_50"), min_classes=1),
    "map_75": Metric(from_coco("map_75"), min_classes=1),
    "mar_100": Metric(from_coco("mar_100"), min_classes=1),
}


def term_name(name):
    return name if name.startswith("loss") else f"loss_{name}"


def split_padded(detections, targets):
    """Per image: torchmetrics' prediction and target dicts, from the padded [B,M,6] and [B,N,5] tensors."""
    preds, truths = [], []
    for det, tgt in zip(detections, targets):
        det, tgt = det[det[:, 5] >= 0], tgt[tgt[:, 4] >= 0]
        preds.append({"boxes": det[:, :4].float(), "scores": det[:, 4].float(), "labels": det[:, 5].long()})
        truths.append({"boxes": tgt[:, :4].float(), "labels": tgt[:, 4].long()})
    return preds, truths


def mistakes(pred, truth):
    """Boxes missed plus boxes wrongly found at IoU 0.5 among detections scored >= SCORE_SHOWN: what the gallery
    ranks the worst images by (a count a person can check on the picture; AP needs many images to mean much)."""
    from torchvision.ops import box_iou

    keep = pred["scores"] >= SCORE_SHOWN
    boxes, labels = pred["boxes"][keep], pred["labels"][keep]
    if not len(truth["boxes"]) or not len(boxes):
        return len(truth["boxes"]) + len(boxes)
    iou = box_iou(truth["boxes"], boxes) * (truth["labels"][:, None] == labels[None, :])
    found = int((iou.max(1).values >= 0.5).sum())
    right = int((iou.max(0).values >= 0.5).sum())
    return (len(truth["boxes"]) - found) + (len(boxes) - right)


class EpochMetrics:
    """The loss and its terms, summed over the epoch, and a MeanAveragePrecision fed each batch's detections (on
    the CPU: pycocotools' evaluation runs there). A training epoch has no detections: loss and terms only."""

    def __init__(self, n_clas, device, keep_details=False):
        self.loss_sum, self.terms, self.n, self.n_loss = 0.0, {}, 0, 0
        self.map, self.keep_details = None, keep_details
        self.kept = {"detections": [], "mistakes": []}

    def update(self, outputs, targets, loss):
        import torch

        from model.detection.loss import loss_terms

        with torch.no_grad():
            b = targets.shape[0] if targets is not None else 1
            self.n += b
            if loss is not None:  # None: an exported detector's, which has no loss
                self.loss_sum, self.n_loss = self.loss_sum + loss.detach().item() * b, self.n_loss + b
            for name, value in loss_terms(outputs).items() if isinstance(outputs, dict) else ():
                self.terms[term_name(name)] = self.terms.get(term_name(name), 0.0) + value.detach().item() * b
            if targets is None or not isinstance(outputs, dict) or "detections" not in outputs:
                return
            preds, truths = split_padded(outputs["detections"].cpu(), targets.cpu())
            if self.map is None:
                from torchmetrics.detection import MeanAveragePrecision

                self.map = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend="pycocotools")
            self.map.update(preds, truths)
            if self.keep_details:
                self.kept["detections"] += [p for p in outputs["detections"].cpu()]
                self.kept["mistakes"] += [mistakes(p, t) for p, t in zip(preds, truths)]

    def coco(self):
        result = self.map.compute()
        return {k: (v.tolist() if v.numel() > 1 else v.item()) for k, v in result.items()}

    def compute(self):
        if self.n == 0:
            return {}
        out = {"loss": self.loss_sum / self.n_loss} if self.n_loss else {}
        if self.map is not None:
            sums = {"coco": self.coco()}
            out.update({name: m.formula(sums) for name, m in METRICS.items() if name != "loss"})
        out.update({name: value / self.n for name, value in self.terms.items()})
        return out

    def per_class(self):
        """torchmetrics' result with per-class AP: a second, slower pass over pycocotools, for evaluate.py only."""
        if self.map is None:
            return {}
        self.map.class_metrics = True
        return self.coco()

    def details(self):
        """Per image, in loader order: its detections [M,6] (padded rows have label -1) and its mistakes; and
        per_class(), a function: evaluate.py's per-class AP."""
        return {**self.kept, "per_class": self.per_class}
