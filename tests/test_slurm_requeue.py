"""A cell whose Slurm job was requeued (preemption, `scontrol requeue`: its train.py stopped on SIGTERM and wrote
status 'interrupted', the job is back in the queue) belongs to that job until it leaves the queue: a rerun of the
search, --no_wait or waiting, must not submit the cell a second time (two jobs would then train one folder)."""

import os
import subprocess
import sys
import time

import pytest
from test_cluster import CELLS, epochs, make_parent, search, slurm  # noqa: F401  slurm: the fixture, used below

from conftest import ROOT
from core.rundir.folder import read_status

pytestmark = pytest.mark.slow  # real Slurm
CELL, OTHER = CELLS  # two cells: one job array, task ids such as 123_0
EPOCHS = 8  # about a second each: time to requeue the cell halfway


def wait_until(predicate, what, timeout=180):
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, f"timed out waiting until {what}"
        time.sleep(0.3)


def job_state(job):
    """squeue's '%T %r' for a job ('PENDING JobHeldAdmin', 'RUNNING None', ...); '' once it has left the queue."""
    out = subprocess.run(["squeue", "-h", "-r", "-j", job, "-o", "%T %r"], capture_output=True, text=True).stdout
    return out.strip()


def jobs_of(parent):
    """The ids of the queued or running jobs whose submission script lies in this search's folder (its .slurm/):
    this test's jobs only, whatever else the cluster runs."""
    out = subprocess.run(["squeue", "-h", "-r", "-o", "%i %o"], capture_output=True, text=True).stdout
    return sorted(line.split()[0] for line in out.splitlines() if parent in line)


def release(job, timeout=120):
    """Let the held, requeued job run now: release its hold and clear the begin time Slurm gives a requeued job."""
    subprocess.run(["scontrol", "release", job], capture_output=True)
    deadline = time.time() + timeout
    while (state := job_state(job)).startswith("PENDING"):
        assert time.time() < deadline, f"requeued job {job} did not start again ({state})"
        if "BeginTime" in state:
            subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], capture_output=True)
        time.sleep(0.5)


@pytest.mark.usefixtures("slurm")
def test_a_requeued_cell_whose_job_is_still_queued_is_not_submitted_again(tmp_path, digits_dir):
    parent = make_parent(tmp_path, num_epochs=EPOCHS)
    cell, other = os.path.join(parent, CELL), os.path.join(parent, OTHER)
    submitted = search(parent, digits_dir, "--launcher", "slurm", "--no_wait")
    assert submitted.returncode == 0 and "submitted Slurm array" in submitted.stdout, submitted.stderr[-2000:]
    try:
        job, other_job = read_status(cell)["slurm_job_id"], read_status(other)["slurm_job_id"]
        assert job.endswith("_0") and other_job.endswith("_1")
        wait_until(lambda: read_status(cell).get("status") == "running" and read_status(cell).get("epoch", 0) >= 1,
                   "the cell runs with a checkpoint")
        # requeued as a preemption would (SIGTERM to train.py, the job back in the queue), and held there (pending,
        # priority 0) until the end of the test, so that the reruns below happen while it is queued
        subprocess.run(["scontrol", "requeuehold", job], check=True, capture_output=True)
        wait_until(lambda: read_status(cell).get("status") == "interrupted", "train.py records 'interrupted'")
        wait_until(lambda: job_state(job).startswith("PENDING"), "the requeued job is pending")
        status = read_status(cell)
        assert status["slurm_job_id"] == job and 1 <= status["epoch"] < EPOCHS

        dry = search(parent, digits_dir, "--launcher", "slurm", "--dry_run")
        again = search(parent, digits_dir, "--launcher", "slurm", "--no_wait")
        assert again.returncode == 0, again.stderr[-2000:]
        assert "submitted Slurm array" not in again.stdout, again.stdout
        assert set(jobs_of(parent)) <= {job, other_job} and job_state(job).startswith("PENDING")  # no new job
        assert f"{CELL} | skip (running elsewhere)" in dry.stdout, dry.stdout
        assert f"{CELL}: skip (running elsewhere)" in again.stderr and "0 of 2 cells to train" in again.stdout

        # a waiting rerun skips it too, and returns at once rather than waiting on a job that is not its own
        cmd = [sys.executable, "search_hyperparams.py", "--parent_dir", parent, "--data_dir", digits_dir,
               "--launcher", "slurm"]
        waiting = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=90)
        assert waiting.returncode == 0 and "submitted Slurm array" not in waiting.stdout, waiting.stdout
        assert f"{CELL}: skip (running elsewhere)" in waiting.stderr
        assert set(jobs_of(parent)) <= {job, other_job} and read_status(cell)["status"] == "interrupted"

        release(job)
        wait_until(lambda: read_status(cell).get("status") == "completed", "the requeued job completes the cell")
    finally:
        for leftover in jobs_of(parent):
            subprocess.run(["scancel", leftover], capture_output=True)
    status = read_status(cell)
    assert status["slurm_job_id"] == job and status["restarts"] >= 1
    for name in CELLS:
        assert epochs(parent, name) == list(range(1, EPOCHS + 1))  # every epoch, each trained once
    assert read_status(other)["status"] == "completed" and read_status(other)["slurm_job_id"] == other_job
    assert "resuming at epoch" in open(os.path.join(cell, "train.log")).read()
    wait_until(lambda: not jobs_of(parent), "the jobs leave the queue", timeout=60)
    done = search(parent, digits_dir, "--launcher", "slurm", "--dry_run")
    assert "2 cells: 2 skip (done)" in done.stdout, done.stdout
