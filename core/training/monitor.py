"""What training does inside: per-layer gradient norms and update-to-weight ratios; which valid examples the
prediction gallery shows."""

import logging
import math

import torch

log = logging.getLogger(__name__)

VANISHING, EXPLODING = 1e-7, 1e3  # gradient-norm thresholds for a warning


class GradMonitor:
    """Per layer (every weight tensor of 2+ dimensions: conv and linear kernels), per epoch:

    - grad_norm: mean L2 norm of the gradient, sampled every `every` steps (norms stay on the device, no sync);
    - update_ratio: ||w_end - w_start|| / ||w_start|| over the epoch, how far the optimizer moved the layer.
    """

    def __init__(self, model, every):
        self.all = [(n, p) for n, p in model.named_parameters() if p.dim() > 1]
        self.every = max(1, every)

    def start_epoch(self):
        self.named = [(n, p) for n, p in self.all if p.requires_grad]  # a frozen layer is neither watched nor warned of
        params = [p for _, p in self.named]
        self.start = [p.detach().clone() for p in params]
        self.sums = torch.zeros(len(params), device=params[0].device) if params else None
        self.samples = 0

    def after_backward(self, step):
        if step % self.every or self.sums is None:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for _, p in self.named]
        self.sums += torch.stack(torch._foreach_norm(grads)).float()
        self.samples += 1

    def state_dict(self):
        """Where the epoch stands (a checkpoint within it): the norms summed so far. The weights it started from
        (self.start, the same on every rank) are saved apart: nothing changes them until the epoch ends, so the
        checkpoint writer reads them as they are, without a copy that would block the loop."""
        return {"sums": self.sums, "samples": self.samples}

    def load_state_dict(self, state, start, device):
        """After start_epoch(), the epoch as a checkpoint within it left it."""
        self.start = [w.to(device) for w in start]
        self.sums = state["sums"].to(device) if state["sums"] is not None else None
        self.samples = state["samples"]

    def end_epoch(self):
        if self.sums is None:
            return {}, {}
        grad = (self.sums / max(self.samples, 1)).tolist()
        ratios = [((p.detach() - w0).norm() / w0.norm().clamp(min=1e-12)).item()
                  for (_, p), w0 in zip(self.named, self.start)]
        names = [n for n, _ in self.named]
        self.start = None
        return dict(zip(names, grad)), dict(zip(names, ratios))


def gradient_warnings(grad_norm):
    """Human-readable warnings for layers whose gradients vanish or explode."""
    out = []
    for name, g in grad_norm.items():
        if not math.isfinite(g) or g > EXPLODING:
            out.append(f"exploding gradient in {name} (norm {g:.3g})")
        elif g < VANISHING:
            out.append(f"vanishing gradient in {name} (norm {g:.3g})")
    for w in out:
        log.warning(f"warning: {w}")
    return out


def gallery_indices(params, n_valid):
    """Fixed validation examples for the gallery: params.gallery_indices, else a seeded choice."""
    if params.gallery_indices:
        return [i for i in params.gallery_indices if 0 <= i < n_valid]
    g = torch.Generator().manual_seed(params.seed)
    return sorted(torch.randperm(n_valid, generator=g)[: min(params.gallery_size, n_valid)].tolist())
