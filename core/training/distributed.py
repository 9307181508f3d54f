"""One run on several processes (torch.distributed's DDP): one process a device, launched by torchrun.

    python train.py --model_dir DIR --nproc 2      # or "nproc": 2 in params.json; both run torchrun, as in:
    torchrun --standalone --nproc_per_node 2 train.py --model_dir DIR

torchrun sets WORLD_SIZE, RANK and LOCAL_RANK; each process trains on its slice of every batch (batch_size is the
global batch: each rank takes batch_size / world of it, core/data/loaders.py ShardBatchSampler) and DDP averages
the gradients, so a step is the step of one process on the whole batch. Rank 0 alone writes the folder and
validates (exactly: every validation image once) while the others wait for its metrics; every rank's RNG state is
in the checkpoint, so `--restore_file last` with the same world size resumes bit for bit.
"""

import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

from utils import LAUNCHER_PID, RANK_ERRORS, FolderBusy, UserError, die_with_parent, read_json


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self):
        return self.rank == 0

    @property
    def active(self):
        return self.world > 1


def from_env():
    """This process's place, from torchrun's environment (one process when there is none)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return Ranks(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))


# torchrun, less its log and its report of a failed rank (a page of text and a traceback): train.py says what failed,
# in one line (the ranks' own output is theirs). It stops its ranks with the first signal it gets and ignores the
# rest: a Ctrl-C reaches it twice (from the terminal and from train.py), and a second one in the middle of stopping
# would stop them again with SIGTERM. SIGUSR2 (Slurm's time-limit warning) is passed on like the others, not
# torchrun's death.
QUIET_TORCHRUN = """import logging, os, signal, sys
logging.disable(logging.ERROR)
from torch.distributed.elastic.multiprocessing import api
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import main

def stop_once(signum, frame):  # torchrun's --signals_to_handle, which it keeps in its environment
    for name in os.environ["TORCHELASTIC_SIGNALS_TO_HANDLE"].split(","):
        signal.signal(getattr(signal, name), signal.SIG_IGN)
    raise api.SignalException(f"got signal {signum}", sigval=signal.Signals(signum))

api._terminate_process_handler = stop_once
try:
    main()
except (ChildFailedError, api.SignalException):
    sys.exit(1)
"""
PASSED_ON = ("SIGINT", "SIGTERM", "SIGUSR2")  # what train.py passes to torchrun, and torchrun to the ranks
HANDLED = (*PASSED_ON, "SIGHUP", "SIGQUIT")  # what torchrun stops its ranks on (its default, and SIGUSR2)


def launch(nproc, args):
    """nproc > 1 (params key, or train.py --nproc N): run this very command under torchrun with `nproc` processes
    on this machine and wait for it; returns its exit code, or raises the bad input a rank found (one line, its
    exit code). SIGINT, SIGTERM and SIGUSR2 (a search's stop, a scheduler's kill or time-limit warning) are passed
    on, as train.py's own handling expects. Under torchrun the processes are torchrun's, whatever nproc says
    (WORLD_SIZE is set then)."""
    import signal
    import subprocess
    import tempfile

    from core.paths import TRAIN

    # --nproc N becomes the override nproc=N: torchrun's parser would take --nproc for its own --nproc-per-node
    args = [a for i, a in enumerate(args) if not (a == "--nproc" or a.startswith("--nproc=")
                                                  or (i and args[i - 1] == "--nproc"))]
    with tempfile.TemporaryDirectory(prefix="cs230-ranks-") as errors:
        # torchrun would set 1 thread a process (and say so): share the cores out instead
        env = {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // nproc)), **os.environ,
               RANK_ERRORS: errors, LAUNCHER_PID: str(os.getpid())}
        # torchrun dies with train.py (and its ranks with it: start), however train.py is killed
        proc = subprocess.Popen([sys.executable, "-c", QUIET_TORCHRUN, "--standalone", f"--nproc_per_node={nproc}",
                                 f"--signals_to_handle={','.join(HANDLED)}",
                                 TRAIN, *args, f"nproc={nproc}"], env=env, preexec_fn=die_with_parent)
        for name in PASSED_ON:
            signal.signal(getattr(signal, name), lambda signum, frame: proc.send_signal(signum))
        code = proc.wait()
        said = sorted(os.listdir(errors))  # rank0.json first: the rank that reads the data first
        if said:
            error = read_json(os.path.join(errors, said[0]))
            raise (FolderBusy if error["exit_code"] == FolderBusy.exit_code else UserError)(error["message"])
    return code


def check(params, ranks, ckpt, where, device_type):
    """The world size must split every stage's batch evenly and equal the one a resumed checkpoint trained with;
    SyncBatchNorm needs GPUs."""
    if not ranks.active and (ckpt or {}).get("world_size", 1) == 1:
        return
    if ranks.active and params.sync_bn and device_type != "cuda":
        raise UserError(f"{where}: key 'sync_bn' is 1, but torch runs SyncBatchNorm on GPUs only (on CPU processes, "
                        f"leave it out, or use a model without BatchNorm such as small_cnn_gn)")
    sizes = {params.batch_size, *[s.get("batch_size", params.batch_size) for s in params.stages or []]}
    for size in sorted(sizes):
        if size % ranks.world:
            raise UserError(f"{where}: key 'batch_size' is {size}, which {ranks.world} processes cannot share "
                            f"evenly (it is the global batch: give a multiple of {ranks.world})")
    trained = (ckpt or {}).get("world_size", 1)
    if ckpt and trained != ranks.world:
        raise UserError(f"--restore_file: this checkpoint was trained by {trained} process(es), not {ranks.world}; "
                        f"resume with {trained} for the same run (each rank's data and random state is its own)")


def start(ranks, device_type):
    """Join the process group: NCCL between GPUs, gloo between CPU processes. A rank torchrun started dies with
    torchrun: torchrun starts each in a session of its own, so a SIGKILL of the launcher's process group (kill -9
    -PGID, a pool stopping a cell) would leave them training as orphans, writing into a folder nobody holds."""
    if "TORCHELASTIC_RUN_ID" in os.environ:
        die_with_parent()
    if ranks.active and not dist.is_initialized():
        if device_type == "cuda":
            torch.cuda.set_device(ranks.local_rank)
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")


def wrap(model, ranks):
    """The DDP wrapper that trains `model` across ranks (the state keeps the bare module: its checkpoints are one
    process's), or None for one process."""
    if not ranks.active:
        return None
    from torch.nn.parallel import DistributedDataParallel

    device = next(model.parameters()).device
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def gathered(obj, ranks):
    """[obj of each rank], in rank order."""
    if not ranks.active:
        return [obj]
    out = [None] * ranks.world
    dist.all_gather_object(out, obj)
    return out


def wait_for_all(ranks):
    """Every rank waits here for the others (a barrier); nothing with one process."""
    if ranks.active:
        dist.barrier()


def from_main(obj, ranks):
    """Rank 0's obj, on every rank."""
    if not ranks.active:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def merged(train_metrics, ranks):
    """An epoch's training metrics over every rank: each the mean of the ranks' (each rank saw as many images:
    exact for the loss and accuracy, means over images), their speeds added up."""
    rows = gathered(train_metrics, ranks)
    if len(rows) == 1:
        return train_metrics
    speeds = ("time_s", "data_time_s", "images_per_s")
    out = {k: sum(m[k] for m in rows) / len(rows) for k in train_metrics if k not in speeds}
    out.update(time_s=max(m["time_s"] for m in rows), data_time_s=max(m["data_time_s"] for m in rows),
               images_per_s=sum(m["images_per_s"] for m in rows))
    return out


def stop(ranks):
    if ranks.active and dist.is_initialized():
        dist.destroy_process_group()
