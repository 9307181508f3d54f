"""The keypoint losses: build_loss, params.point_loss (smooth_l1, l1 or mse) over the labelled points in pixels,
and loss_fn, the loss validation and evaluate.py report. TERMS is empty: the loss block's terms are not used here.
No torch import at the top: params validation reads TERMS cheaply."""

TERMS = {}


def point_loss(kind, pred, target):
    """The `kind` loss over the labelled points, in pixels of the image as stored (smooth-L1's beta is then one
    pixel), averaged over their coordinates; 0 for a batch without a labelled point."""
    import torch.nn.functional as F

    size = target[..., 3:5]
    labelled = (target[..., 2] > 0).unsqueeze(-1).float()
    fn = {"smooth_l1": F.smooth_l1_loss, "l1": F.l1_loss, "mse": F.mse_loss}[kind]
    per_coord = fn(pred.float() * size, target[..., :2] * size, reduction="none") * labelled
    return per_coord.sum() / (2 * labelled.sum()).clamp(min=1)


def build_loss(params, counts):
    """The training objective: params.point_loss over the labelled points, in pixels."""
    return lambda outputs, target: point_loss(params.point_loss, outputs, target)


def loss_fn(outputs, target):
    """The loss validation and evaluate.py report: smooth-L1 in pixels, whatever the training loss."""
    return point_loss("smooth_l1", outputs, target)
