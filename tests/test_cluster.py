"""The Slurm (submitit) and Ray launchers against real engines started on this machine.

Slurm: tests/cluster/start_slurm.sh starts a one-node cluster (root, Debian's slurm-wlm and munge); Ray starts a
local instance. Where an engine cannot start, the tests skip and say why, unless REQUIRE_CLUSTER_TESTS=1 (CI), where
they fail instead.
"""

import glob
import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import torch

from conftest import (
    DET_PARAMS,
    FAST_PARAMS,
    KP_PARAMS,
    ROOT,
    SEG_PARAMS,
    assert_children_of_one_parent,
    read,
    unavailable,
)
from core.rundir.folder import read_status

pytestmark = pytest.mark.slow  # real Slurm and Ray
CELLS = ["learning_rate_0.002", "learning_rate_0.004"]


@pytest.fixture(scope="session")
def slurm():
    script = ROOT / "tests" / "cluster" / "start_slurm.sh"
    if shutil.which("sinfo") is None and os.geteuid() != 0:
        unavailable("Slurm is not installed and installing it needs root")
    proc = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        unavailable(f"Slurm did not start: {proc.stderr.strip()[-300:]}")
    try:
        import submitit  # noqa: F401
    except ImportError:
        unavailable("submitit is not installed (pip install -r requirements-cluster.txt)")


@pytest.fixture(scope="session")
def ray_installed():
    try:
        import ray  # noqa: F401
    except ImportError:
        unavailable("ray is not installed (pip install -r requirements-cluster.txt)")


def make_parent(tmp_path, num_epochs, **extra):
    parent = tmp_path / "search"
    parent.mkdir()
    params = {**FAST_PARAMS, "train_subset": 300, "valid_subset": 100, "num_epochs": num_epochs,
              "hyper_search": {"learning_rate": [0.002, 0.004]}, **extra}
    (parent / "params.json").write_text(json.dumps(params))
    return str(parent)


def search(parent, digits_dir, *flags, **kw):
    cmd = [sys.executable, "search_hyperparams.py", "--parent_dir", parent, "--data_dir", digits_dir, *flags]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, **kw)


def epochs(parent, cell):
    return [r["epoch"] for r in read(os.path.join(parent, cell, "history.json"))["epochs"]]


def release_requeued(job, timeout=120):
    """Slurm holds a requeued job (reason BeginTime) for ~2 minutes before it may start again; start it now.
    The hold is set only once the killed task has finished completing, so keep asking until the job runs."""
    deadline, held = time.time() + timeout, False
    while time.time() < deadline:
        state = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T %r"], capture_output=True, text=True).stdout
        if held and (state.startswith("RUNNING") or not state):
            return
        if "BeginTime" in state:
            held = True
            subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], capture_output=True)
        time.sleep(0.5)
    raise AssertionError(f"requeued job {job} did not start again")


def test_slurm_array_runs_both_cells_and_a_requeued_cell_resumes(slurm, tmp_path, digits_dir):
    """Requeued (Slurm stops the task: SIGTERM, then SIGKILL after KillWait), the cell checkpoints at its next
    batch, resumes from there in the requeued task and ends with the weights of an uninterrupted run."""
    parent = make_parent(tmp_path, num_epochs=5, loggers=["mlflow"], checkpoint_every_batches=3)
    cmd = [sys.executable, "search_hyperparams.py", "--parent_dir", parent, "--data_dir", digits_dir,
           "--launcher", "slurm", "--time_min", "10"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    first = os.path.join(parent, CELLS[0])
    deadline = time.time() + 300
    while read_status(first).get("epoch", 0) < 2 or read_status(first).get("status") != "running":
        assert time.time() < deadline and proc.poll() is None, "cell never reached epoch 2"
        time.sleep(0.1)
    job = read_status(first)["slurm_job_id"]
    subprocess.run(["scontrol", "requeue", job], check=True)
    release_requeued(job)
    out, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, out[-3000:]

    status = read_status(first)
    assert status["status"] == "completed" and status["restarts"] >= 1
    assert "resuming at epoch" in open(os.path.join(first, "train.log")).read()
    for cell in CELLS:
        assert epochs(parent, cell) == [1, 2, 3, 4, 5]  # all epochs, each exactly once
    assert os.path.isdir(os.path.join(parent, ".slurm")) and "results.md" in os.listdir(parent)
    runs = assert_children_of_one_parent(str(tmp_path / "mlflow"), "search", CELLS)
    assert [s for s, _ in runs[CELLS[0]][1]["val/loss"]] == [1, 2, 3, 4, 5]  # the requeued job reopened its run

    rerun = search(parent, digits_dir, "--launcher", "slurm")
    assert rerun.returncode == 0 and "0 of 2 cells to train" in rerun.stdout

    fresh = tmp_path / "fresh"  # the same cell never requeued, with the threads Slurm's task had (--cpus_per_cell)
    fresh.mkdir()
    (fresh / "params.json").write_text(open(os.path.join(first, "params.json")).read())
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    subprocess.run([sys.executable, "train.py", "--model_dir", str(fresh), "--data_dir", digits_dir], cwd=ROOT,
                   env=env, check=True, capture_output=True)
    a, b = (torch.load(os.path.join(d, "last.pth.tar"), weights_only=True)["model"] for d in (first, str(fresh)))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_slurm_search_of_four_cells_is_one_mlflow_parent_with_four_children(slurm, tmp_path, digits_dir):
    grid = {"learning_rate": [0.002, 0.004], "ps": [0.1, 0.3]}
    parent = make_parent(tmp_path, num_epochs=1, loggers=["mlflow", "wandb"], hyper_search=grid)
    proc = search(parent, digits_dir, "--launcher", "slurm", "--time_min", "10")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    cells = [f"learning_rate_{lr}__ps_{ps}" for lr in (0.002, 0.004) for ps in (0.1, 0.3)]
    assert_children_of_one_parent(str(tmp_path / "mlflow"), "search", cells)
    assert all(os.path.isdir(os.path.join(parent, c, "wandb")) for c in cells)


def test_slurm_no_wait_then_rerun_collects(slurm, tmp_path, digits_dir):
    parent = make_parent(tmp_path, num_epochs=1)
    dry = search(parent, digits_dir, "--launcher", "slurm", "--dry_run", "--cpus_per_cell", "1", "--mem_gb", "1")
    assert "one job array of 2 task(s)" in dry.stdout and os.listdir(parent) == ["params.json"]
    submitted = search(parent, digits_dir, "--launcher", "slurm", "--no_wait")
    assert submitted.returncode == 0 and "submitted Slurm array" in submitted.stdout
    # while the array is queued or running, a rerun must not submit the cells again
    assert "running elsewhere" in search(parent, digits_dir, "--launcher", "slurm", "--dry_run").stdout
    deadline = time.time() + 300
    while not all(read_status(os.path.join(parent, c)).get("status") == "completed" for c in CELLS):
        assert time.time() < deadline
        time.sleep(0.5)
    time.sleep(3)  # let the tasks leave the queue
    dry = search(parent, digits_dir, "--launcher", "slurm", "--dry_run")
    assert "2 skip (done)" in dry.stdout and "estimated compute" in dry.stdout


def test_slurm_trains_a_cell_on_two_processes(slurm, tmp_path, digits_dir):
    """A DDP cell (nproc 2): one Slurm job of two tasks (srun), each a rank, torch.distributed's environment set
    from Slurm's (submitit's TorchDistributedEnvironment)."""
    parent = tmp_path / "search"
    parent.mkdir()
    params = {**FAST_PARAMS, "arch": "small_cnn_gn", "train_subset": 256, "valid_subset": 100, "num_epochs": 2,
              "nproc": 2, "hyper_search": {"learning_rate": [0.004]}}
    (parent / "params.json").write_text(json.dumps(params))
    proc = search(str(parent), digits_dir, "--launcher", "slurm", "--cpus_per_cell", "1")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    cell = os.path.join(parent, "learning_rate_0.004")
    assert read_status(cell)["status"] == "completed" and epochs(str(parent), "learning_rate_0.004") == [1, 2]
    assert "on 2 processes on cpu" in open(os.path.join(cell, "train.log")).read()
    logs = sorted(os.path.basename(p) for p in glob.glob(os.path.join(parent, ".slurm", "*", "*_log.out")))
    assert [name.split("_")[-2] for name in logs] == ["0", "1"], logs  # one log per Slurm task: two tasks
    ckpt = torch.load(os.path.join(cell, "last.pth.tar"), weights_only=True)
    assert ckpt["world_size"] == 2


def test_bad_cluster_options_are_one_line_before_anything_is_written(slurm, ray_installed, tmp_path, digits_dir):
    parent = make_parent(tmp_path, num_epochs=1)
    for flags, line in [
        (["--launcher", "slurm", "--partition", "nope"], "--partition nope: not a partition of this cluster (debug)"),
        (["--launcher", "slurm", "--mem_gb", "0"], "--mem_gb 0.0: must be > 0"),
        (["--launcher", "ray", "--ray_address", "auto"], "--ray_address auto: no Ray cluster there (Could not find"),
    ]:
        proc = search(parent, digits_dir, *flags)
        err = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(err) == 1 and err[0].startswith(f"error: {line}"), proc.stderr
        assert os.listdir(parent) == ["params.json"]


def test_ray_runs_both_cells_and_rerun_skips(ray_installed, tmp_path, digits_dir):
    parent = make_parent(tmp_path, num_epochs=2, loggers=["mlflow"])
    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    proc = search(parent, digits_dir, "--launcher", "ray", "--cpus_per_cell", "1", env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    for cell in CELLS:
        assert read_status(os.path.join(parent, cell))["status"] == "completed"
        assert epochs(parent, cell) == [1, 2]
    assert_children_of_one_parent(str(tmp_path / "mlflow"), "search", CELLS)
    before = [os.path.getmtime(os.path.join(parent, c, "last.pth.tar")) for c in CELLS]
    again = search(parent, digits_dir, "--launcher", "ray", env=env)
    assert again.returncode == 0 and "0 of 2 cells to train" in again.stdout
    assert [os.path.getmtime(os.path.join(parent, c, "last.pth.tar")) for c in CELLS] == before


def test_missing_extra_gives_one_line(tmp_path, digits_dir):
    parent = make_parent(tmp_path, num_epochs=1)
    # a python that cannot import ray: hide it behind a module that fails to import
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "ray.py").write_text("raise ImportError('no ray here')\n")
    env = dict(os.environ, PYTHONPATH=str(fake))
    proc = search(parent, digits_dir, "--launcher", "ray", env=env)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: --launcher needs the 'ray' package: pip install -r requirements-cluster.txt"


def segmentation_parent(tmp_path):
    """A sampled search over a segmentation loss weight: each cell's folder is a segmentation run."""
    parent = tmp_path / "seg_search"
    parent.mkdir()
    hyper = {"method": "random", "n_samples": 2, "sample_seed": 1, "loss.dice": {"uniform": [0.0, 1.0]}}
    (parent / "params.json").write_text(json.dumps({**SEG_PARAMS, "num_epochs": 1, "hyper_search": hyper}))
    return str(parent)


def assert_segmentation_cells(parent):
    cells = [d for d in os.listdir(parent) if os.path.exists(os.path.join(parent, d, "history.json"))]
    assert len(cells) == 2
    for cell in cells:
        assert read_status(os.path.join(parent, cell))["status"] == "completed"
        assert "miou" in read(os.path.join(parent, cell, "metrics_val_best_weights.json"))
    assert "val_miou" in open(os.path.join(parent, "results.md")).read()


def test_slurm_runs_a_segmentation_search(slurm, tmp_path, scenes_dir):
    parent = segmentation_parent(tmp_path)
    proc = search(parent, scenes_dir, "--launcher", "slurm", "--time_min", "10")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert_segmentation_cells(parent)


def test_slurm_runs_each_cell_of_a_segmentation_search_in_its_own_container(slurm, image, tmp_path, scenes_dir):
    parent = segmentation_parent(tmp_path)
    proc = search(parent, scenes_dir, "--launcher", "slurm", "--time_min", "10", "--container", image)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert_segmentation_cells(parent)
    cells = [d for d in os.listdir(parent) if os.path.exists(os.path.join(parent, d, "record.json"))]
    assert {read(os.path.join(parent, c, "record.json"))["sessions"][0]["container"]["image"] for c in cells} == {image}
    assert os.path.getsize(os.path.join(parent, "history_plots.png")) > 5000


def test_ray_runs_a_segmentation_search(ray_installed, tmp_path, scenes_dir):
    parent = segmentation_parent(tmp_path)
    proc = search(parent, scenes_dir, "--launcher", "ray", "--cpus_per_cell", "1")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert_segmentation_cells(parent)


def keypoint_parent(tmp_path):
    """A grid over the keypoint loss, successive halving on: each cell's folder is a keypoint run."""
    parent = tmp_path / "kp_search"
    parent.mkdir()
    hyper = {"point_loss": ["l1", "mse"], "schedule": {"type": "asha", "min_epochs": 1, "reduction_factor": 2}}
    (parent / "params.json").write_text(json.dumps({**KP_PARAMS, "num_epochs": 2, "hyper_search": hyper}))
    return str(parent)


def assert_keypoint_cells(parent):
    """Successive halving in waves: wave 1 takes both cells to epoch 1, wave 2 promotes exactly the better one (the
    lower point error at the rung), resumed in place."""
    cells = sorted(d for d in os.listdir(parent) if d.startswith("point_loss"))
    assert len(cells) == 2
    history = {c: read(os.path.join(parent, c, "history.json"))["epochs"] for c in cells}
    best = min(cells, key=lambda c: (history[c][0]["val"]["point_error"], cells.index(c)))
    for c in cells:
        assert [r["epoch"] for r in history[c]] == ([1, 2] if c == best else [1])
        assert read_status(os.path.join(parent, c))["status"] == ("completed" if c == best else "pruned")
    assert "point_error" in read(os.path.join(parent, cells[0], "metrics_val_best_weights.json"))
    assert "val_point_error" in open(os.path.join(parent, "results.md")).read()


def test_slurm_runs_a_keypoint_search_with_successive_halving(slurm, tmp_path, points_dir):
    parent = keypoint_parent(tmp_path)
    proc = search(parent, points_dir, "--launcher", "slurm", "--time_min", "10")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert_keypoint_cells(parent)


def test_ray_runs_a_keypoint_search_with_successive_halving(ray_installed, tmp_path, points_dir):
    parent = keypoint_parent(tmp_path)
    proc = search(parent, points_dir, "--launcher", "ray", "--cpus_per_cell", "1")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert_keypoint_cells(parent)


def detection_parent(tmp_path):
    """A TPE search over the detector's learning rate: each cell's folder is a detection run."""
    parent = tmp_path / "det_search"
    parent.mkdir()
    hyper = {"method": "tpe", "n_samples": 2, "learning_rate": {"loguniform": [0.001, 0.01]}}
    (parent / "params.json").write_text(json.dumps({**DET_PARAMS, "num_epochs": 1, "hyper_search": hyper}))
    return str(parent)


def assert_detection_cells(parent):
    cells = [d for d in os.listdir(parent) if os.path.exists(os.path.join(parent, d, "history.json"))]
    assert len(cells) == 2
    for cell in cells:
        assert read_status(os.path.join(parent, cell))["status"] == "completed"
        assert "map_50" in read(os.path.join(parent, cell, "metrics_val_best_weights.json"))
    assert "val_map" in open(os.path.join(parent, "results.md")).read()


def test_slurm_runs_a_detection_tpe_search(slurm, tmp_path, boxes_dir):
    parent = detection_parent(tmp_path)
    proc = search(parent, boxes_dir, "--launcher", "slurm", "--time_min", "10")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert_detection_cells(parent)


def test_ray_runs_a_detection_tpe_search(ray_installed, tmp_path, boxes_dir):
    parent = detection_parent(tmp_path)
    proc = search(parent, boxes_dir, "--launcher", "ray", "--cpus_per_cell", "1")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert_detection_cells(parent)
