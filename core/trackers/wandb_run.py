"""One folder's Weights & Biases run (params key loggers: ["wandb"]).

Online when W&B has credentials (WANDB_API_KEY, or `wandb login`'s ~/.netrc entry), offline otherwise; WANDB_MODE
decides when set. Offline runs are written under MODEL_DIR/wandb/offline-run-*; `wandb sync` uploads them. Each
session of a resumed run is one such folder with the same run id: W&B keeps the steps of a run increasing and
drops a step logged again (wandb#9449), so every row is logged at step round(10000 x epoch), its validations
within an epoch at their fractional epoch, and a row is logged once, after the last step the run holds: online,
the server's (a resumed run's `step`); offline, which ignores `resume` (wandb#2423), the last step found in the
folder's own offline files (a SIGKILL loses what W&B had not yet written there: the next session logs it). The
project:
WANDB_PROJECT, else the name of the folder holding the experiment folders; a search's cells share a group, the
search folder's name.
"""

import glob
import json
import netrc
import os
import struct

import wandb

from core.trackers.rows import END_STATE, check_metrics, default_name, epoch_metrics

STEPS_PER_EPOCH = 10000  # steps are integers: a validation at epoch 1.2345 (history rounds to 4 digits) is 12345


def has_credentials():
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def mode():
    return os.environ.get("WANDB_MODE") or ("online" if has_credentials() else "offline")


def default_project(model_dir):
    return os.environ.get("WANDB_PROJECT") or default_name(model_dir)


def offline_history(model_dir, run_id="*"):
    """Every history row (a dict) of the run's offline sessions under MODEL_DIR/wandb, in the order written. A
    .wandb file is a LevelDB-style log of protobuf records: a 7-byte file header, then 32 KiB blocks of records,
    each with a 7-byte header (crc32, length, type: 1 whole, 2-4 first/middle/last piece of one)."""
    from wandb.proto import wandb_internal_pb2 as pb

    rows = []
    for path in sorted(glob.glob(os.path.join(model_dir, "wandb", "offline-run-*", f"run-{run_id}.wandb"))):
        with open(path, "rb") as f:
            raw = f.read()
        pos, buf = 7, b""
        while pos + 7 <= len(raw):
            if BLOCK - pos % BLOCK < 7:  # a block's tail too short for a header is padding
                pos += BLOCK - pos % BLOCK
                continue
            _, n, kind = struct.unpack("<IHB", raw[pos:pos + 7])
            if kind == 0:  # zeros: the end of what was written
                break
            buf, pos = buf + raw[pos + 7:pos + 7 + n], pos + 7 + n
            if kind in (1, 4):
                record = pb.Record()
                record.ParseFromString(buf)
                buf = b""
                if record.WhichOneof("record_type") == "history":
                    rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                                 for item in record.history.item})
    return rows


BLOCK = 32768


def last_offline_step(model_dir, run_id):
    return max((row.get("_step", 0) for row in offline_history(model_dir, run_id)), default=0)


def step_of(epoch):
    return round(epoch * STEPS_PER_EPOCH)


class WandbRun:
    def __init__(self, model_dir, facts, saved, parent, key):
        saved = saved or {}
        project = saved.get("project") or (parent or {}).get("project") or default_project(model_dir)
        run_id = saved.get("id") or key  # the folder's own key: a session killed before saving the id reuses it
        self.run = wandb.init(project=project, id=run_id, resume="allow", dir=os.path.abspath(model_dir),
                              name=facts["name"], group=(parent or {}).get("group"), mode=mode(),
                              config={**facts["params"], **{f"run.{k}": v for k, v in facts["tags"].items()}},
                              tags=[facts["tags"]["task"]], allow_val_change=True, reinit="create_new",
                              settings=wandb.Settings(silent=True, console="off", x_disable_stats=True))
        self.run.define_metric("epoch")
        self.run.define_metric("*", step_metric="epoch")
        self.dir = model_dir
        held = self.run.step - 1 if self.run.resumed and mode() == "online" else last_offline_step(model_dir, run_id)
        self.saved, self.logged_through = {"id": run_id, "project": project}, held

    def sync(self, epochs, checks):
        rows = [(step_of(r["epoch"]), epoch_metrics(r)) for r in epochs]
        rows += [(step_of(r["epoch"]), {**check_metrics(r), "epoch": r["epoch"]}) for r in checks]
        for step, metrics in sorted(rows, key=lambda pair: pair[0]):
            if step > self.logged_through:
                self.run.log(metrics, step=step)
                self.logged_through = step

    def end(self, status, reason, files):
        for path in files:
            self.run.save(path, base_path=self.dir, policy="now")
        self.run.summary["status"] = status
        self.run.summary["status_reason"] = reason or status
        self.run.finish(exit_code={"FINISHED": 0, "KILLED": 130}.get(END_STATE[status], 1))
