"""Gradient checkpointing (params "grad_checkpointing": 1): the model's blocks keep only their inputs during the
forward pass and recompute what is inside them during backward. Less memory for activations, one more forward
pass of compute; the gradients are those of the plain model.

The blocks are found, not declared, so every architecture gets it without code of its own: the outermost modules
that are elements of an nn.Sequential or nn.ModuleList and have layers of their own (torchvision's residual and
transformer blocks, the stages of model/<task>/net.py's small networks), never the head.
"""

import contextlib
import types

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint


def blocks_of(model, head=None):
    """The modules to recompute, outermost first found; none inside `head`."""
    skip = set(head.modules()) if head is not None else set()
    found = []

    def walk(module):
        for child in module.children():
            if child in skip:
                continue
            if isinstance(module, (nn.Sequential, nn.ModuleList)) and next(child.children(), None) is not None:
                found.append(child)  # its insides are recomputed with it: no need to go deeper
            else:
                walk(child)

    walk(model)
    return found


def checkpoint_blocks(model, head=None):
    """Make each block of `model` recompute its activations in backward; returns how many. The forward is replaced
    on the instances (a bound method, which deepcopy rebinds: an EMA copy checkpoints itself), so parameter names
    and checkpoints are unchanged."""
    blocks = blocks_of(model, head)
    for block in blocks:
        block.forward = types.MethodType(recomputed_forward, block)
    return len(blocks)


def recomputed_forward(self, *args, **kwargs):
    plain = type(self).forward
    if not (self.training and torch.is_grad_enabled()):
        return plain(self, *args, **kwargs)  # evaluation keeps no activations anyway
    # the RNG state is kept (preserve_rng_state), so dropout draws the same masks when recomputed
    return checkpoint(plain, self, *args, use_reentrant=False,
                      context_fn=lambda: (contextlib.nullcontext(), norms_at_rest(self)), **kwargs)


@contextlib.contextmanager
def norms_at_rest(block):
    """While a block is recomputed, its BatchNorm layers normalise by the batch as in the forward pass, but their
    running statistics are put back afterwards: a second update would apply the momentum twice per step."""
    kept = [(buf, buf.clone()) for m in block.modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training for buf in m.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buf, before in kept:
                buf.copy_(before)
