"""Shared fixtures: the real default data set (built once per session) and tiny, fast experiment folders."""

import json
import os
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
import model.tasks  # noqa: E402, F401  registers the tasks in core/tasks.py, as every script does

# small enough for seconds per run on 2 CPU cores, large enough to learn digits clearly above chance
FAST_PARAMS = {
    "arch": "small_cnn",
    "batch_size": 32,
    "bs_test": 128,
    "learning_rate": 0.005,
    "num_epochs": 2,
    "train_subset": 400,
    "valid_subset": 150,
    "cache_images": 1,
    "im_sz": 24,
    "save_summary_steps": 5,
}


# segmentation on small digit scenes: seconds per run, and test images larger than the training crops
SEG_PARAMS = {"task": "segmentation", "im_sz": 32, "batch_size": 16, "bs_test": 32, "learning_rate": 0.01, "ps": 0.0,
              "num_epochs": 2, "train_subset": 64, "valid_subset": 32, "cache_images": 1,
              "loss": {"ce": 0.5, "dice": 0.5}, "gallery_size": 4, "save_summary_steps": 5}


@pytest.fixture(scope="session")
def scenes_dir(tmp_path_factory):
    """The default segmentation set in small: 32-px scenes, 48-px test scenes (for sliding windows)."""
    from data.scenes import build_scenes

    return build_scenes(str(tmp_path_factory.mktemp("data") / "scenes"), size=32, test_size=48, counts=(96, 32, 16))


# keypoints on small one-digit scenes
KP_PARAMS = {"task": "keypoints", "im_sz": 32, "batch_size": 16, "bs_test": 32, "learning_rate": 0.01, "ps": 0.0,
             "num_epochs": 2, "train_subset": 64, "valid_subset": 32, "cache_images": 1, "gallery_size": 4,
             "save_summary_steps": 5}


@pytest.fixture(scope="session")
def points_dir(tmp_path_factory):
    """The default keypoint set in small: 32-px one-digit scenes with five named points each."""
    from data.points import build_points

    return build_points(str(tmp_path_factory.mktemp("data") / "points"), size=32, counts=(96, 32, 16))


# detection on small digit-box scenes
DET_PARAMS = {"task": "detection", "im_sz": 32, "batch_size": 16, "bs_test": 32, "learning_rate": 0.003, "ps": 0.0,
              "num_epochs": 2, "train_subset": 64, "valid_subset": 32, "cache_images": 1, "gallery_size": 4,
              "save_summary_steps": 5}


@pytest.fixture(scope="session")
def boxes_dir(tmp_path_factory):
    """The default detection set in small: 32-px scenes of 1-3 digits, COCO layout."""
    from data.boxes import build_boxes

    return build_boxes(str(tmp_path_factory.mktemp("data") / "boxes"), size=32, counts=(96, 32, 16))


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory):
    from data.digits import build_digits

    return build_digits(str(tmp_path_factory.mktemp("data") / "digits"))


TASK_RUNS = {"classification": (FAST_PARAMS, "digits_dir"), "segmentation": (SEG_PARAMS, "scenes_dir"),
             "detection": (DET_PARAMS, "boxes_dir"), "keypoints": (KP_PARAMS, "points_dir")}


# what a run writes on its way to a file's final name (utils.atomic_path, link_into_place, snapshot_code)
TEMP_NAME = re.compile(r"^\.tmp-|\.tmp-[\d-]+(-[0-9a-f]{8})?$|\.tmp$|\.link$")
ENDED = {"completed", "paused", "pruned", "interrupted", "diverged"}  # a process closed the folder itself


def temp_files_left(root):
    """Temp names inside every run folder under `root` that a run closed itself (status.json says how it ended; a
    folder whose process was killed keeps its temp files until a resume removes them)."""
    from utils import read_json_object

    left = []
    for folder, _, files in os.walk(root):
        if "status.json" in files and read_json_object(os.path.join(folder, "status.json")).get("status") in ENDED:
            left += [os.path.join(d, f) for d, _, names in os.walk(folder) for f in names if TEMP_NAME.search(f)]
    return sorted(set(left))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    """Every write is atomic, and leaves nothing behind: after each test, no run folder it finished under its
    tmp_path holds a temp file (every task, galleries, checks, several processes, a search's cells)."""
    result = yield
    if "tmp_path" in item.funcargs:
        assert temp_files_left(item.funcargs["tmp_path"]) == [], "temp files left in a finished run folder"
    return result


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, request):
    """trained_run(task) -> (folder, data_dir): one epoch on the task's small default data, trained once per
    session and shared: copy the folder before writing into it (predict.py's --out elsewhere is fine)."""
    done = {}

    def get(task):
        if task not in done:
            params, data_fixture = TASK_RUNS[task]
            data_dir = request.getfixturevalue(data_fixture)
            folder = tmp_path_factory.mktemp("trained") / task
            folder.mkdir()
            (folder / "params.json").write_text(json.dumps({**params, "num_epochs": 1}))
            assert run_train(str(folder), data_dir) == 0
            assert temp_files_left(folder) == []
            done[task] = (str(folder), data_dir)
        return done[task]

    return get


def experiment_maker(tmp_path, base, default_name="exp"):
    """make(name, **overrides) -> path of a new folder under tmp_path holding params.json: `base` + overrides."""

    def make(name=default_name, **overrides):
        folder = tmp_path / name
        folder.mkdir(parents=True)
        (folder / "params.json").write_text(json.dumps({**base, **overrides}, indent=2))
        return str(folder)

    return make


@pytest.fixture
def make_experiment(tmp_path):
    """make_experiment(name, **overrides) -> path of a folder holding params.json (FAST_PARAMS + overrides)."""
    return experiment_maker(tmp_path, FAST_PARAMS)


def read(path):
    return json.loads(Path(path).read_text())


def run_train(model_dir, data_dir, *extra):
    """train.py in this process (monkeypatches reach it); returns its exit code."""
    import train

    return train.main(["--model_dir", model_dir, "--data_dir", data_dir, *extra])


def train_cmd(model_dir, data_dir, *extra):
    return [sys.executable, "train.py", "--model_dir", model_dir, "--data_dir", data_dir, *extra]


def kill_mid_run_then_resume(whole, killed, data_dir, after_first_epoch_s=0.3, kills=1, every_batches=2, seed=0):
    """Train `whole` uninterrupted; train `killed` with checkpoints within epochs (checkpoint_every_batches:
    `every_batches`, a key that changes nothing a run computes), SIGKILL its process group `kills` times (the first
    as soon as it wrote a checkpoint within an epoch, the others a random moment up to `after_first_epoch_s` after
    one), and resume it each time with --restore_file last. Returns both last checkpoints."""
    import random
    import signal
    import subprocess
    import time

    from core.rundir.plotter import stamp
    from utils import load_checkpoint

    assert subprocess.run(train_cmd(whole, data_dir), cwd=ROOT, capture_output=True).returncode == 0
    params = read(os.path.join(killed, "params.json"))
    Path(killed, "params.json").write_text(json.dumps({**params, "checkpoint_every_batches": every_batches}))
    rng, last = random.Random(seed), os.path.join(killed, "last.pth.tar")
    for kill in range(kills):
        resume = ["--restore_file", "last"] if os.path.exists(last) else []
        proc = subprocess.Popen(train_cmd(killed, data_dir, *resume), cwd=ROOT, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        before, deadline = stamp(last), time.time() + 300
        while stamp(last) == before or read(os.path.join(killed, "status.json")).get("batch") is None:
            assert time.time() < deadline and proc.poll() is None, "no checkpoint within an epoch"
            time.sleep(0.005)
        time.sleep(rng.uniform(0, after_first_epoch_s) if kill else 0)  # the first resumes within an epoch
        os.killpg(proc.pid, signal.SIGKILL)  # the run and its helpers (figures, trackers, loader workers)
        proc.wait()
    resumed = subprocess.run(train_cmd(killed, data_dir, "--restore_file", "last"), cwd=ROOT, capture_output=True,
                             text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert ", after batch " in open(os.path.join(killed, "train.log")).read()  # resumed within an epoch
    return tuple(load_checkpoint(os.path.join(d, "last.pth.tar")) for d in (whole, killed))


def assert_same_weights(a, b, parts=("model", "ema")):
    """Two checkpoints hold the very same tensors in `parts` (state dicts, or any nesting of them)."""
    import torch

    def tensors(tree, at):
        if isinstance(tree, dict):
            return [t for k, v in tree.items() for t in tensors(v, f"{at}.{k}")]
        if isinstance(tree, (list, tuple)):
            return [t for i, v in enumerate(tree) for t in tensors(v, f"{at}.{i}")]
        return [(at, tree)] if torch.is_tensor(tree) else []

    for part in parts:
        left, right = tensors(a[part], part), tensors(b[part], part)
        assert [k for k, _ in left] == [k for k, _ in right], part
        for (name, x), (_, y) in zip(left, right):
            assert torch.equal(x, y), name


def copy_data(src, dst):
    """A copy of a built data set to corrupt, without its image cache."""
    import shutil

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".cache"))
    return dst


def loader_batches(data_dir, params_path, splits=("train", "valid")):
    """Every batch of the splits' loaders as train.py builds them, in order, and the class names."""
    from core.config import load_params
    from core.data.loaders import fetch_dataloader

    loaders, classes = fetch_dataloader(list(splits), str(data_dir), load_params(params_path))
    return classes, [b for split in splits for b in loaders[split]]


def assert_one_line_error(run, capsys, named, message, model_dir):
    """run() exits 2 with one stderr line starting 'error: <named>' and holding `message`; model_dir untouched."""
    from utils import run_cli

    with pytest.raises(SystemExit) as e:
        run_cli(run)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {named}") and message in err[0], err
    assert os.listdir(model_dir) == ["params.json"]


TEST_IMAGE = os.environ.get("TEST_IMAGE", "cs230-template:test")


def unavailable(reason, required_by="REQUIRE_CLUSTER_TESTS"):
    """Skip, saying why; fail instead where CI requires the test to run (REQUIRE_CLUSTER_TESTS=1)."""
    if os.environ.get(required_by) == "1":
        pytest.fail(f"{required_by}=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def image():
    """TEST_IMAGE built from this tree's Dockerfile by tests/container/build_image.sh (podman; cached layers make a
    rebuild after a code edit take seconds, so the tests never run stale code)."""
    import shutil
    import subprocess

    if shutil.which("podman") is None and os.geteuid() != 0:
        unavailable("podman is not installed and installing it needs root")
    script = ROOT / "tests" / "container" / "build_image.sh"
    proc = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=1800,
                          env=dict(os.environ, IMAGE=TEST_IMAGE))
    if proc.returncode != 0:
        unavailable(f"the test image did not build: {(proc.stderr or proc.stdout).strip()[-400:]}")
    return TEST_IMAGE


def mlflow_runs(store_folder):
    """{run name: (run, {metric key: [(step, value)]})} of every run in the sqlite store under `store_folder` (a
    search's or a run's `mlflow/`), read with MLflow's own client."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{os.path.join(store_folder, 'mlflow.db')}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = {}
    for run in client.search_runs(experiments):
        assert run.info.run_name not in runs, f"two runs named {run.info.run_name}"
        history = {k: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, k))
                   for k in run.data.metrics}
        runs[run.info.run_name] = (run, history)
    return runs


def assert_children_of_one_parent(store_folder, parent_name, cells):
    """The store holds the search's parent run and one FINISHED child run per cell, each with its params."""
    runs = mlflow_runs(store_folder)
    assert sorted(runs) == sorted([parent_name, *cells])
    parent = runs[parent_name][0]
    assert parent.info.status == "FINISHED" and "results.md" in parent_artifacts(store_folder, parent)
    for cell in cells:
        run, _ = runs[cell]
        assert run.info.status == "FINISHED", (cell, run.info.status)
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert "learning_rate" in run.data.params and run.data.tags["model_dir"].endswith(cell)
    return runs


def parent_artifacts(store_folder, run):
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{os.path.join(store_folder, 'mlflow.db')}")
    return [a.path for a in client.list_artifacts(run.info.run_id)]
