"""`compile: 1`: torch.compile for training, or eager with one clear line where this machine cannot compile."""

import copy

import torch

from utils import one_line


def compile_model(model, x, rt):
    """Compile `model` in place once a trial compile of a copy has run one training step on batch `x`; else leave
    it eager. Returns the line to log.

    torch.compile compiles lazily, at the first call, so only running it shows whether this machine can (a missing
    C++ compiler, an unsupported operation); the trial runs on a copy so the run's weights, BatchNorm statistics
    and random streams stay as they were. nn.Module.compile compiles in place: state_dict keys stay the plain
    model's (no '_orig_mod.' prefix), so checkpoints load with and without compile."""
    try:
        trial = copy.deepcopy(model)
        trial.compile()  # torch.compile checks here whether this Python and platform are supported at all
        with torch.random.fork_rng():  # the trial's dropout must not shift the run's random numbers
            trial.train()
            with rt.autocast():
                out = trial(x)
            out.float().sum().backward()
            trial.eval()  # validation's pass compiles a graph of its own
            with torch.inference_mode(), rt.autocast():
                trial(x)
        model.compile()
    except Exception as e:  # whatever stops compiling: the run goes on eager, and says why
        return (f"compile: torch.compile cannot compile this model here, training eager instead "
                f"({type(e).__name__}: {one_line(e)[:200]})")
    return "compile: training with torch.compile (its first batches run slower while it compiles)"
