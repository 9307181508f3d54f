"""search_hyperparams.py --container IMAGE: each cell trains as one container run of the image the repository's
Dockerfile builds, with the cell folder mounted at /cell and its data set read-only at /data.

The folder stays the state, as without containers: the command after the image is what train.py would get
(--restore_file last, --stop_at_epoch N), so rerun-is-resume, pauses, locks and statuses work unchanged. The
image's own filesystem is mounted read-only: a cell can write into its folder and a throw-away /tmp, nowhere else.
"""

import hashlib
import os
import re
import secrets
import shutil
import subprocess
from dataclasses import dataclass

from core.config import KEYS
from core.paths import repo_path
from core.rundir.record import IMAGE_ENV
from core.trackers import RECORD, read_record
from core.trackers.rows import HOST_DATA_DIR, HOST_MODEL_DIR
from utils import UserError

CELL, DATA, APP = "/cell", "/data", "/app"  # where the Dockerfile's entry point looks; its WORKDIR
RUNTIMES = ("podman", "docker", "apptainer")
# params keys naming a file a run reads besides its data: mounted read-only where the container looks for them
FILE_KEYS = ("pretrained_path", "init_weights_path")
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
# what a tracker needs to reach its server (docs/trackers.md); a search's store and parent run come in trackers.json
TRACKER_VARS = ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL", "MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME",
                "MLFLOW_TRACKING_PASSWORD")
SHM = "2g"  # DataLoader workers hand batches over in /dev/shm; the runtimes' 64 MB default is too small
# the local pool's choice of GPUs for a cell (core/search/pool.py cell_env), as ids 0..n-1 of the GPUs it may use
POOL_GPUS = "SEARCH_POOL_GPUS"


@dataclass(frozen=True)
class Container:
    """An image found on this machine: what record.json names as where a cell ran."""

    runtime: str
    image: str
    image_id: str
    digest: str | None = None

    def record(self):
        """The environment that tells train.py (record.json) which image it runs in."""
        values = {"runtime": self.runtime, "image": self.image, "id": self.image_id, "digest": self.digest}
        return {IMAGE_ENV[k]: v for k, v in values.items() if v}


def find_container(image, runtime=None):
    """The Container for `image`, or a one-line UserError when the runtime or the image is missing."""
    runtime = runtime or default_runtime(image)
    if not shutil.which(runtime):
        raise UserError(f"--container_runtime {runtime}: not found on PATH (install it, or pick one of "
                        f"{', '.join(RUNTIMES)})")
    if runtime == "apptainer":
        if not os.path.isfile(image):
            raise UserError(f"--container {image}: no such file (apptainer runs a .sif image: apptainer build "
                            f"IMAGE.sif docker-daemon://IMAGE:latest)")
        st = os.stat(image)
        return Container(runtime, os.path.abspath(image), f"{st.st_size}-{st.st_mtime_ns}")
    proc = subprocess.run([runtime, "image", "inspect", "--format", "{{.Id}} {{range .RepoDigests}}{{.}} {{end}}",
                           image], capture_output=True, text=True)
    if proc.returncode != 0 or not proc.stdout.split():
        said = (proc.stderr.strip().splitlines() or ["image not known"])[-1].removeprefix("Error: ")
        raise UserError(f"--container {image}: {runtime} cannot use it ({said}); build it with `make image`, or "
                        f"`{runtime} pull` it")
    image_id, *digests = proc.stdout.split()
    return Container(runtime, image, image_id, digests[0] if digests else None)


def default_runtime(image):
    if image.endswith(".sif"):
        return "apptainer"
    return next((r for r in ("podman", "docker") if shutil.which(r)), "podman")


def container_prefix(folder):
    """What `podman ps` shows of the cell a container trains: its folder's name and a hash of the folder's path. A
    cell's containers, and only they, have names that begin with it (`podman ps --filter name=PREFIX`)."""
    folder = os.path.abspath(folder)
    tag = hashlib.sha1(folder.encode()).hexdigest()[:8]
    return f"cell-{re.sub(r'[^A-Za-z0-9_.-]', '_', os.path.basename(folder))[:60]}-{tag}"


def container_name(folder):
    """The cell's prefix and a part new for each run. A shared name had to be --replace'd (a killed run's container
    can take seconds to go), and that removed a training: two searches starting one cell at once, the second's
    --replace came before the first's train.py held the folder's lock. With its own name each run starts, and the
    lock decides which trains: the other exits 'locked'."""
    return f"{container_prefix(folder)}-{secrets.token_hex(4)}"


def gpu_ids(value):
    return [g.strip() for g in (value or "").split(",") if g.strip()]


def visible_gpus(env):
    """The GPUs a cell may use, as the host numbers them: podman's and docker's containers are started by their
    runtime, outside the caller's cgroup, and name GPUs so. Slurm's SLURM_JOB_GPUS holds those physical ids (its
    CUDA_VISIBLE_DEVICES may be renumbered inside the job's cgroup). A local pool running within a Slurm job chose
    its cell's GPUs as indices into the job's (POOL_GPUS), so those index SLURM_JOB_GPUS; without Slurm they are the
    host's ids already."""
    slurm, pool = gpu_ids(env.get("SLURM_JOB_GPUS")), env.get(POOL_GPUS)
    if pool is None:  # the Slurm launcher's own task, or a cell given its GPUs by Ray
        return slurm or gpu_ids(env.get("CUDA_VISIBLE_DEVICES"))
    if not slurm:
        return gpu_ids(pool)
    ids = gpu_ids(pool)
    beyond = [g for g in ids if not (g.isdigit() and int(g) < len(slurm))]
    if beyond:
        raise UserError(f"GPU {beyond[0]} of {POOL_GPUS}={pool} is not one of this Slurm job's SLURM_JOB_GPUS="
                        f"{','.join(slurm)} (a pool in a Slurm job numbers the job's GPUs from 0)")
    return [slurm[int(g)] for g in ids]


def file_mounts(params):
    """(host path, container path) of each file a params key names: where train.py, run from /app, will look."""
    assert all(k in KEYS for k in FILE_KEYS)
    mounts = []
    for key in FILE_KEYS:
        path = params.get(key)
        if isinstance(path, str) and path:
            mounts.append((repo_path(path), path if os.path.isabs(path) else os.path.join(APP, path)))
    return mounts


def tracker_mounts(folder):
    """A search that logs to MLflow or W&B: its trackers.json, read-only where the cell looks for it (beside /cell),
    and a sqlite store's folder read-write at its own path, so that the URI trackers.json names holds inside too:
    the one place besides its folder that a cell writes to."""
    parent = os.path.dirname(folder)
    if not os.path.isfile(os.path.join(parent, RECORD)):
        return []
    mounts = [(os.path.join(parent, RECORD), "/" + RECORD, "ro")]
    uri = (read_record(parent).get("mlflow") or {}).get("tracking_uri", "")
    if uri.startswith("sqlite:///"):
        store = os.path.dirname(uri.removeprefix("sqlite:///"))
        mounts.append((store, store, "rw"))
    return mounts


def run_command(ct, folder, data_dir, params, train_args, env):
    """The command that trains the cell in `folder` in a container of `ct`; train_args are train.py's beyond
    --model_dir and --data_dir (which the image's entry point sets to /cell and /data)."""
    folder, data_dir = os.path.abspath(folder), os.path.abspath(data_dir)
    mounts = [(folder, CELL, "rw"), (data_dir, DATA, "ro")] + [(h, c, "ro") for h, c in file_mounts(params)]
    mounts += tracker_mounts(folder)
    pass_env = {k: env[k] for k in THREAD_VARS + TRACKER_VARS if k in env} | ct.record() | {
        HOST_MODEL_DIR: folder, HOST_DATA_DIR: data_dir}
    if ct.runtime == "apptainer":
        return apptainer_command(ct, mounts, pass_env, gpu_ids(env.get("CUDA_VISIBLE_DEVICES")), train_args)
    return [ct.runtime, "run", "--rm", "--name", container_name(folder), "--read-only", "--tmpfs", "/tmp",
            "--shm-size", SHM, "--security-opt", "label=disable", *user_flags(ct.runtime),
            *gpu_flags(ct.runtime, visible_gpus(env)), *[a for h, c, mode in mounts for a in ("-v", f"{h}:{c}:{mode}")],
            *[a for k, v in pass_env.items() for a in ("-e", f"{k}={v}")],
            ct.image, *train_args]


def apptainer_command(ct, mounts, pass_env, gpus, train_args):
    """apptainer's --bind and --env split their values on commas, which older cell folders' names hold (list values
    joined with ','): each mount is a --mount record instead, and each variable APPTAINERENV_NAME=value in apptainer's
    environment (taken whole, --containall or not), set by env(1) so that the command stays a list of arguments,
    run as it is and printed ready to run. It ignores the image's WORKDIR: --pwd, so relative paths in params resolve
    as they do elsewhere. It runs in the caller's cgroup and --nv shows the GPUs as the caller sees them (in a Slurm
    job that constrains devices, the job's, from 0): the caller's CUDA_VISIBLE_DEVICES holds inside as it is."""
    variables = pass_env | ({"CUDA_VISIBLE_DEVICES": ",".join(gpus)} if gpus else {})
    return ["env", *[f"APPTAINERENV_{k}={v}" for k, v in variables.items()],
            "apptainer", "run", "--containall", "--no-home", "--pwd", APP, *(["--nv"] if gpus else []),
            *[a for m in mounts for a in ("--mount", apptainer_mount(*m))], ct.image, *train_args]


def apptainer_mount(host, inside, mode):
    """One --mount spec: a CSV record, each path's field quoted so that a comma (or colon) in it stays in it, as
    apptainer's docs show (type=bind,"src=/comma,dir",dst=/mnt). A double quote or a line break would take CSV escapes
    as well: refused, rather than risk a mount of another path."""
    for path in (host, inside):
        if any(c in path for c in '"\r\n'):
            raise UserError(f"apptainer cannot mount {path!r}: a path with a double quote or a line break (rename it)")
    return ",".join(["type=bind", f'"source={host}"', f'"destination={inside}"', *(["ro"] if mode == "ro" else [])])


def user_flags(runtime):
    """Run as the invoking user, so what a cell writes is never root-owned on a shared filesystem. Rootless podman
    maps that user into the container (keep-id); rootful podman and docker are told the ids."""
    if runtime == "podman" and os.geteuid() != 0:
        return ["--userns=keep-id"]
    return ["--user", f"{os.getuid()}:{os.getgid()}"]


def gpu_flags(runtime, gpus):
    """Exactly these GPUs inside the container, where they are numbered from 0."""
    if not gpus:
        return []
    if runtime == "docker":  # docker reads the value as CSV: several ids need the quotes
        return ["--gpus", f"device={gpus[0]}" if len(gpus) == 1 else f'"device={",".join(gpus)}"']
    return [a for g in gpus for a in ("--device", f"nvidia.com/gpu={g}")]  # podman: CDI names
