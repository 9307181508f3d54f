"""train.py's bad-input contract.

Every bad input gives ONE line on stderr starting with "error:" that names the file, key or value; exit code 2;
no traceback; and nothing written to (or removed from) the model folder.
"""

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import train
from conftest import ROOT
from utils import run_cli

# tiny and fast: if validation wrongly lets a case through, the run ends in seconds (and the test fails)
TINY = {
    "arch": "small_cnn",
    "num_epochs": 1,
    "batch_size": 8,
    "bs_test": 8,
    "train_subset": 8,
    "cache_images": 0,
    "im_sz": 16,
    "num_workers": 0,
    "cuda": 0,
}
CLASSES = ("0", "1", "2")
PER_CLASS = 3


# ---------------------------------------------------------------- fixtures and helpers


@pytest.fixture
def digits(digits_dir):
    return Path(digits_dir)


@pytest.fixture
def data(tmp_path, digits):
    """A small valid data set: PER_CLASS real images for each of CLASSES, in train/ and valid/."""
    root = tmp_path / "data"
    for split in ("train", "valid"):
        for c in CLASSES:
            dst = root / split / c
            dst.mkdir(parents=True)
            for f in sorted((digits / split / c).iterdir())[:PER_CLASS]:
                shutil.copy(f, dst / f.name)
    return root


@pytest.fixture
def model_dir(tmp_path):
    """An experiment folder holding a valid tiny params.json."""
    folder = tmp_path / "exp"
    folder.mkdir()
    write_params(folder, TINY)
    return folder


@pytest.fixture(autouse=True)
def restore_process_state():
    """train.main may (when a case wrongly gets through) add log handlers and signal handlers: undo them."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    sigs = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR2)}
    yield
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
            h.close()
    root.setLevel(level)
    for s, h in sigs.items():
        signal.signal(s, h)


def write_params(folder, params):
    (Path(folder) / "params.json").write_text(json.dumps(params, indent=2))


def snapshot(path):
    """{relative path: (size, mtime_ns)} for everything under `path` (hidden files included), or its own stat."""
    path = Path(path)
    if path.is_file():
        st = path.stat()
        return {".": (st.st_size, st.st_mtime_ns)}
    out = {}
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            out[str(p.relative_to(path))] = (st.st_size, st.st_mtime_ns)
    return out


def run_train(argv, capsys):
    """train.main(argv) through run_cli, in this process: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as e:
        run_cli(lambda: train.main([str(a) for a in argv]))
    out, err = capsys.readouterr()
    return e.value.code, out, err


def assert_rejected(argv, capsys, watch, *needles):
    """Run train.py on argv; check the whole contract; return the error line."""
    before = snapshot(watch)
    code, out, err = run_train(argv, capsys)
    after = snapshot(watch)
    assert "Traceback" not in err and "Traceback" not in out
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    line = lines[0]
    assert line.startswith("error: "), line
    for needle in needles:
        assert str(needle) in line, f"{needle!r} not in {line!r}"
    assert code == 2, f"exit code {code}; stderr: {err}"
    assert after == before, f"model folder changed: {sorted(set(after) ^ set(before)) or 'mtimes/sizes'}"
    return line


def args(model_dir, data_dir, *extra):
    return ["--model_dir", model_dir, "--data_dir", data_dir, *extra]


# ---------------------------------------------------------------- params.json


def test_params_json_missing(model_dir, data, capsys):
    (model_dir / "params.json").unlink()
    assert_rejected(args(model_dir, data), capsys, model_dir, model_dir / "params.json", "not found")


def test_params_json_not_valid_json_reports_line_and_column(model_dir, data, capsys):
    (model_dir / "params.json").write_text('{\n  "num_epochs": 1,\n  "batch_size": 8\n  "im_sz": 16\n}\n')
    line = assert_rejected(args(model_dir, data), capsys, model_dir, model_dir / "params.json", "invalid JSON")
    assert "line 4, column 3" in line


def test_params_json_empty_file(model_dir, data, capsys):
    (model_dir / "params.json").write_text("")
    assert_rejected(args(model_dir, data), capsys, model_dir, model_dir / "params.json", "line 1, column 1")


def test_params_json_not_an_object(model_dir, data, capsys):
    (model_dir / "params.json").write_text("[1, 2]")
    assert_rejected(args(model_dir, data), capsys, model_dir, model_dir / "params.json", "object")


def test_unknown_key_with_suggestion(model_dir, data, capsys):
    write_params(model_dir, {**TINY, "learning_rat": 0.01})
    assert_rejected(args(model_dir, data), capsys, model_dir,
                    model_dir / "params.json", "unknown key 'learning_rat'", "did you mean 'learning_rate'?")


def test_unknown_nested_key_with_suggestion(model_dir, data, capsys):
    write_params(model_dir, {**TINY, "early_stopping": {"patiense": 2}})
    assert_rejected(args(model_dir, data), capsys, model_dir,
                    "unknown key 'early_stopping.patiense'", "did you mean 'early_stopping.patience'?")


def test_wrong_type(model_dir, data, capsys):
    write_params(model_dir, {**TINY, "batch_size": "8"})
    assert_rejected(args(model_dir, data), capsys, model_dir,
                    model_dir / "params.json", "'batch_size'", "expects int", 'string "8"')


def test_batch_size_zero(model_dir, data, capsys):
    write_params(model_dir, {**TINY, "batch_size": 0})
    assert_rejected(args(model_dir, data), capsys, model_dir, model_dir / "params.json", "'batch_size'", ">= 1",
                    "got 0")


def test_negative_learning_rate(model_dir, data, capsys):
    write_params(model_dir, {**TINY, "learning_rate": -0.1})
    assert_rejected(args(model_dir, data), capsys, model_dir, "'learning_rate'", "> 0", "-0.1")


def test_num_epochs_zero(model_dir, data, capsys):
    write_params(model_dir, {**TINY, "num_epochs": 0})
    assert_rejected(args(model_dir, data), capsys, model_dir, "'num_epochs'", ">= 1", "got 0")


def test_bad_optimizer_choice(model_dir, data, capsys):
    write_params(model_dir, {**TINY, "optimizer": "rmsprop"})
    assert_rejected(args(model_dir, data), capsys, model_dir, "'optimizer'", "sgd, adam, adamw", '"rmsprop"')


def test_unknown_arch_suggests_closest(model_dir, data, capsys):
    write_params(model_dir, {**TINY, "arch": "resnet19"})
    assert_rejected(args(model_dir, data), capsys, model_dir, "'arch'", "resnet19", "did you mean 'resnet18'?")


def test_architecture_that_cannot_run_on_the_data(model_dir, data, capsys):
    write_params(model_dir, {**TINY, "arch": "vit_b_16"})  # a ViT wants 224 px, these images are 16 px
    assert_rejected(args(model_dir, data), capsys, model_dir, "fails on this data", "Expected 224")


def test_top5_monitor_with_fewer_than_five_classes(model_dir, data, capsys):
    write_params(model_dir, {**TINY, "early_stopping": {"monitor_metric": "top5"}})
    assert_rejected(args(model_dir, data), capsys, model_dir, "'early_stopping.monitor_metric'", "3 classes")


def test_unknown_augmentation_preset(model_dir, data, capsys):
    write_params(model_dir, {**TINY, "augmentation": "heavy"})
    assert_rejected(args(model_dir, data), capsys, model_dir, "'augmentation'", "heavy", "light")


def test_too_many_learning_rates_for_the_model(model_dir, data, capsys):
    write_params(model_dir, {**TINY, "learning_rate": [0.01] * 40})
    assert_rejected(args(model_dir, data), capsys, model_dir, "'learning_rate'", "40 rates")


@pytest.mark.parametrize("key, value, needles", [
    ("label_smoothing", 1.0, ["in [0, 1)", "got 1.0"]),
    ("class_weights", "balance", ['null, "balanced" or a list of numbers > 0', '"balance"']),
    ("class_weights", [1, 0, 1], ["> 0", "[1, 0, 1]"]),
    ("class_weights", [1, 2], ["has 2 weights but the data has 3 classes"]),  # checked against the data
    ("class_weights", 3, ["expects \"balanced\", a list of numbers or null", "got int 3"]),
    ("mixup_alpha", -0.2, [">= 0", "-0.2"]),
    ("cutmix_alpha", "1", ["expects float", 'string "1"']),
    ("mix_prob", 1.5, ["in [0, 1]", "1.5"]),
    ("grad_clip", -1, [">= 0", "got -1"]),
    ("accumulate_steps", 0, [">= 1", "got 0"]),
    ("accumulate_steps", 1.5, ["expects int", "1.5"]),
    ("ema_decay", 1.0, ["in [0, 1)", "got 1.0"]),
    ("compile", 2, ["expects 0/1", "got int 2"]),
    ("wd_norm_bias", "yes", ["expects 0/1", '"yes"']),
])
def test_bad_recipe_values(model_dir, data, capsys, key, value, needles):
    write_params(model_dir, {**TINY, key: value})
    assert_rejected(args(model_dir, data), capsys, model_dir, model_dir / "params.json", f"'{key}'", *needles)


# ---------------------------------------------------------------- overrides


def test_override_with_unknown_key(model_dir, data, capsys):
    assert_rejected(args(model_dir, data, "num_epoch=2"), capsys, model_dir,
                    "override 'num_epoch=2'", "unknown key 'num_epoch'", "did you mean 'num_epochs'?")


def test_override_with_bad_value(model_dir, data, capsys):
    assert_rejected(args(model_dir, data, "early_stopping.patience=-1"), capsys, model_dir,
                    "override 'early_stopping.patience=-1'", ">= 0")


def test_override_without_equals(model_dir, data, capsys):
    assert_rejected(args(model_dir, data, "num_epochs"), capsys, model_dir, "override 'num_epochs'", "KEY=VALUE")


# ---------------------------------------------------------------- data


def test_data_dir_missing(model_dir, tmp_path, capsys):
    missing = tmp_path / "no_such_data"
    assert_rejected(args(model_dir, missing), capsys, model_dir, missing, "not found")


def test_data_dir_without_valid_folder(model_dir, data, capsys):
    shutil.rmtree(data / "valid")
    assert_rejected(args(model_dir, data), capsys, model_dir, data, "'valid'")


def test_data_dir_without_train_folder(model_dir, data, capsys):
    shutil.rmtree(data / "train")
    assert_rejected(args(model_dir, data), capsys, model_dir, data, "'train'")


def test_class_folder_with_no_images(model_dir, data, capsys):
    empty = data / "train" / "3"
    empty.mkdir()
    (empty / "notes.txt").write_text("not an image")
    assert_rejected(args(model_dir, data), capsys, model_dir, empty, "no images")


def test_split_without_class_folders(model_dir, data, capsys):
    shutil.rmtree(data / "valid")
    (data / "valid").mkdir()
    assert_rejected(args(model_dir, data), capsys, model_dir, data / "valid", "no class folders")


def test_valid_class_not_in_train(model_dir, data, capsys):
    extra = data / "valid" / "7"
    extra.mkdir()
    shutil.copy(next((data / "valid" / "0").iterdir()), extra / "x.png")
    assert_rejected(args(model_dir, data), capsys, model_dir, data / "valid", "'7'")


@pytest.mark.parametrize("split", ["train", "valid"])
def test_unreadable_image_names_the_file(model_dir, data, capsys, split):
    write_params(model_dir, {**TINY, "train_subset": 0})  # a subset might leave the bad image out
    bad = data / split / "1" / "garbage.png"
    bad.write_text("this is not a PNG at all\n")
    assert_rejected(args(model_dir, data), capsys, model_dir, bad, "cannot read image")


def test_truncated_image_is_caught_before_anything_is_written(model_dir, data, capsys):
    write_params(model_dir, {**TINY, "train_subset": 0})
    victim = sorted((data / "train" / "1").iterdir())[0]
    victim.write_bytes(victim.read_bytes()[:60])  # signature + IHDR intact, pixel data cut off
    assert_rejected(args(model_dir, data), capsys, model_dir, victim, "cannot read image")


def test_n_clas_mismatching_the_data(model_dir, data, capsys):
    write_params(model_dir, {**TINY, "n_clas": 5})
    assert_rejected(args(model_dir, data), capsys, model_dir,
                    model_dir / "params.json", "'n_clas'", "5", f"{len(CLASSES)} class folders")


def test_training_set_too_small_for_one_batch(model_dir, data, capsys):
    write_params(model_dir, {**TINY, "train_subset": 1})
    assert_rejected(args(model_dir, data), capsys, model_dir, "train")


# ---------------------------------------------------------------- model folder and resume


def test_restore_file_that_does_not_exist(model_dir, data, capsys):
    assert_rejected(args(model_dir, data, "--restore_file", "last"), capsys, model_dir,
                    "--restore_file last", model_dir / "last.pth.tar", "not found")


def test_model_dir_that_is_a_file(tmp_path, data, capsys):
    f = tmp_path / "exp.json"
    f.write_text(json.dumps(TINY))
    assert_rejected(args(f, data), capsys, f, f"--model_dir {f}", "is a file")


def test_model_dir_missing(tmp_path, data, capsys):
    missing = tmp_path / "no_such_exp"
    assert_rejected(args(missing, data), capsys, tmp_path, missing, "not found")
    assert not missing.exists()


def test_folder_holding_a_run_is_not_overwritten(model_dir, data, capsys):
    (model_dir / "last.pth.tar").write_bytes(b"an earlier run's checkpoint")
    (model_dir / "status.json").write_text(json.dumps({"status": "failed", "epoch": 3}))
    assert_rejected(args(model_dir, data), capsys, model_dir,
                    model_dir, "already holds a run", "status 'failed'", "epoch 3", "--restore_file last")


def test_corrupt_checkpoint_to_restore(model_dir, data, capsys):
    (model_dir / "last.pth.tar").write_bytes(b"not a torch checkpoint")
    assert_rejected(args(model_dir, data, "--restore_file", "last"), capsys, model_dir,
                    model_dir / "last.pth.tar", "cannot load checkpoint")


def test_a_checkpoint_another_program_wrote_to_restore(model_dir, data, capsys):
    import torch

    torch.save({"state_dict": {}, "epoch": 3}, model_dir / "last.pth.tar")  # loads, but is not train.py's
    assert_rejected(args(model_dir, data, "--restore_file", "last"), capsys, model_dir,
                    model_dir / "last.pth.tar", "not a checkpoint written by train.py", "optimizer")


# ---------------------------------------------------------------- a real process: nothing reaches the terminal


def start_process(argv):
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
    return subprocess.Popen([sys.executable, "train.py", *[str(a) for a in argv]], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_subprocess_invalid_json_and_unreadable_image(tmp_path, data):
    """Two real runs of train.py: a broken params.json, and a data set with a garbage image."""
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "params.json").write_text('{"num_epochs": 1,}')
    good = tmp_path / "good"
    good.mkdir()
    write_params(good, {**TINY, "train_subset": 0})
    bad_image = data / "valid" / "2" / "garbage.png"
    bad_image.write_text("garbage, not pixels")

    cases = [(broken, [broken / "params.json", "invalid JSON at line 1, column 18"]),
             (good, [bad_image, "cannot read image"])]
    before = {folder: snapshot(folder) for folder, _ in cases}
    procs = [start_process(args(folder, data)) for folder, _ in cases]  # side by side: each imports torch
    for proc, (folder, needles) in zip(procs, cases):
        stdout, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 2, stderr
        assert "Traceback" not in stderr + stdout
        lines = stderr.strip().splitlines()
        assert len(lines) == 1, stderr
        assert lines[0].startswith("error: ")
        for needle in needles:
            assert str(needle) in lines[0]
        assert snapshot(folder) == before[folder]
