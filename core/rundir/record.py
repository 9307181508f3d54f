"""The reproducibility record of a run folder: what produced it, on what, from which code.

record.json holds one entry per session (a first run, then each resume): command line, git commit and dirty flag
(the diff saved beside it), a hash of model/ (snapshotted into code/), library versions, hardware, seed, and at the
end wall time and images/s, and the container image when a search ran the session in one. Only this module knows the
layout, so evaluate.py and synthesize read it through here.
"""

import hashlib
import os
import platform
import re
import shutil
import subprocess
import sys
from importlib.util import find_spec

from core.paths import ROOT
from utils import atomic_write, now, read_json_field, write_json

RECORD = "record.json"
MODEL_CODE = os.path.join(ROOT, "model")
# what a search's container launcher (core/search/container.py) tells a cell about the image it runs in
IMAGE_ENV = {"runtime": "CELL_RUNTIME", "image": "CELL_IMAGE", "id": "CELL_IMAGE_ID", "digest": "CELL_IMAGE_DIGEST"}


def git(*args):
    try:
        proc = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout if proc.returncode == 0 else None


def code_files():
    """model/'s Python files (the task packages' too), as paths relative to model/."""
    return sorted(os.path.relpath(os.path.join(d, f), MODEL_CODE) for d, _, files in os.walk(MODEL_CODE)
                  for f in files if f.endswith(".py"))


def code_hash():
    h = hashlib.sha1()
    for name in code_files():
        with open(os.path.join(MODEL_CODE, name), "rb") as f:
            h.update(name.encode() + b"\0" + f.read())
    return h.hexdigest()


def snapshot_code(model_dir, digest):
    """Copy model/'s Python files into MODEL_DIR/code/<hash8>/ once per distinct version of the code."""
    dst = os.path.join(model_dir, "code", digest[:8])
    if not os.path.isdir(dst):
        tmp = dst + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        for name in code_files():
            os.makedirs(os.path.dirname(os.path.join(tmp, name)), exist_ok=True)
            shutil.copy2(os.path.join(MODEL_CODE, name), os.path.join(tmp, name))
        os.replace(tmp, dst)
    return os.path.relpath(dst, model_dir)


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(rt):
    import albumentations
    import torch

    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if rt.device.type == "cuda" else []
    return {
        "python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision_version(),
        "albumentations": albumentations.__version__, "platform": platform.platform(),
        "hardware": {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "gpus": gpus, "gpu_count": len(gpus),
                     "device": str(rt.device), "amp": str(rt.amp_dtype) if rt.amp_dtype else None},
    }


def container():
    """{"container": runtime, image name, id and registry digest} of a session started in a container, so a result
    traces back to the image that made it; {} outside one. A container started by hand says only that it was one."""
    info = {key: os.environ[var] for key, var in IMAGE_ENV.items() if var in os.environ}
    if not info and (os.path.exists("/.dockerenv") or os.path.exists("/run/.containerenv")):
        info = {"image": None}
    return {"container": info} if info else {}


def torchvision_version():
    """torchvision.__version__ without importing torchvision (which costs ~1 s): read from its version.py."""
    spec = find_spec("torchvision")
    try:
        with open(os.path.join(spec.submodule_search_locations[0], "version.py")) as f:
            return re.search(r"__version__ = '([^']+)'", f.read()).group(1)
    except (AttributeError, OSError, TypeError):
        return None


def start_session(model_dir, params, argv, rt, start_epoch, data_dir=None):
    """Append this session to record.json and save the diff and code snapshot it refers to."""
    commit = (git("rev-parse", "HEAD") or "").strip() or None
    status = git("status", "--porcelain", "--untracked-files=no")
    dirty = bool(status and status.strip())
    session = {"started_at": now(), "command": [sys.executable, *argv],
               "cwd": os.getcwd(), "start_epoch": start_epoch, "seed": params.seed,
               "data_dir": os.path.abspath(data_dir) if data_dir else None,
               "git": {"commit": commit, "dirty": dirty if commit else None,
                       "untracked": (git("ls-files", "--others", "--exclude-standard") or "").split()},
               **environment(rt), **container(), **({"stages": params.stages} if params.stages else {})}
    digest = code_hash()
    session["model_code"] = {"sha1": digest, "snapshot": snapshot_code(model_dir, digest)}
    if dirty:
        diff = git("diff", "HEAD") or ""
        name = f"git_diff_{len(sessions(model_dir)) + 1}.patch"
        atomic_write(os.path.join(model_dir, name), lambda f: f.write(diff))
        session["git"]["diff"] = name
    write_json(os.path.join(model_dir, RECORD), {"sessions": sessions(model_dir) + [session]})


def end_session(model_dir, outcome, wall_time_s, closing_s=None, images_per_s=None):
    """closing_s: of wall_time_s, the part spent after the last epoch waiting for its writes and the figures."""
    record = sessions(model_dir)
    if record:
        record[-1].update(ended_at=now(), wall_time_s=rounded(wall_time_s, 2), closing_s=rounded(closing_s, 2),
                          images_per_s=rounded(images_per_s, 1), outcome=outcome)
        write_json(os.path.join(model_dir, RECORD), {"sessions": record})


def trained_on(model_dir):
    """The data set the run in model_dir last trained on (record.json), or None."""
    return next((s["data_dir"] for s in reversed(sessions(model_dir)) if s.get("data_dir")), None)


def rounded(x, digits):
    return None if x is None else round(x, digits)


def sessions(model_dir):
    return read_json_field(os.path.join(model_dir, RECORD), "sessions", [])


def provenance(model_dir):
    """'abc1234', 'abc1234+dirty', 'image 40da0347ccbe' (a container's, which has no git) or '' for a folder's first
    session: where to look for the code that made it."""
    record = sessions(model_dir)
    if not record:
        return ""
    g = record[0].get("git", {})
    commit = (g.get("commit") or "")[:7]
    snap = record[0].get("model_code", {}).get("snapshot", "")
    image = (record[0].get("container", {}).get("id") or "").removeprefix("sha256:")[:12]
    label = commit + ("+dirty" if g.get("dirty") else "") if commit else f"image {image}" if image else "no git"
    return f"{label} ({snap})" if snap else label
