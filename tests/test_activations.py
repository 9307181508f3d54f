"""Gradient checkpointing (grad_checkpointing: 1): the blocks found in every task's architectures recompute their
activations in backward and give the plain model's gradients and BatchNorm statistics bit for bit. That a run with
it, SIGKILLed and resumed, trains the weights of a plain uninterrupted run is tested with the within-epoch checks
(tests/test_within_epoch.py), in one run."""

import copy

import pytest
import torch
import torch.nn as nn

from core import tasks
from core.config import Params, resolve
from core.training.activations import blocks_of, checkpoint_blocks
from core.training.state import recompute_activations
from utils import UserError

ARCHS = [("classification", "small_cnn"), ("classification", "resnet18"), ("segmentation", "unet"),
         ("keypoints", "heatmap_unet"), ("detection", "small_fcos")]


def loss_of(task, model, x):
    torch.manual_seed(1)  # the same dropout masks for both models
    if task == "detection":
        return sum(model(x, torch.tensor([[[2.0, 2.0, 20.0, 20.0, 1.0]]]).repeat(len(x), 1, 1)).values())
    out = model(x)
    return (out["out"] if isinstance(out, dict) else out).float().pow(2).mean()


@pytest.mark.parametrize("task_name,arch", ARCHS)
def test_recomputed_blocks_give_the_plain_gradients_and_norm_statistics(task_name, arch):
    task = tasks.load(task_name)
    params = Params(resolve({"task": task_name, "arch": arch, "im_sz": 32, "ps": 0.3}, "test"))
    torch.manual_seed(0)
    plain = task.build_model(params, 4)
    recomputed = copy.deepcopy(plain)
    assert checkpoint_blocks(recomputed, task.head_of(recomputed)) >= 4
    x = torch.randn(4, 3, 32, 32)
    for model in (plain, recomputed):
        model.train()
        loss_of(task_name, model, x).backward()
    for (name, a), b in zip(plain.named_parameters(), recomputed.parameters()):
        assert (a.grad is None) == (b.grad is None) and (a.grad is None or torch.equal(a.grad, b.grad)), name
    for (name, a), b in zip(plain.named_buffers(), recomputed.buffers()):
        assert torch.equal(a, b), name  # BatchNorm updated once per step, not again when recomputed
    assert plain.state_dict().keys() == recomputed.state_dict().keys()  # checkpoints unchanged


def test_dropout_inside_a_block_draws_the_same_masks_when_recomputed():
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Dropout(0.5), nn.Linear(64, 8)),
                          nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.5)), nn.Linear(8, 1))
    recomputed = copy.deepcopy(plain)
    assert checkpoint_blocks(recomputed, recomputed[2]) == 2
    x = torch.randn(16, 8)
    grads = []
    for model in (plain, recomputed):
        torch.manual_seed(5)
        model(x).sum().backward()
        grads.append([p.grad for p in model.parameters()])
        after = torch.rand(1)  # the RNG goes on as if nothing were recomputed
    assert all(torch.equal(a, b) for a, b in zip(*grads))
    torch.manual_seed(5)
    plain(x)
    assert torch.equal(after, torch.rand(1))


def test_an_ema_copy_recomputes_its_own_blocks():
    model = nn.Sequential(nn.Sequential(nn.Linear(4, 4), nn.ReLU()), nn.Linear(4, 1))
    checkpoint_blocks(model)
    twin = copy.deepcopy(model)
    assert twin[0].forward.__self__ is twin[0]  # not the original's block


def test_a_model_without_blocks_is_one_line():
    task = tasks.load("classification")
    params = Params(resolve({"arch": "small_cnn"}, "test"))
    assert blocks_of(nn.Linear(2, 2)) == []
    with pytest.raises(UserError, match="grad_checkpointing 1: small_cnn has no blocks"):
        recompute_activations(nn.Sequential(nn.Linear(2, 2), nn.ReLU()), task, params, "p.json")
