"""The metrics of a segmentation epoch, over a pixel confusion matrix: one entry each in METRICS.

Every pixel counts once, whichever image it is in (the confusion matrix of the whole epoch, not a mean of per-image
scores), and pixels labelled IGNORE count nowhere. A class absent from both the labels and the predictions has no
IoU (0/0): the means are over the classes present, so an unused class neither helps nor hurts.
No torch import at module level: params validation and the result tables read METRICS cheaply.
"""

from model.task import LOSS, EpochSums, Metric

IGNORE = 255  # mask value of pixels without a label (borders, "void"): no loss, no metric


def predicted_classes(logits):
    """The class of each pixel, [B,K,H,W] -> [B,H,W]: `max(1).indices`, which is argmax(1) (the first of equal
    maxima too) at a tenth of its cost on the CPU, where argmax over the channels of an NCHW tensor is a strided
    reduction: 6 ms against 0.5 ms for a batch of 8 64-px scenes, 7 % of a training step."""
    return logits.max(1).indices


def _counts(cm):
    """(true positives, true pixels, predicted pixels) of each class."""
    return cm.diag(), cm.sum(1), cm.sum(0)


def miou(s):
    tp, true, pred = _counts(s["cm"])
    union = true + pred - tp
    present = union > 0
    return (tp[present] / union[present]).mean().item()


def dice(s):
    """2 tp / (2 tp + fp + fn) = 2 tp / (true + predicted), the F1 score of each class's pixels."""
    tp, true, pred = _counts(s["cm"])
    total = true + pred
    present = total > 0  # the same classes as miou: union > 0 exactly when true + predicted > 0
    return (2 * tp[present] / total[present]).mean().item()


def pixel_accuracy(s):
    return (s["cm"].diag().sum() / s["cm"].sum()).item()


METRICS = {
    "loss": LOSS,
    "miou": Metric(miou),
    "dice": Metric(dice),
    "pixel_accuracy": Metric(pixel_accuracy),
}


def per_class(cm, classes):
    """{class name: {"iou", "dice", "pixels" (labelled with it), "predicted"}}; iou and dice are None for a class
    neither labelled nor predicted, since 0/0 is no score."""
    tp, true, pred = _counts(cm)
    rows = {}
    for c, name in enumerate(classes):
        t, p, hit = true[c].item(), pred[c].item(), tp[c].item()
        present = t + p > 0
        rows[name] = {
            "iou": hit / (t + p - hit) if present else None,
            "dice": 2 * hit / (t + p) if present else None,
            "pixels": int(t),
            "predicted": int(p),
        }
    return rows


class EpochMetrics(EpochSums):
    """What the formulas above need, summed over an epoch on the device: the pixel confusion matrix, the loss and
    the image count; a GPU epoch syncs once, in `compute`. With keep_details, also each image's predicted mask and its
    own mean IoU, for the gallery (`details`)."""

    def __init__(self, n_clas, device, keep_details=False):
        import torch

        super().__init__(device)
        self.n_clas = n_clas
        # one bin more than the k*k (true, predicted) pairs: ignored pixels land there, so no mask indexing (which
        # would sync to count the pixels kept) is needed; .confusion is a view of the first k*k bins
        self._bins = torch.zeros(n_clas * n_clas + 1, dtype=torch.long, device=device)
        self.confusion = self._bins[:-1].view(n_clas, n_clas)  # rows: true, columns: predicted
        self.kept = {"prediction": [], "image_iou": []} if keep_details else None

    def update(self, logits, masks, loss):
        """logits [B,K,H,W] (the main output; a model's raw outputs also do), masks [B,H,W], loss the batch mean
        (weighted back by B). masks None: a batch that counts for the loss only, as in the classification task."""
        import torch

        from model.segmentation.net import outputs_of

        with torch.no_grad():
            logits = outputs_of(logits)[0]
            if not self.add_loss(loss, logits.shape[0], masks):
                return
            k = self.n_clas
            pred = predicted_classes(logits)
            pairs = torch.where(masks == IGNORE, k * k, masks * k + pred).flatten()
            # index_add_ rather than bincount: CUDA's bincount reads max() back to size its output, a sync a batch
            self._bins.index_add_(0, pairs, torch.ones_like(pairs))
            if self.kept is not None:
                self.keep(pred, masks)

    def keep(self, pred, masks):
        """Each image's predicted mask (uint8, on the device until `details`) and its mean IoU over the classes
        present in it (NaN for an image without a labelled pixel)."""
        import torch

        k, b = self.n_clas, pred.shape[0]
        valid = masks != IGNORE
        offsets = torch.arange(b, device=pred.device).view(b, 1, 1) * k * k
        index = torch.where(valid, offsets + masks * k + pred, b * k * k).flatten()
        cms = torch.zeros(b * k * k + 1, dtype=torch.long, device=pred.device)
        cms.index_add_(0, index, torch.ones_like(index))
        cms = cms[:-1].view(b, k, k).double()
        tp, union = cms.diagonal(dim1=1, dim2=2), cms.sum(1) + cms.sum(2) - cms.diagonal(dim1=1, dim2=2)
        iou = (tp / union.clamp(min=1)).where(union > 0, torch.nan)
        self.kept["image_iou"].append(iou.nanmean(1))
        self.kept["prediction"].append(pred.to(torch.uint8))

    def compute(self):
        if (alone := self.loss_alone()) is not None:
            return alone
        cm = self.confusion.double().cpu()  # the one sync of the epoch
        sums = {"cm": cm, **self.sums()}
        return {name: m.formula(sums) for name, m in METRICS.items()}

    def details(self):
        """The pixel confusion matrix (rows: true class, columns: predicted), and per image its predicted mask
        (padded as its batch was) and its mean IoU, in loader order, on the CPU."""
        import torch

        preds = [p.cpu() for p in self.kept["prediction"]]
        return {"confusion": self.confusion.cpu(), "prediction": [m for batch in preds for m in batch],
                "image_iou": torch.cat(self.kept["image_iou"]).cpu()}
