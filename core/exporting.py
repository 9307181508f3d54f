"""Exported models: what export.py writes (ONNX, torch.export's .pt2), the metadata in them, the parity check, and
the trained model evaluate.py and predict.py run, a checkpoint's or an export's (`load_trained`).

MODEL_DIR/export/<restore>.<format> holds the task's export graph (model/task.py export_parts: the model, its main
logits, or a detector's raw head outputs) taking the preprocessed batch x [B,3,H,W] float32; its metadata (task,
classes, params, epoch, input size and preprocessing, code) is embedded: ONNX metadata_props["cs230"], the .pt2's
extra file cs230.json. Beside it, <file>.json records the export: the checkpoint it came from, the file's SHA-256,
the parity and the latency measured. Preprocessing and decoding stay this template's Python on both paths, so an
exported model is checked, evaluated and applied through the very code an eager one is.
"""

import hashlib
import json
import os
import statistics
import time

import torch

from core.rundir.folder import check_model_dir, trained_checkpoint
from utils import UserError, one_line, read_json, write_json

FORMATS = ("onnx", "pt2")
META = "cs230"
EXTRA = "pip install -r requirements-export.txt"


def export_path(model_dir, restore_file, fmt):
    return os.path.join(model_dir, "export", f"{restore_file}.{fmt}")


def check_format(fmt, option="--format"):
    """`option`: the flag the user typed (export.py's --format, evaluate.py's and predict.py's --exported)."""
    if fmt not in FORMATS:
        raise UserError(f"{option} {fmt}: unknown (choices: {', '.join(FORMATS)})")
    if fmt == "onnx":
        try:
            import onnxruntime  # noqa: F401
            import onnxscript  # noqa: F401
        except ImportError as e:
            raise UserError(f"{option} onnx needs onnx, onnxscript and onnxruntime ({e.name} is missing): "
                            f"{EXTRA}") from None
    return fmt


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def checkpoint_identity(checkpoint, ckpt):
    st = os.stat(checkpoint)
    return {"file": os.path.basename(checkpoint), "epoch": ckpt["epoch"], "bytes": st.st_size,
            "mtime_ns": st.st_mtime_ns}


def metadata(ckpt, params, task, identity, code, decoded):
    """What a consumer of the file needs besides the graph: it is written into the file itself. `decoded`: the
    graph's outputs need the task's decoding (model/<task>/net.py) to become predictions."""
    eval_tf = task.transforms_record(*task.build_transforms(params))["eval"]
    size = None if task.own_size else [params.im_sz, params.im_sz]
    return {"task": params.task, "classes": ckpt["classes"], "epoch": ckpt["epoch"],
            "weights": ckpt.get("weights", "raw"), "checkpoint": identity, "code": code,
            "input": {"layout": "NCHW", "dtype": "float32", "channels": "RGB", "height_width": size,
                      "preprocessing": eval_tf},
            "decode": f"model/{params.task}/net.py export_parts" if decoded else None,
            "params": ckpt["params"]}


# ---------------------------------------------------------------- writing


def trace(graph, x, any_size):
    """torch.export's program of `graph` for a batch of any size (and any height and width when `any_size`)."""
    dims = {0: torch.export.Dim("batch")}
    if any_size:
        dims.update({2: torch.export.Dim.DYNAMIC, 3: torch.export.Dim.DYNAMIC})
    try:
        return torch.export.export(graph.eval(), (x,), dynamic_shapes=({**dims},), strict=False)
    except Exception as e:  # what torch.export cannot trace: say so in one line
        raise UserError(f"export: torch.export cannot trace the model ({type(e).__name__}: {one_line(e)[:300]})") \
            from None


def write(program, fmt, path, meta):
    """Write `program` to `path` with `meta` embedded."""
    text = json.dumps(meta)
    if fmt == "pt2":
        torch.export.save(program, path, extra_files={f"{META}.json": text})
        return
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        onnx_program = torch.onnx.export(program, dynamo=True, verbose=False)  # the dynamo exporter, explicitly
    onnx_program.model.metadata_props[META] = text
    onnx_program.save(path)


# ---------------------------------------------------------------- running


class OnnxRunner:
    """x (a torch tensor) -> the graph's outputs as torch tensors, through onnxruntime on the CPU."""

    def __init__(self, path):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3  # warnings about unused initialisers are not the user's business
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def meta(self):
        return json.loads(self.session.get_modelmeta().custom_metadata_map[META])

    def __call__(self, x):
        outs = self.session.run(None, {self.input: x.detach().float().cpu().contiguous().numpy()})
        outs = tuple(torch.from_numpy(o).to(x.device) for o in outs)
        return outs[0] if len(outs) == 1 else outs


class Pt2Runner:
    def __init__(self, path):
        extra = {f"{META}.json": ""}
        self.module = torch.export.load(path, extra_files=extra).module()
        self.text = extra[f"{META}.json"]

    def meta(self):
        return json.loads(self.text)

    def __call__(self, x):
        out = self.module(x)
        return tuple(out) if isinstance(out, (list, tuple)) and len(out) > 1 else out


def runner(path, fmt):
    """The file's runner, or a one-line error for a file that is not an export of this template."""
    try:
        run = OnnxRunner(path) if fmt == "onnx" else Pt2Runner(path)
        meta = run.meta()
    except Exception as e:
        raise UserError(f"{path}: cannot load the exported model ({type(e).__name__}: {one_line(e)[:200]})") from None
    return run, meta


class ExportedModel(torch.nn.Module):
    """An exported file where the loops expect the model: forward(x, targets) -> what the eager model gives in
    eval mode (decoded by the task's own code). Holds no parameters: .eval() and .to() leave the runner as is."""

    def __init__(self, run, decode):
        super().__init__()
        self.run, self.decode = (run,), decode  # a tuple: not a submodule, which eval() would walk into

    def forward(self, x, targets=None):
        out = self.run[0](x)
        if self.decode is None:
            return out
        return self.decode(out, x, targets) if targets is not None else self.decode(out, x)


def load_trained(model_dir, restore_file, exported=None, overrides=()):
    """(info, params, task, model, path) of a folder's checkpoint (the weights its validation saw: the EMA's when it
    kept one), or of its export with `exported` (onnx, pt2); info has the run's classes, epoch
    and weights. The model is on the CPU."""
    if exported:
        return exported_run(model_dir, restore_file, exported, overrides)
    from core.training.trained import trained_model, trained_run

    path = trained_checkpoint(model_dir, restore_file)
    ckpt, params, task = trained_run(path, overrides)
    return ckpt, params, task, trained_model(ckpt, params, task, path), path


def exported_run(model_dir, restore_file, fmt, overrides=()):
    """(info, params, task, model, path) of MODEL_DIR/export/<restore_file>.<fmt>: info has the checkpoint's
    "classes", "epoch" and "weights"; model an ExportedModel. A .pt2 is loaded (it unpickles) only when its
    SHA-256 is the one export.py recorded beside it."""
    from core import tasks
    from core.training.trained import trained_params

    check_model_dir(model_dir)
    check_format(fmt, "--exported")
    path = export_path(model_dir, restore_file, fmt)
    if not os.path.isfile(path):
        raise UserError(f"--model_dir {model_dir}: no export/{os.path.basename(path)} (export it first: python "
                        f"export.py --model_dir {model_dir} --format {fmt} --restore_file {restore_file})")
    if read_record(path) is None:
        raise UserError(f"{path}: not the file export.py wrote (no record, or its SHA-256 differs from "
                        f"{os.path.basename(path)}.json); export it again")
    run, meta = runner(path, fmt)
    params = trained_params(meta["params"], f"{path} (params)", overrides)
    task = tasks.load(params.task)
    decode = None
    if meta.get("decode"):  # the decoding is code, not weights: a freshly built model's fixed parts serve
        decode = task.export_parts(task.build_model(params, len(meta["classes"])).eval(), params)[1]
    return meta, params, task, ExportedModel(run, decode), path


# ---------------------------------------------------------------- checking


def max_diff(a, b):
    """The largest absolute difference between two outputs (tensors, tuples, dicts); inf where shapes differ."""
    if isinstance(a, dict):
        return max([max_diff(a[k], b[k]) for k in a if torch.is_tensor(a[k])] or [0.0])
    if isinstance(a, (tuple, list)):
        return max(max_diff(p, q) for p, q in zip(a, b)) if len(a) == len(b) else float("inf")
    if a.shape != b.shape:
        return float("inf")
    return float((a.float() - b.float()).abs().max()) if a.numel() else 0.0


@torch.inference_mode()
def parity(graph, run, batches):
    """(max abs diff between the eager graph and the exported file on `batches`, images compared). On the graph's
    own outputs: the task's decoding after it is the same Python on both paths, and compared after it, a difference
    of 1e-6 could flip a near-tied box across NMS or the score threshold, a whole box of difference from an export
    that is right (a detector after one epoch: 8.33)."""
    worst, n = 0.0, 0
    for x in batches:
        worst, n = max(worst, max_diff(graph(x), run(x))), n + x.shape[0]
    return worst, n


@torch.inference_mode()
def latency_ms(fn, x, repeats=7):
    """Median milliseconds of fn(x), after one warm-up call."""
    fn(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(x)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def read_record(path):
    """The export's record (<file>.json), or None where there is none or it does not describe the file there."""
    try:
        record = read_json(path + ".json")
    except UserError:
        return None
    return record if os.path.isfile(path) and record.get("sha256") == sha256(path) else None


def write_record(path, record):
    write_json(path + ".json", {**record, "sha256": sha256(path)})
