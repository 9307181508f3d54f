"""What every tracker logs: a history.json row's metrics under one set of names, the facts that identify a run, and
the end state that a status.json word maps to. Pure functions of the folder's data; no tracker is imported here."""

import os

# a container's folders as the host names them (core/search/container.py passes them): what a tracker shows
HOST_MODEL_DIR, HOST_DATA_DIR = "TRACKER_HOST_MODEL_DIR", "TRACKER_HOST_DATA_DIR"

# a run's status.json word -> the end state trackers know (MLflow's names; W&B and TensorBoard map them)
END_STATE = {"completed": "FINISHED", "paused": "KILLED", "pruned": "KILLED", "interrupted": "KILLED",
             "failed": "FAILED", "diverged": "FAILED"}


def epoch_metrics(row):
    """{name: value} of one history.json epoch row, as every tracker names them (step: the epoch)."""
    out = {"epoch": row["epoch"], "time/images_per_s": row["images_per_s"], "time/epoch_s": row["epoch_s"]}
    for split in ("train", "val"):
        out |= {f"{split}/{k}": v for k, v in (row.get(split) or {}).items()}
    out |= {f"lr/group{i}": lr for i, lr in enumerate(row["lr"])}
    for kind in ("grad_norm", "update_ratio"):
        out |= {f"{kind}/{k}": v for k, v in row.get(kind, {}).items()}
    return out


def check_metrics(row):
    """{name: value} of a validation within an epoch (history.json 'checks'); its step is row['step'], the batches
    trained so far."""
    return {"val_checks/epoch": row["epoch"], **{f"val_checks/{k}": v for k, v in row["val"].items()}}


def check_step(row):
    return row.get("step", row["batch"])  # history written before checks carried their step: the batch


def run_facts(model_dir, params, data_dir, record_session):
    """What identifies a run in a tracker besides its metrics: its name (the folder's), tags (where the folder is,
    the code version, the data set and its fingerprint) and the effective params flattened to dotted keys."""
    from core.config import flatten

    git = record_session.get("git") or {}
    image = record_session.get("container") or {}
    code = (git.get("commit") or "")[:12] + ("+dirty" if git.get("dirty") else "") or image.get("digest") or \
        image.get("id") or "unknown"
    host_dir = os.environ.get(HOST_MODEL_DIR) or os.path.abspath(model_dir)
    tags = {"model_dir": host_dir, "code_version": code,
            "model_code": (record_session.get("model_code") or {}).get("sha1", ""),
            "data_set": os.environ.get(HOST_DATA_DIR) or os.path.abspath(data_dir), "data_fingerprint":
            data_fingerprint(data_dir), "task": params["task"]}
    return {"name": os.path.basename(host_dir.rstrip("/")), "tags": tags, "params": flatten(params)}


def default_name(model_dir):
    """A new run's MLflow experiment and W&B project, unless the environment names one: the name of the folder
    holding the experiment folder (experiments/base_model: "experiments")."""
    return os.path.basename(os.path.dirname(os.environ.get(HOST_MODEL_DIR) or os.path.abspath(model_dir)))




def data_fingerprint(data_dir):
    """A short hash of the data set's verified-image manifest (each image's path, size and mtime: core/data/
    imagecache.py), so two runs on differently edited copies of a set are told apart; '' where there is none."""
    import hashlib

    from core.data.imagecache import CACHE_DIR, MANIFEST

    try:
        with open(os.path.join(data_dir, CACHE_DIR, MANIFEST), "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()[:16]
    except OSError:
        return ""
