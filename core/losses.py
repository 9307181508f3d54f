"""A task's training loss as weighted terms: the one path from params' loss block to the loss functions.

    TERMS = {"dice": Term(dice_loss, 0.0, "1 - soft Dice", {"smooth": 1.0})}    # model/<task>/loss.py
    "loss": {"ce": 0.5, "dice": 0.5, "dice_smooth": 0.1}                        # params.json
    loss = weighted_terms(TERMS, params.loss)     # 0.5 * ce(out, y) + 0.5 * dice_loss(out, y, smooth=0.1)

A term's weight is the params key loss.<term>, each setting loss.<term>_<setting> (loss_keys): params validation
(core/keys.py, core/config.py) learns the keys from the tasks' TERMS, and weighted_terms reads their values. No
torch here: params validation reads TERMS cheaply.
"""

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Term:
    """One term of a task's training loss: params' loss block weighs it ("loss": {"dice": 0.5}) and sets its own
    settings ("loss": {"focal_gamma": 3}); hyper_search varies either as loss.<term> or loss.<term>_<setting>."""

    fn: Callable  # fn(outputs, targets, **settings) -> a scalar tensor
    weight: float  # its default weight (0: off unless params turn it on)
    doc: str  # one line: what it measures
    settings: dict = field(default_factory=dict)  # {setting: default number}: passed to fn as keyword arguments


def loss_keys(terms):
    """{key of the loss block: default} for `terms` ({name: Term}): each weight, each setting as <term>_<setting>."""
    return {k: v for name, term in terms.items()
            for k, v in {name: term.weight, **{f"{name}_{s}": d for s, d in term.settings.items()}}.items()}


def weighted_terms(terms, loss_block, bound=None):
    """loss(outputs, targets): the sum of weight x term over `terms` ({name: Term}) weighted above 0 in
    `loss_block` (params.loss), each with its own settings from the block. bound: {term: {keyword: value}} of
    what the run decides for a term (class weights, label smoothing)."""
    block = vars(loss_block) if not isinstance(loss_block, dict) else loss_block
    parts = []
    for name, term in terms.items():
        weight = float(block.get(name, term.weight))
        if weight > 0:
            kwargs = {s: block.get(f"{name}_{s}", default) for s, default in term.settings.items()}
            parts.append((weight, term.fn, {**kwargs, **(bound or {}).get(name, {})}))

    def loss(outputs, targets):
        return sum(w * fn(outputs, targets, **kw) for w, fn, kw in parts)

    return loss
