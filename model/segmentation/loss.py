"""The segmentation losses: TERMS, the training objective's weighted terms, and loss_fn, the loss every validation
and evaluation reports.

    "loss": {"ce": 0.5, "dice": 0.5}

ce: pixel cross-entropy. dice: 1 - soft Dice, which weighs a class by its presence rather than its pixel count, so
small objects are not drowned by the background. bce: binary cross-entropy, for one-class masks (background 0,
object 1). Pixels labelled IGNORE count in no term, and a batch without one labelled pixel gives 0, not nan.

To add a term: write fn(logits, masks, **settings) below and give it a line in TERMS (weight 0, its settings'
defaults); params then weigh it (loss.<term>) and set its settings (loss.<term>_<setting>), and hyper_search and
stages can vary both. No torch import at the top: params validation reads TERMS cheaply.
"""

from core.losses import Term, loss_keys, weighted_terms
from model.segmentation.metrics import IGNORE, predicted_classes
from utils import UserError


def build_loss(params, counts):
    """The training objective: params.loss's weighted terms (ce with label_smoothing and class_weights), plus
    aux_weight times the same on an auxiliary head. counts: labelled pixels per class."""
    from model.classification.loss import class_weight_tensor

    weights = class_weight_tensor(params.class_weights, counts)
    block = {k: v for k, v in vars(params.loss).items() if k in loss_keys(TERMS)}  # not other tasks' terms
    return terms_loss(block, len(counts), weights, params.label_smoothing, params.aux_weight)


def terms_loss(block, n_clas, class_weights=None, label_smoothing=0.0, aux_weight=0.4):
    """Returns loss(raw_outputs, masks) -> scalar: the weighted sum of the terms on the main output, plus
    aux_weight times the same sum on the auxiliary output where the model has one (FCN, DeepLabV3).

    block: {term: weight, <term>_<setting>: value}; class_weights (a list or tensor of n_clas, or None) and
    label_smoothing apply to ce only."""
    import torch

    from model.segmentation.net import outputs_of

    weights = check_terms(block, n_clas)
    weight = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
    unweighted = {name: 0.0 for name in TERMS if name not in weights}
    weighted_sum = weighted_terms(TERMS, {**block, **unweighted},
                                  bound={"ce": {"weight": weight, "label_smoothing": label_smoothing}})

    def loss(raw_outputs, masks):
        out, aux = outputs_of(raw_outputs)
        total = weighted_sum(out, masks)
        if aux is not None and aux_weight:
            total = total + aux_weight * weighted_sum(aux, masks)
        return total

    return loss


def check_terms(block, n_clas):
    """The terms with a weight above 0, or a one-line UserError naming the params key."""
    example = 'e.g. {"ce": 0.5, "dice": 0.5}'
    if not isinstance(block, dict) or not block:
        raise UserError(f"params key 'loss': expected a dict of term weights, {example}, not {block!r}")
    for name, w in block.items():
        if name not in loss_keys(TERMS):
            raise UserError(f"params key 'loss': unknown term '{name}' (terms: {', '.join(TERMS)})")
        if name in TERMS and (isinstance(w, bool) or not isinstance(w, int | float) or w < 0):
            raise UserError(f"params key 'loss': term '{name}' needs a weight >= 0, not {w!r}")
    if block.get("bce") and n_clas > 2:
        raise UserError(f"params key 'loss': term 'bce' is for one-class masks (n_clas 2), not n_clas {n_clas}; "
                        f"use ce or dice")
    kept = {name: float(w) for name, w in block.items() if name in TERMS and w > 0}
    if not kept:
        raise UserError(f"params key 'loss': every term weighs 0, nothing to train on ({example})")
    return kept


def loss_fn(raw_outputs, masks):
    """Plain pixel cross-entropy on the main output, the `loss` of validation and evaluate.py: it ignores the
    loss terms, class_weights, label_smoothing and the aux head, so runs that differ in them compare on it."""
    from model.segmentation.net import outputs_of

    return cross_entropy(outputs_of(raw_outputs)[0], masks)


def cross_entropy(logits, masks, weight=None, label_smoothing=0.0):
    """F.cross_entropy's mean over labelled pixels (divided by their summed class weights, as PyTorch does), but
    0 rather than nan when a batch has none: one unlabelled crop must not turn the epoch's loss into nan."""
    import torch.nn.functional as F

    weight = None if weight is None else weight.to(logits.device)
    total = F.cross_entropy(logits, masks, weight=weight, ignore_index=IGNORE, label_smoothing=label_smoothing,
                            reduction="sum")
    valid = masks != IGNORE
    if weight is None:
        return total / valid.sum().clamp(min=1)
    return total / (weight[masks.masked_fill(~valid, 0)] * valid).sum().clamp(min=1e-12)


def dice_loss(logits, masks, smooth=1.0):
    """1 - the soft Dice score, softmax probabilities against one-hot masks, each class over all the batch's
    labelled pixels; the mean is over the classes labelled or predicted (argmax) in the batch, since an absent
    class scores (0 + smooth) / (0 + smooth) = 1 and would pull every batch's loss towards 0."""
    import torch.nn.functional as F

    k = logits.shape[1]
    valid = (masks != IGNORE).unsqueeze(1)
    probs = logits.float().softmax(1) * valid
    target = F.one_hot(masks.masked_fill(~valid[:, 0], 0), k).permute(0, 3, 1, 2) * valid
    dims = (0, 2, 3)
    overlap = (probs * target).sum(dims)
    sizes = probs.sum(dims) + target.sum(dims)
    score = (2 * overlap + smooth) / (sizes + smooth)
    predicted = F.one_hot(predicted_classes(logits), k).permute(0, 3, 1, 2) * valid
    present = (target.sum(dims) + predicted.sum(dims)) > 0
    # a mean under a mask, without the sync that score[present] would cost; 0 when nothing is labelled
    return ((1 - score) * present).sum() / present.sum().clamp(min=1)


def foreground_logit(logits):
    """The logit of "object" for bce: a 1-channel output as it is; for two channels (background, object) the
    difference, since sigmoid(l1 - l0) is exactly the softmax probability of channel 1, so bce and ce train the
    same two-class model."""
    if logits.shape[1] == 1:
        return logits[:, 0]
    if logits.shape[1] == 2:
        return logits[:, 1] - logits[:, 0]
    raise ValueError(f"bce: needs 1 or 2 output channels, not {logits.shape[1]}")


def binary_cross_entropy(logits, masks):
    """Mean over labelled pixels of the binary cross-entropy of "object" (mask 1) against the rest."""
    import torch.nn.functional as F

    valid = masks != IGNORE
    per_pixel = F.binary_cross_entropy_with_logits(foreground_logit(logits).float(), (masks == 1).float(),
                                                   reduction="none")
    return (per_pixel * valid).sum() / valid.sum().clamp(min=1)


TERMS = {
    "ce": Term(cross_entropy, 1.0, "pixel cross-entropy, with label_smoothing and class_weights"),
    "dice": Term(dice_loss, 0.0, "1 - soft Dice over the classes present"),
    "bce": Term(binary_cross_entropy, 0.0, "binary cross-entropy of the object class (one-class masks)"),
}
