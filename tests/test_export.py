"""export.py on trained folders of every task: parity, the metadata inside, evaluate.py and predict.py on the export
giving the checkpoint's results, reruns, and bad input (one line, nothing written)."""

import json
import os
import shutil
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import read
from core import exporting
from utils import load_checkpoint, run_cli

TASKS = ("classification", "segmentation", "detection", "keypoints")


def run(script, *args):
    module = __import__(script)
    return module.main(list(args))


def error_line(capsys, script, *args):
    """The script's one stderr line for bad input (exit 2)."""
    with pytest.raises(SystemExit) as e:
        run_cli(lambda: run(script, *args))
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    return err[0][len("error: "):]


def copied(trained_run, task, tmp_path):
    src, data_dir = trained_run(task)
    dst = str(tmp_path / task)
    shutil.copytree(src, dst)
    return dst, data_dir


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory):
    """exported(task) -> (folder, data_dir): a copy of the task's trained folder, exported to ONNX and .pt2."""
    done = {}

    def get(task):
        if task not in done:
            folder, data_dir = copied(trained_run, task, tmp_path_factory.mktemp("exported"))
            for fmt in exporting.FORMATS:
                assert run("export", "--model_dir", folder, "--format", fmt, "--data_dir", data_dir) == 0
            done[task] = folder, data_dir
        return done[task]

    return get


@pytest.mark.parametrize("task", TASKS)
def test_the_export_matches_the_checkpoint_on_validation_images_and_carries_the_runs_metadata(task, exported):
    folder, _ = exported(task)
    params = read(os.path.join(folder, "params.json"))
    for fmt in exporting.FORMATS:
        path = os.path.join(folder, "export", f"best.{fmt}")
        record = read(path + ".json")
        tolerance = 1e-3 if task == "detection" else 1e-4
        assert record["parity"]["images"] > 0 and record["parity"]["max_abs_diff"] <= tolerance, record
        assert record["checkpoint"]["file"] == "best.pth.tar" and record["sha256"] == exporting.sha256(path)
        assert record["latency_ms"]["eager"] > 0
        _, meta = exporting.runner(path, fmt)
        assert meta["task"] == task and meta["params"]["im_sz"] == params["im_sz"] and meta["epoch"] == 1
        assert meta["classes"] == load_checkpoint(os.path.join(folder, "best.pth.tar"))["classes"]
        assert meta["input"]["height_width"] == (None if task == "segmentation" else [params["im_sz"]] * 2)
        assert meta["input"]["preprocessing"]["transform"]["__class_fullname__"] == "Compose"
        assert (meta["decode"] is not None) == (task == "detection")


@pytest.mark.parametrize("task", TASKS)
def test_evaluate_on_the_export_gives_the_checkpoints_metrics(task, exported, capsys):
    folder, data_dir = exported(task)
    metrics = {}
    for variant, flags in (("", ()), ("_onnx", ("--exported", "onnx")), ("_pt2", ("--exported", "pt2"))):
        assert run("evaluate", "--model_dir", folder, "--data_dir", data_dir, *flags) == 0
        metrics[variant] = read(os.path.join(folder, f"metrics_test_best_weights{variant}.json"))
        header, _, row = capsys.readouterr().out.strip().splitlines()[-3:]  # the table says what it evaluated
        assert "evaluated on test" in header
        assert f"| {f'export/best.{variant[1:]}' if variant else 'best.pth.tar'} " in row, row
    eager = metrics[""]
    for variant in ("_onnx", "_pt2"):
        names = [k for k, v in eager.items()
                 if isinstance(v, float) and not (task == "detection" and k.startswith("loss"))]
        assert names and all(abs(metrics[variant][k] - eager[k]) <= 1e-4 for k in names), (variant, names)
        assert metrics[variant]["exported"].endswith(f"best.{variant[1:]}")
    if task == "detection":  # an exported detector has no heads to compute losses with: no loss, rather than 0
        assert "loss" in eager and "loss" not in metrics["_onnx"]


def odd_sized_images(data_dir, folder):
    """Six of the test images at sizes the model never saw (non-square too)."""
    os.makedirs(folder)
    images = sorted(os.listdir(os.path.join(data_dir, "test", "images")))[:6]
    for i, name in enumerate(images):
        with Image.open(os.path.join(data_dir, "test", "images", name)) as im:
            im.convert("RGB").resize((40 + 8 * i, 36 + 4 * i)).save(os.path.join(folder, f"{i}.png"))
    return folder


@pytest.mark.slow
def test_predict_with_the_export_writes_what_the_checkpoint_does(exported, tmp_path):
    folder, data_dir = exported("segmentation")
    source = odd_sized_images(data_dir, str(tmp_path / "images"))
    for flags in ((), ("--exported", "onnx"), ("--exported", "pt2")):
        out = str(tmp_path / ("eager" if not flags else flags[1]))
        assert run("predict", "--model_dir", folder, "--source", source, "--out", out, *flags) == 0
    for name in os.listdir(tmp_path / "eager" / "masks"):
        eager = np.asarray(Image.open(tmp_path / "eager" / "masks" / name))
        for fmt in ("onnx", "pt2"):
            assert np.array_equal(np.asarray(Image.open(tmp_path / fmt / "masks" / name)), eager), (fmt, name)

    folder, data_dir = exported("detection")
    source = odd_sized_images(data_dir, str(tmp_path / "boxes"))
    outs = {}
    for flags in ((), ("--exported", "onnx")):
        out = str(tmp_path / ("det_eager" if not flags else "det_onnx"))
        assert run("predict", "--model_dir", folder, "--source", source, "--out", out, *flags) == 0
        outs[flags] = read(os.path.join(out, "detections.json"))["annotations"]
    eager, onnx = outs[()], outs[("--exported", "onnx")]
    assert len(eager) == len(onnx) and [a["category_id"] for a in eager] == [a["category_id"] for a in onnx]
    assert np.abs(np.array([a["bbox"] for a in eager]) - np.array([a["bbox"] for a in onnx])).max(initial=0) <= 1e-3
    manifest = read(tmp_path / "det_onnx" / "manifest.json")
    assert manifest["identity"]["checkpoint"].endswith(os.path.join("export", "best.onnx"))


def test_a_rerun_keeps_the_export_and_another_checkpoints_export_is_refused_unless_overwrite(exported, tmp_path,
                                                                                            capsys):
    src, data_dir = exported("classification")
    folder = str(tmp_path / "run")
    shutil.copytree(src, folder)
    path = os.path.join(folder, "export", "best.onnx")
    before = os.stat(path).st_mtime_ns
    assert run("export", "--model_dir", folder, "--data_dir", data_dir) == 0
    assert "up to date" in capsys.readouterr().out and os.stat(path).st_mtime_ns == before
    os.utime(os.path.join(folder, "best.pth.tar"))  # as if training went on and wrote a new best checkpoint
    line = error_line(capsys, "export", "--model_dir", folder, "--data_dir", data_dir)
    assert line == (f"{path}: exported from best.pth.tar epoch 1, which has changed since (epoch 1 now); "
                    f"--overwrite replaces it")
    assert os.stat(path).st_mtime_ns == before
    assert run("export", "--model_dir", folder, "--data_dir", data_dir, "--overwrite") == 0
    assert os.stat(path).st_mtime_ns != before and read(path + ".json")["sha256"] == exporting.sha256(path)


def test_a_failed_parity_check_writes_nothing(trained_run, tmp_path, monkeypatch, capsys):
    folder, data_dir = copied(trained_run, "classification", tmp_path)
    real = exporting.runner

    def off_by_a_little(path, fmt):
        run_, meta = real(path, fmt)
        return (lambda x: run_(x) + 1e-3), meta

    monkeypatch.setattr(exporting, "runner", off_by_a_little)
    line = error_line(capsys, "export", "--model_dir", folder, "--data_dir", data_dir)
    assert line.startswith("export: parity check failed on 64 validation images: max abs diff 0.001")
    assert line.endswith("> 0.0001 (nothing written)")
    assert os.listdir(os.path.join(folder, "export")) == []  # no file, no temp file left behind


def test_bad_input_is_one_line_and_writes_nothing(exported, trained_run, tmp_path, monkeypatch, capsys):
    folder, data_dir = copied(trained_run, "classification", tmp_path)
    assert error_line(capsys, "export", "--model_dir", folder, "--format", "tflite") == \
        "--format tflite: unknown (choices: onnx, pt2)"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert error_line(capsys, "export", "--model_dir", str(empty)).startswith(f"--model_dir {empty}: no best.pth.tar")
    with open(os.path.join(folder, "export"), "w") as f:
        f.write("mine")
    assert error_line(capsys, "export", "--model_dir", folder, "--data_dir", data_dir) == \
        f"{os.path.join(folder, 'export')}: is a file, where export.py writes its folder"
    assert open(os.path.join(folder, "export")).read() == "mine"
    for script, more in (("evaluate", ()), ("predict", ("--source", str(empty)))):  # the option the user typed
        assert error_line(capsys, script, "--model_dir", folder, "--exported", "tflite", *more) == \
            "--exported tflite: unknown (choices: onnx, pt2)"
    line = error_line(capsys, "evaluate", "--model_dir", str(empty), "--exported", "onnx")
    assert line == (f"--model_dir {empty}: no export/best.onnx (export it first: python export.py --model_dir "
                    f"{empty} --format onnx --restore_file best)")
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # as if the optional extra were not installed
    assert error_line(capsys, "export", "--model_dir", folder) == ("--format onnx needs onnx, onnxscript and "
                                                                   "onnxruntime (onnxscript is missing): pip install "
                                                                   "-r requirements-export.txt")
    monkeypatch.delitem(sys.modules, "onnxscript")


def test_evaluate_and_export_default_to_the_data_set_the_run_trained_on(trained_run, tmp_path, capsys):
    folder, data_dir = copied(trained_run, "keypoints", tmp_path)  # its data is not the task's default folder
    assert run("evaluate", "--model_dir", folder, "--split", "valid") == 0
    assert read(os.path.join(folder, "metrics_valid_best_weights.json"))["data_dir"] == os.path.abspath(data_dir)
    record = read(os.path.join(folder, "record.json"))
    gone = str(tmp_path / "moved_away")
    record["sessions"][-1]["data_dir"] = gone
    with open(os.path.join(folder, "record.json"), "w") as f:
        json.dump(record, f)
    for script in ("evaluate", "export"):
        assert error_line(capsys, script, "--model_dir", folder) == \
            f"{gone}: the data set this run trained on (its record.json) is missing; pass --data_dir"
    assert not os.path.exists(os.path.join(folder, "export"))


def test_a_pt2_export_is_loaded_only_as_export_py_wrote_it(exported, tmp_path, capsys):
    """A .pt2 unpickles when loaded: one whose bytes differ from the record export.py kept is never loaded."""
    src, data_dir = exported("keypoints")
    folder = str(tmp_path / "run")
    shutil.copytree(src, folder)
    path = os.path.join(folder, "export", "best.pt2")
    with open(path, "ab") as f:
        f.write(b"\0")
    line = error_line(capsys, "predict", "--model_dir", folder, "--source", data_dir, "--exported", "pt2")
    assert line == (f"{path}: not the file export.py wrote (no record, or its SHA-256 differs from best.pt2.json); "
                    f"export it again")
    assert not os.path.exists(os.path.join(folder, "predictions"))


def test_a_two_stage_detector_is_refused_with_the_reason():
    from core import tasks
    from core.config import Params, resolve
    from utils import UserError

    params = Params(resolve({"task": "detection", "arch": "fasterrcnn_mobilenet_v3_large_320_fpn", "im_sz": 64}, "p"))
    task = tasks.load("detection")
    with pytest.raises(UserError, match="two-stage detector .* these export: small_fcos"):
        task.export_parts(task.build_model(params, 3), params)
    params = Params(resolve({"task": "detection", "arch": "ssdlite320_mobilenet_v3_large", "im_sz": 64}, "p"))
    with pytest.raises(UserError, match="not exported .* not SSD's default boxes.* these export: small_fcos"):
        task.export_parts(task.build_model(params, 3), params)
