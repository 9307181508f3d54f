"""A container per cell (core/search/container.py), with real podman and the image built from this tree's Dockerfile
(tests/container/build_image.sh). Where podman cannot run, the container tests skip and say why, unless
REQUIRE_CLUSTER_TESTS=1 (CI), where they fail instead. The Slurm variant is in test_cluster.py."""

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from unittest.mock import patch

import pytest
import torch

from conftest import FAST_PARAMS, ROOT, assert_children_of_one_parent, read
from core.rundir.folder import read_status
from core.search.container import (
    POOL_GPUS,
    Container,
    container_name,
    container_prefix,
    find_container,
    run_command,
    visible_gpus,
)
from core.trackers.rows import HOST_MODEL_DIR
from utils import UserError

# a few seconds of training per container run (the image's imports cost ~3 s more)
SMALL = {**FAST_PARAMS, "train_subset": 160, "valid_subset": 64, "num_epochs": 2}
PODMAN = Container("podman", "img", "abc123")


def search(parent, data, *flags, **kw):
    cmd = [sys.executable, "search_hyperparams.py", "--parent_dir", parent, "--data_dir", data, *flags]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, **kw)


def make_parent(tmp_path, grid, **params):
    parent = tmp_path / "search"
    parent.mkdir()
    (parent / "params.json").write_text(json.dumps({**SMALL, **params, "hyper_search": grid}))
    return str(parent)


def epochs_of(cell):
    return [r["epoch"] for r in read(os.path.join(cell, "history.json"))["epochs"]]


def weights(folder):
    return torch.load(os.path.join(folder, "last.pth.tar"), map_location="cpu", weights_only=True)["model"]


def owners(folder):
    return {(os.stat(os.path.join(d, f)).st_uid, os.stat(os.path.join(d, f)).st_gid)
            for d, _, files in os.walk(folder) for f in files}


# ------------------------------------------------------------------ the command (no runtime needed)


def test_each_runtime_gets_the_cells_gpus_its_own_way(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(os, "getuid", lambda: 1000)
    monkeypatch.setattr(os, "getgid", lambda: 1000)
    env = {"CUDA_VISIBLE_DEVICES": "3", "OMP_NUM_THREADS": "4", "HOME": "/home/u"}

    def cmd(runtime, env=env):
        return run_command(Container(runtime, "img", "abc"), "/x/cell", "/d", {}, ["--restore_file", "last"], env)

    podman = cmd("podman")
    assert podman[podman.index("--device") + 1] == "nvidia.com/gpu=3" and "--userns=keep-id" in podman
    assert "-e" in podman and "OMP_NUM_THREADS=4" in podman and not any("HOME" in a for a in podman)
    assert podman[-3:] == ["img", "--restore_file", "last"] and "/x/cell:/cell:rw" in podman and "/d:/data:ro" in podman
    docker = cmd("docker", dict(env, CUDA_VISIBLE_DEVICES="0,2"))
    assert docker[docker.index("--gpus") + 1] == '"device=0,2"' and docker[docker.index("--user") + 1] == "1000:1000"
    apptainer = cmd("apptainer")
    assert "--nv" in apptainer and "APPTAINERENV_CUDA_VISIBLE_DEVICES=3" in apptainer and "--containall" in apptainer
    # in a Slurm job, podman gets the physical ids Slurm allocated, not the renumbered CUDA_VISIBLE_DEVICES
    slurm = cmd("podman", {"CUDA_VISIBLE_DEVICES": "0", "SLURM_JOB_GPUS": "5"})
    assert slurm[slurm.index("--device") + 1] == "nvidia.com/gpu=5"
    assert "--device" not in cmd("podman", {}) and "--gpus" not in cmd("docker", {})


def test_files_a_params_key_names_are_mounted_where_the_container_looks(tmp_path):
    params = {"init_weights_path": "experiments/base/best.pth.tar", "pretrained_path": str(tmp_path / "w.pth")}
    cmd = run_command(PODMAN, str(tmp_path / "c"), str(tmp_path), params, [], {})
    mounts = [cmd[i + 1] for i, a in enumerate(cmd) if a == "-v"]
    assert f"{ROOT}/experiments/base/best.pth.tar:/app/experiments/base/best.pth.tar:ro" in mounts
    assert f"{tmp_path}/w.pth:{tmp_path}/w.pth:ro" in mounts
    assert container_prefix("/a/b/lr 0.1;rm -rf") != container_prefix("/c/b/lr 0.1;rm -rf")
    assert container_name("/a/b/lr 0.1;rm -rf").startswith(container_prefix("/a/b/lr 0.1;rm -rf") + "-")
    assert container_prefix("/a/b/lr 0.1;rm -rf").startswith("cell-lr_0.1_rm_-rf-")


def test_each_run_of_a_cell_gets_a_container_name_of_its_own_and_replaces_none():
    """Two searches starting one cell at once: a shared name with podman's --replace removed the first's container,
    a training, before its train.py took the folder's lock. Each run's own name: the lock decides who trains."""
    for runtime in ("podman", "docker"):
        a, b = (run_command(Container(runtime, "img", "abc"), "/x/learning_rate_0.0001,0.001", "/d", {}, [], {})
                for _ in range(2))
        names = [cmd[cmd.index("--name") + 1] for cmd in (a, b)]
        assert names[0] != names[1] and "--replace" not in a + b
        for name in names:  # which cell it trains, readable in `podman ps`; a name podman and docker accept
            assert name.startswith(container_prefix("/x/learning_rate_0.0001,0.001") + "-")
            assert name.startswith("cell-learning_rate_0.0001_0.001-")
            assert re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*", name)


def test_apptainer_keeps_commas_in_mounted_paths_and_passed_values(tmp_path):
    """apptainer's --bind and --env split their values on commas, which older cell folders' names hold: each mount is
    a --mount CSV record with quoted fields (apptainer's documented form), each variable an APPTAINERENV_ one."""
    apptainer = Container("apptainer", "/img.sif", "1-2")
    folder, data = str(tmp_path / "search" / "learning_rate_0.0001,0.001"), str(tmp_path / "data,v2")
    env = {"CUDA_VISIBLE_DEVICES": "0,1", "OMP_NUM_THREADS": "2"}
    cmd = run_command(apptainer, folder, data, {}, ["--restore_file", "last"], env)
    assert "--bind" not in cmd and "--env" not in cmd and cmd[-3:] == ["/img.sif", "--restore_file", "last"]
    records = [next(csv.reader([cmd[i + 1]])) for i, a in enumerate(cmd) if a == "--mount"]
    mounts = {dict(f.split("=", 1) for f in r if "=" in f)["destination"]: r for r in records}
    assert set(mounts["/cell"]) == {"type=bind", f"source={folder}", "destination=/cell"}
    assert set(mounts["/data"]) == {"type=bind", f"source={data}", "destination=/data", "ro"}
    # env(1) puts them in apptainer's environment, whole: run it on a program that prints what it got
    start = cmd.index("apptainer")
    assert cmd[0] == "env" and cmd[start:start + 2] == ["apptainer", "run"]
    proc = subprocess.run(cmd[:start] + [sys.executable, "-c", "import os, json; print(json.dumps(dict(os.environ)))"],
                          capture_output=True, text=True, check=True, env={})
    got = json.loads(proc.stdout)
    assert got[f"APPTAINERENV_{HOST_MODEL_DIR}"] == folder and got["APPTAINERENV_CUDA_VISIBLE_DEVICES"] == "0,1"
    assert got["APPTAINERENV_OMP_NUM_THREADS"] == "2"
    for bad in ('data "v2"', "data\nv2"):  # beyond what a quoted CSV field holds plainly: refused, not mangled
        with pytest.raises(UserError, match=re.escape(repr(str(tmp_path / bad))[1:-1])):
            run_command(apptainer, folder, str(tmp_path / bad), {}, [], env)


def test_a_pool_inside_a_slurm_job_gives_each_container_the_one_gpu_it_chose():
    """The search in an salloc/sbatch job with GPUs 4 and 6 (SLURM_JOB_GPUS), its pool giving a cell GPU 1 of the two:
    that cell's container gets host GPU 6 only, not all the job's."""
    def cmd(runtime, env):
        return run_command(Container(runtime, "img", "abc"), "/x/cell", "/d", {}, [], env)

    pooled = {"SLURM_JOB_GPUS": "4,6", "CUDA_VISIBLE_DEVICES": "1", POOL_GPUS: "1"}
    podman = cmd("podman", pooled)
    assert [podman[i + 1] for i, a in enumerate(podman) if a == "--device"] == ["nvidia.com/gpu=6"]
    docker = cmd("docker", pooled)
    assert docker[docker.index("--gpus") + 1] == "device=6"
    # apptainer runs in the caller's cgroup and sees the GPUs as the caller does: the pool's own id, as a bare cell
    apptainer = cmd("apptainer", pooled)
    assert "--nv" in apptainer and "APPTAINERENV_CUDA_VISIBLE_DEVICES=1" in apptainer
    assert visible_gpus({"SLURM_JOB_GPUS": "4,6", POOL_GPUS: "1,0"}) == ["6", "4"]
    assert visible_gpus({POOL_GPUS: "1", "CUDA_VISIBLE_DEVICES": "1"}) == ["1"]  # no Slurm: the host's ids
    assert visible_gpus({"SLURM_JOB_GPUS": "4,6", "CUDA_VISIBLE_DEVICES": "0,1"}) == ["4", "6"]  # Slurm's own task
    with pytest.raises(UserError, match=f"{POOL_GPUS}=2.*SLURM_JOB_GPUS=4,6"):
        visible_gpus({"SLURM_JOB_GPUS": "4,6", POOL_GPUS: "2"})
    # Slurm's own task: podman gets the physical ids, apptainer the CUDA_VISIBLE_DEVICES Slurm set for its cgroup
    slurm = {"SLURM_JOB_GPUS": "5", "CUDA_VISIBLE_DEVICES": "0"}
    assert "APPTAINERENV_CUDA_VISIBLE_DEVICES=0" in cmd("apptainer", slurm)
    # the chain as the pool builds it (core/search/pool.py cell_env): a GPU slot, and a CPU cell that gets none
    from core.search.pool import cell_env

    with patch.dict(os.environ, {"SLURM_JOB_GPUS": "4,6", "CUDA_VISIBLE_DEVICES": "0,1"}):
        gpu, cpu = cell_env([1], pool=True), cell_env(None, threads=2, pool=True)
    assert visible_gpus(gpu) == ["6"] and visible_gpus(cpu) == []


def test_a_missing_runtime_or_image_is_a_one_line_error_before_anything_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(UserError, match="--container_runtime podman: not found on PATH"):
        find_container("img", "podman")
    with pytest.raises(UserError, match="--container_runtime apptainer: not found"):
        find_container("x.sif")
    parent = make_parent(tmp_path, {"learning_rate": [0.01, 0.02]})
    monkeypatch.undo()
    if subprocess.run(["which", "podman"], capture_output=True).returncode == 0:
        proc = search(parent, "/nonexistent", "--container", "no-such-image:1")
        assert proc.returncode == 2 and proc.stdout == ""
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: --container no-such-image:1: podman cannot use it")
        assert os.listdir(parent) == ["params.json"]


# ------------------------------------------------------------------ real containers


@pytest.mark.slow
def test_the_image_trains_a_cell_as_its_user_and_a_rerun_resumes_it(image, tmp_path, digits_dir, monkeypatch):
    """The image's entry point on a folder owned by a user who is not root: what it writes is theirs."""
    cell = tmp_path / "cell"
    cell.mkdir()
    (cell / "params.json").write_text(json.dumps(SMALL))
    os.chown(cell, 1234, 1234)
    os.chown(cell / "params.json", 1234, 1234)
    for d, _, _ in os.walk(digits_dir):  # readable by that user, as a shared data set is
        os.chmod(d, 0o755)
    ct = find_container(image)
    monkeypatch.setattr(os, "getuid", lambda: 1234)  # as user 1234 running rootful podman or docker would
    monkeypatch.setattr(os, "getgid", lambda: 1234)
    for extra in (["--stop_at_epoch", "1"], ["--restore_file", "last"]):
        cmd = run_command(ct, str(cell), digits_dir, SMALL, extra, {})
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
    assert epochs_of(cell) == [1, 2] and "resuming at epoch 2" in (cell / "train.log").read_text()
    assert read_status(cell)["status"] == "completed"
    assert owners(cell) == {(1234, 1234)}
    session = read(cell / "record.json")["sessions"][-1]
    assert session["container"] == {"runtime": "podman", "image": image, "id": ct.image_id, "digest": ct.digest}
    assert session["command"][1:] == ["/app/train.py", "--model_dir", "/cell", "--data_dir", "/data",
                                      "--restore_file", "last"]


@pytest.mark.slow
def test_a_cell_container_writes_only_its_folder_and_tmp(image, tmp_path, digits_dir):
    cell = tmp_path / "cell"
    cell.mkdir()
    cmd = run_command(find_container(image), str(cell), digits_dir, {}, [], {})
    probe = ("import os\nfor d in ('/cell', '/tmp', '/app', '/opt/venv', '/data', '/'):\n"
             "    try:\n        open(os.path.join(d, 'probe'), 'w').close(); print(d)\n"
             "    except OSError:\n        pass")
    cmd[cmd.index(image):] = ["--entrypoint", "python", image, "-c", probe]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["/cell", "/tmp"] and os.listdir(cell) == ["probe"]


def cell_containers(cell, *flags):
    """The names of the cell's containers podman knows of (-a: stopped ones too)."""
    names = subprocess.run(["podman", "ps", *flags, "--format", "{{.Names}}", "--filter",
                            f"name={container_prefix(cell)}"], capture_output=True, text=True, check=True).stdout
    return [n for n in names.split() if n.startswith(container_prefix(cell))]


@pytest.mark.slow
def test_a_second_run_of_a_cell_leaves_the_first_container_running(image, tmp_path):
    """What a second search starting the same cell does before its train.py finds the folder locked: with a shared
    name and --replace, it removed the first container, which trained. Here the first is `sleep` in the image."""
    cell, data = tmp_path / "learning_rate_0.01", tmp_path / "data"
    cell.mkdir()
    data.mkdir()
    ct = find_container(image)

    def sleeper(seconds):
        cmd = run_command(ct, str(cell), str(data), {}, [], {})
        cmd[cmd.index(image):] = ["--entrypoint", "sleep", image, str(seconds)]
        return cmd

    first, second = sleeper(60), sleeper(0)
    proc = subprocess.Popen(first, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 20
        while cell_containers(cell) == [] and time.time() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert cell_containers(cell) == [first[first.index("--name") + 1]]
        again = subprocess.run(second, capture_output=True, text=True, timeout=60)
        assert again.returncode == 0, again.stderr
        assert proc.poll() is None and cell_containers(cell) == [first[first.index("--name") + 1]]
    finally:
        names = {first[first.index("--name") + 1], second[second.index("--name") + 1], *cell_containers(cell, "-a")}
        subprocess.run(["podman", "rm", "-f", "-t", "0", "--ignore", *names], capture_output=True)
        proc.kill()
        proc.wait()


@pytest.mark.slow
def test_container_search_trains_every_cell_then_rerun_skips(image, tmp_path, digits_dir):
    parent = make_parent(tmp_path, {"learning_rate": [0.005, 0.01]}, loggers=["mlflow"])
    dry = search(parent, digits_dir, "--container", image, "--dry_run")
    assert dry.returncode == 0 and "podman run --rm" in dry.stdout and os.listdir(parent) == ["params.json"]
    proc = search(parent, digits_dir, "--container", image, "--workers", "2")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    image_id = find_container(image).image_id
    for name in ("learning_rate_0.005", "learning_rate_0.01"):
        cell = os.path.join(parent, name)
        assert read_status(cell)["status"] == "completed" and epochs_of(cell) == [1, 2]
        assert read(os.path.join(cell, "record.json"))["sessions"][0]["container"]["id"] == image_id
        assert owners(cell) == {(os.getuid(), os.getgid())}
    results = open(os.path.join(parent, "results.md")).read()
    assert f"image {image_id[:12]}" in results
    assert os.path.getsize(os.path.join(parent, "history_plots.png")) > 5000
    # the sqlite store, mounted into each container at its own path: one parent, a child per cell, named by the
    # folders as the host has them
    runs = assert_children_of_one_parent(str(tmp_path / "mlflow"), "search", ["learning_rate_0.005",
                                                                               "learning_rate_0.01"])
    assert runs["learning_rate_0.01"][0].data.tags["model_dir"] == os.path.join(parent, "learning_rate_0.01")
    again = search(parent, digits_dir, "--container", image)
    assert again.returncode == 0 and "0 of 2 cells to train" in again.stdout
    printed = search(parent, digits_dir, "--container", image, "--print_commands", "--retry_failed").stdout
    assert printed == ""  # nothing left to run


@pytest.mark.slow
def test_successive_halving_promotes_a_paused_cell_into_a_new_container_bit_identically(image, tmp_path, digits_dir):
    schedule = {"type": "asha", "min_epochs": 1, "reduction_factor": 2}
    parent = make_parent(tmp_path, {"learning_rate": [0.002, 0.01], "schedule": schedule})
    proc = search(parent, digits_dir, "--container", image, "--workers", "2")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    statuses = {n: read_status(os.path.join(parent, n))["status"] for n in ("learning_rate_0.002",
                                                                              "learning_rate_0.01")}
    assert sorted(statuses.values()) == ["completed", "pruned"]
    promoted = os.path.join(parent, next(n for n, s in statuses.items() if s == "completed"))
    assert "paused at epoch 1" in open(os.path.join(promoted, "train.log")).read()
    assert len(read(os.path.join(promoted, "record.json"))["sessions"]) == 2  # two containers

    fresh = tmp_path / "fresh"  # the same cell never paused, trained here with the threads the cells had
    fresh.mkdir()
    (fresh / "params.json").write_text(open(os.path.join(promoted, "params.json")).read())
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    subprocess.run([sys.executable, "train.py", "--model_dir", str(fresh), "--data_dir", digits_dir], cwd=ROOT,
                   env=env, check=True, capture_output=True)
    a, b = weights(promoted), weights(fresh)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def start_search(parent, data, image, **kw):
    cmd = [sys.executable, "search_hyperparams.py", "--parent_dir", parent, "--data_dir", data, "--container", image]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def wait_for_epoch(cell, epoch, proc):
    deadline = time.time() + 300
    while read_status(cell).get("epoch", 0) < epoch:
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.05)


@pytest.mark.slow
def test_ctrl_c_a_killed_search_and_podman_kill_mid_cell_and_each_rerun_resumes_it(image, tmp_path, digits_dir):
    parent = make_parent(tmp_path, {"learning_rate": [0.01]}, num_epochs=5, train_subset=400)
    cell = os.path.join(parent, "learning_rate_0.01")
    # Ctrl-C on the search: the runtime passes it on, train.py records 'interrupted', the container is removed
    proc = start_search(parent, digits_dir, image, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    wait_for_epoch(cell, 1, proc)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130 and read_status(cell)["status"] == "interrupted", out
    assert cell_containers(cell, "-a") == []
    # the search SIGKILLed: its runtime client gets SIGTERM (PDEATHSIG) and passes it on, so again 'interrupted'
    proc = start_search(parent, digits_dir, image)
    wait_for_epoch(cell, read_status(cell)["epoch"] + 1, proc)
    proc.kill()
    proc.wait()
    deadline = time.time() + 60
    while read_status(cell)["status"] == "running" and time.time() < deadline:
        time.sleep(0.1)
    assert read_status(cell)["status"] == "interrupted" and read_status(cell)["reason"] == "SIGTERM"
    # the rerun resumes it; killed from outside, it is failed, and --retry_failed resumes it again
    proc = start_search(parent, digits_dir, image)
    wait_for_epoch(cell, read_status(cell)["epoch"] + 1, proc)
    subprocess.run(["podman", "kill", *cell_containers(cell)], check=True, capture_output=True)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 1, out
    status = read_status(cell)
    assert status["status"] == "failed" and status["exit_code"] == 137 and "killed (SIGKILL" in status["reason"]
    assert "skip (failed; --retry_failed)" in search(parent, digits_dir, "--container", image, "--dry_run").stdout

    rerun = search(parent, digits_dir, "--container", image, "--retry_failed")
    assert rerun.returncode == 0, rerun.stdout[-2000:]
    assert read_status(cell)["status"] == "completed"
    assert open(f"{cell}/train.log").read().count("resuming at epoch") == 3
    assert epochs_of(cell) == [1, 2, 3, 4, 5]  # every epoch exactly once
