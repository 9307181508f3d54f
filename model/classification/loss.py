"""The classification losses: TERMS, the training objective's weighted terms ("loss": {"ce": 1}, the default), and
loss_fn, the loss validation and evaluate.py report.

To add a term: write its function fn(outputs, targets, **settings) below and give it a line in TERMS (weight 0
unless params turn it on, its settings' defaults); params' loss block then weighs it (loss.<term>) and sets its
settings (loss.<term>_<setting>), and hyper_search and stages can vary both. No torch import at the top: params
validation reads TERMS cheaply.
"""

from core.losses import Term, weighted_terms


def cross_entropy(outputs, targets, weight=None, label_smoothing=0.0):
    """Cross-entropy of logits [B,K] against class indices [B] or, for mixed batches (MixUp/CutMix), class
    probabilities [B,K]; `weight`: per-class weights [K] or None."""
    import torch.nn.functional as F

    if weight is None:
        return F.cross_entropy(outputs, targets, label_smoothing=label_smoothing)
    w = weight.to(outputs.device)
    if targets.dim() == 1:  # class indices: PyTorch divides by the batch's summed weights
        return F.cross_entropy(outputs, targets, weight=w, label_smoothing=label_smoothing)
    # probabilities (mixed batches): PyTorch would divide by the batch size; divide by the summed weights too, so
    # mixed and plain batches train at the same scale (equal for one-hot targets)
    total = F.cross_entropy(outputs, targets, weight=w, label_smoothing=label_smoothing, reduction="sum")
    return total / (targets @ w).sum()


TERMS = {
    "ce": Term(cross_entropy, 1.0, "cross-entropy, with label_smoothing and class_weights"),
}


def build_loss(params, class_counts):
    """The training objective: the loss block's weighted TERMS (ce with `label_smoothing` and `class_weights`).
    The train `loss` of every epoch is this loss. class_counts: training images per class, for "balanced"."""
    weight = class_weight_tensor(params.class_weights, class_counts)
    ce = {"weight": weight, "label_smoothing": params.label_smoothing}
    return weighted_terms(TERMS, params.loss, bound={"ce": ce})


def loss_fn(outputs, labels):
    """Plain cross-entropy (mean over the batch): the `loss` of validation and evaluate.py. It ignores the loss
    block, label_smoothing and class_weights, so runs that differ in them still compare on the same loss."""
    import torch.nn.functional as F

    return F.cross_entropy(outputs, labels)


def class_weight_tensor(class_weights, class_counts):
    """None (all classes weigh 1), the given list, or "balanced": n / (n_classes * count_c), scikit-learn's
    definition, so a class with half the images weighs twice as much and the mean weight per image is 1."""
    import torch

    if class_weights is None:
        return None
    if class_weights == "balanced":
        counts = torch.tensor(class_counts, dtype=torch.float32)
        return counts.sum() / (len(counts) * counts.clamp(min=1))  # a class absent from training: no inf
    return torch.tensor(class_weights, dtype=torch.float32)
