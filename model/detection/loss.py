"""The detection losses: the detector computes its own loss terms (classification, bbox_regression, ... as it names
them); build_loss weighs them by params.box_loss_weights, loss_fn is their plain sum, what validation and
evaluate.py report. TERMS is empty: the loss block's terms are not used here. No torch import at the top."""

TERMS = {}


def loss_terms(outputs):
    """The loss dict of a training step, or of a validation step (its "losses")."""
    return outputs["losses"] if "losses" in outputs else outputs


def build_loss(params, counts):
    """The sum of the detector's loss terms, each times its weight in params.box_loss_weights (default 1)."""
    weights = params.box_loss_weights or {}

    def loss(outputs, targets):
        return sum(weights.get(name, 1.0) * value for name, value in loss_terms(outputs).items())

    return loss


def loss_fn(outputs, targets):
    """The validation loss: the plain sum of the terms, whatever the training weights; None for an exported
    detector's outputs, which carry no terms (computing them needs the training-mode heads)."""
    terms = loss_terms(outputs)
    return sum(terms.values()) if terms else None
