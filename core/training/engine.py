"""The machinery around the training loop (model/loop.py): the device decision (Runtime), seeding, the RNG states a
checkpoint holds, and keeping freed memory for reuse."""

import contextlib
import ctypes
import os
import random
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Runtime:
    """Decided once per run, then used everywhere (as `rt`): where tensors live and how the forward pass runs."""

    device: torch.device
    amp_dtype: torch.dtype | None  # autocast dtype, None for full precision
    channels_last: bool

    @property
    def pin_memory(self):
        return self.device.type == "cuda"

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def to_device(self, x, y):
        # non_blocking overlaps the copy with compute when the batch sits in pinned memory
        return self.inputs(x), y.to(self.device, non_blocking=True)

    def inputs(self, x):
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        return x.to(self.device, non_blocking=True, memory_format=fmt)

    def peak_memory_mb(self):
        """The most GPU memory tensors held since the last call (None on the CPU), then the count starts again."""
        if self.device.type != "cuda":
            return None
        peak = torch.cuda.max_memory_allocated(self.device) / 2**20
        torch.cuda.reset_peak_memory_stats(self.device)
        return round(peak, 1)

    def prepare(self, model):
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model


def pick_runtime(use_cuda, local_rank=0, deterministic=False):
    """local_rank: this process's GPU among several processes on the machine (torchrun). deterministic: kernels
    that give the same bits every run (GPU runs, and their resumes, bit-identical; on the CPU they already are)."""
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS's condition, read at its first call
    torch.use_deterministic_algorithms(bool(deterministic), warn_only=True)  # an op without such a kernel warns, once
    torch.backends.cudnn.deterministic = bool(deterministic)
    if use_cuda and torch.cuda.is_available():
        # fixed input size: let cuDNN pick the fastest kernels once (a choice that may differ from run to run)
        torch.backends.cudnn.benchmark = not deterministic
        bf16 = torch.cuda.is_bf16_supported()
        return Runtime(torch.device("cuda", local_rank), torch.bfloat16 if bf16 else None, channels_last=True)
    return Runtime(torch.device("cpu"), None, channels_last=False)


def keep_freed_memory():
    """Have glibc keep freed memory for reuse rather than return it to the OS. Its defaults map large blocks
    afresh and trim the heap on free, so a run's activations were page-faulted in again every batch (train.py on
    the detector: 660,000 page faults and about 3 s of system time an epoch, where a bare loop took 9,000; see
    docs/detection.md). Blocks under 32 MB then come from the heap, and up to 256 MB of free heap is kept. Not glibc
    (macOS, musl): nothing to do."""
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # malloc.h
    return bool(mallopt(m_mmap_threshold, 32 << 20)) and bool(mallopt(m_trim_threshold, 256 << 20))


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def rank_seed(seed, rank):
    """Rank 0's seed is the run's (one process draws as before); the others draw their own streams (augmentation,
    dropout, MixUp), not copies of rank 0's."""
    return seed if rank == 0 else int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])


def epoch_seed(seed, epoch):
    """A seed for one epoch of one run. Hashing (seed, epoch) keeps repetitions (seed, seed + 1000) from
    sharing data orders the way seed + epoch would (repetition 1's epoch 1 = repetition 0's epoch 1001...)."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def rng_state():
    """All global RNG states, as tensors and plain lists so checkpoints load with weights_only=True."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    random.setstate(tuple(x if not isinstance(x, list) else tuple(x) for x in state["python"]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
