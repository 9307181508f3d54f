"""Successive halving: rung decisions on hand-made folders, then real searches (promotion, pause/resume identity,
SIGKILL mid-rung, a failed cell), and bad schedules."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from test_search import TINY, make_parent, mtimes, search

from conftest import FAST_PARAMS, ROOT, mlflow_runs, read
from core.rundir.folder import read_status
from core.search.asha import Asha, Schedule
from core.search.pool import Cell

ASHA = {"type": "asha", "min_epochs": 1, "reduction_factor": 2}
LRS = [0.0005, 0.002, 0.005, 0.01]


def fake_cell(parent, name, status="", epochs=0, values=()):
    folder = os.path.join(parent, name)
    os.makedirs(folder)
    if status:
        json.dump({"status": status, "epoch": epochs}, open(os.path.join(folder, "status.json"), "w"))
    rows = [{"epoch": e, "val": {"accuracy": v}} for e, v in enumerate(values, 1)]
    json.dump({"epochs": rows}, open(os.path.join(folder, "history.json"), "w"))
    return Cell(name, folder, {"num_epochs": 9})


def test_decisions_finish_half_done_rungs_then_promote_then_start_new_cells(tmp_path):
    p = str(tmp_path)
    cells = [fake_cell(p, "killed", "running", 2, [0.95, 0.96]),  # killed on its way to rung 3
             fake_cell(p, "b", "paused", 1, [0.9]), fake_cell(p, "c", "paused", 1, [0.5]),
             fake_cell(p, "d", "paused", 1, [0.4]), fake_cell(p, "new"),
             fake_cell(p, "done", "completed", 9, [0.3] * 9), fake_cell(p, "failed", "failed", 1, [0.99])]
    asha = Asha(cells, Schedule(1, 3, "accuracy", "max", 9))
    assert asha.rungs == [1, 3, 9]
    job = asha.next_job(busy=set())
    assert (job.name, job.stop_at) == ("killed", 3)  # nothing it trained is thrown away
    # at rung 1: killed 0.95, b 0.9, c, d, done (failed cells do not count): top 5 // 3 = 1 is 'killed', not paused
    job = asha.next_job(busy={"killed"})
    assert (job.name, job.stop_at) == ("new", 1)
    assert asha.next_job(busy={"killed", "new"}) is None  # wait for results rather than promote blindly
    cells.append(fake_cell(p, "e", "paused", 1, [0.2]))
    asha = Asha(cells, Schedule(1, 3, "accuracy", "max", 9))
    job = asha.next_job(busy={"killed", "new"})
    assert (job.name, job.stop_at) == ("b", 3)  # 6 reported at rung 1: the top 2 go on
    asha.prune_rest()
    assert read_status(cells[2].folder)["status"] == "pruned" and read_status(cells[0].folder)["status"] == "running"


def test_promote_n_trains_the_best_cells_to_the_end(tmp_path):
    p = str(tmp_path)
    cells = [fake_cell(p, n, "pruned", 1, [v]) for n, v in (("a", 0.1), ("b", 0.8), ("c", 0.7))]
    asha = Asha(cells, Schedule(1, 3, "accuracy", "max", 9), promote=2)
    first = asha.next_job(set())
    second = asha.next_job({first.name})
    assert [(j.name, j.stop_at) for j in (first, second)] == [("b", 9), ("c", 9)]


def test_a_search_over_data_sets_promotes_within_each_set(tmp_path):
    # metrics on different validation sets do not compare: the easy set's cells must not take every place
    p, values = str(tmp_path), (("a", "data/easy", 0.99), ("b", "data/easy", 0.98), ("c", "data/hard", 0.6),
                                ("d", "data/hard", 0.5))
    cells = [fake_cell(p, n, "paused", 1, [v]) for n, _, v in values]
    for cell, (_, data, _) in zip(cells, values):
        cell.params["data_dir"] = data
    asha = Asha(cells, Schedule(1, 2, "accuracy", "max", 9))
    first = asha.next_job(set())
    second = asha.next_job({first.name})
    assert [(j.name, j.stop_at) for j in (first, second)] == [("a", 2), ("c", 2)]  # not a and b
    asha = Asha(cells, Schedule(1, 2, "accuracy", "max", 9), promote=1)
    first = asha.next_job(set())
    assert [first.name, asha.next_job({first.name}).name] == ["a", "c"]
    # eta 3: two cells a set, no top third anywhere; the last resort finishes the best of each set, not 'a' twice
    asha = Asha(cells, Schedule(1, 3, "accuracy", "max", 9))
    assert (asha.next_job(set()).name, asha.next_job(set()).name) == ("a", "a")  # nothing ran yet: a first
    for cell, epochs in ((cells[0], 3), (cells[0], 9)):  # a goes on to the end
        json.dump({"status": "paused" if epochs < 9 else "completed", "epoch": epochs},
                  open(os.path.join(cell.folder, "status.json"), "w"))
    asha = Asha(cells, Schedule(1, 3, "accuracy", "max", 9))
    job = asha.next_job(set())
    assert (job.name, job.stop_at) == ("c", 3)


def scheduled_parent(tmp_path, lrs=LRS, schedule=ASHA, **extra):
    return make_parent(tmp_path, {"learning_rate": lrs, "schedule": schedule}, **{"num_epochs": 3, **extra})


def epochs_of(cell):
    return [r["epoch"] for r in read(os.path.join(cell, "history.json"))["epochs"]]


def model_weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


@pytest.mark.slow
def test_asha_promotes_the_best_cells_in_place_and_a_rerun_retrains_nothing(tmp_path, digits_dir):
    parent = scheduled_parent(tmp_path, loggers=["mlflow"])
    proc = search(parent, digits_dir, "--workers", "2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    cells = {lr: os.path.join(parent, f"learning_rate_{lr}") for lr in LRS}
    at_rung = {lr: read(os.path.join(c, "history.json"))["epochs"][0]["val"]["accuracy"] for lr, c in cells.items()}
    status = {lr: read_status(c)["status"] for lr, c in cells.items()}
    best_two = sorted(LRS, key=lambda lr: (-at_rung[lr], LRS.index(lr)))[:2]
    assert all(status[lr] == "completed" and epochs_of(cells[lr]) == [1, 2, 3] for lr in best_two)
    for lr in LRS:  # the others were paused at rung 1 and left there
        assert status[lr] == "completed" or (status[lr] == "pruned" and epochs_of(cells[lr]) == [1])
    assert "pruned" in status.values() and "budget:" in proc.stdout
    runs = mlflow_runs(str(tmp_path / "mlflow"))  # a cell paused at a rung, then promoted, is one run
    for lr in LRS:
        run, metrics = runs[f"learning_rate_{lr}"]
        assert run.info.status == ("FINISHED" if status[lr] == "completed" else "KILLED")
        assert [s for s, _ in metrics["val/loss"]] == epochs_of(cells[lr])
    header = open(os.path.join(parent, "results.md")).readline()
    assert "| epochs " in header and "| rung " in header
    assert os.path.getsize(os.path.join(parent, "rungs.png")) > 5000

    promoted = cells[best_two[0]]  # paused at epoch 1, resumed in place: the run that never paused
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "params.json").write_text(open(os.path.join(promoted, "params.json")).read())
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")  # the thread count the cells ran with
    subprocess.run([sys.executable, "train.py", "--model_dir", str(fresh), "--data_dir", digits_dir], cwd=ROOT,
                   env=env, check=True, capture_output=True)
    a, b = model_weights(os.path.join(promoted, "last.pth.tar")), model_weights(fresh / "last.pth.tar")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert "paused at epoch 1" in open(os.path.join(promoted, "train.log")).read()

    before = mtimes(parent)
    again = search(parent, digits_dir, "--workers", "2")
    assert again.returncode == 0 and mtimes(parent) == before
    dry = search(parent, digits_dir, "--dry_run").stdout
    assert "pruned at epoch 1" in dry and "rungs at epochs 1, 3" in dry

    finish = search(parent, digits_dir, "--workers", "2", "--promote", "4")
    assert finish.returncode == 0
    assert all(read_status(c)["status"] == "completed" and epochs_of(c) == [1, 2, 3] for c in cells.values())


@pytest.mark.slow
def test_sigkill_mid_rung_then_rerun_loses_and_retrains_nothing(tmp_path, digits_dir):
    parent = scheduled_parent(tmp_path, lrs=[0.002, 0.005, 0.01], num_epochs=4,
                              schedule={**ASHA, "min_epochs": 2})
    cmd = [sys.executable, "search_hyperparams.py", "--parent_dir", parent, "--data_dir", digits_dir]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = os.path.join(parent, "learning_rate_0.002")
    deadline = time.time() + 240
    while read_status(first).get("epoch", 0) < 1:  # epoch 1 committed, rung 2 not reached
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(1)  # the cell dies with the search (PDEATHSIG)
    assert read_status(first)["status"] == "running"

    rerun = search(parent, digits_dir)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "resuming at epoch 2" in open(os.path.join(first, "train.log")).read()
    statuses = []
    for name in ("learning_rate_0.002", "learning_rate_0.005", "learning_rate_0.01"):
        cell = os.path.join(parent, name)
        trained = epochs_of(cell)
        assert trained in ([1, 2], [1, 2, 3, 4])
        log = open(os.path.join(cell, "train.log")).read()
        assert all(log.count(f"epoch {e}/4  train:") == 1 for e in trained)  # every epoch exactly once
        statuses.append(read_status(cell)["status"])
    assert "completed" in statuses and set(statuses) <= {"completed", "pruned"}


@pytest.mark.slow
def test_a_failed_cell_inside_a_rung_leaves_the_others_to_the_schedule(tmp_path, digits_dir):
    parent = make_parent(tmp_path, [{"learning_rate": [0.002, 0.005], "schedule": ASHA}, {"arch": ["resnet_nope"]}],
                         num_epochs=2)
    proc = search(parent, digits_dir, "--workers", "2")
    assert proc.returncode == 1
    assert read_status(os.path.join(parent, "arch_resnet_nope"))["status"] == "failed"
    statuses = sorted(read_status(os.path.join(parent, f"learning_rate_{lr}"))["status"] for lr in (0.002, 0.005))
    assert statuses == ["completed", "pruned"]  # of the 2 that reported at rung 1, the top half went on
    assert "skip (failed" in search(parent, digits_dir, "--dry_run").stdout


@pytest.mark.parametrize("schedule, message", [
    ({**ASHA, "min_epochs": 5}, "'min_epochs' 5 is more than num_epochs 3"),
    ({**ASHA, "type": "hyperband"}, "unknown type \"hyperband\""),
    ({**ASHA, "reduction_factor": 1}, "'reduction_factor' must be an integer >= 2"),
    ({**ASHA, "metric": "loss", "mode": "max"}, "'mode' max contradicts metric 'loss'"),
    ({**ASHA, "metric": "acc"}, "unknown metric \"acc\""),
    ({**ASHA, "rungs": [1, 2]}, "unknown key 'rungs'"),
])
def test_bad_schedules_are_one_line_errors_with_nothing_written(tmp_path, digits_dir, schedule, message):
    parent = scheduled_parent(tmp_path, schedule=schedule)
    proc = search(parent, digits_dir)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and os.listdir(parent) == ["params.json"]


def test_schedule_needs_one_num_epochs_and_promote_needs_a_schedule(tmp_path, digits_dir):
    varied = make_parent(tmp_path, {"num_epochs": [2, 3], "schedule": ASHA})
    assert "the same num_epochs" in search(varied, digits_dir).stderr
    plain = os.path.join(str(tmp_path), "plain")
    os.makedirs(plain)
    json.dump({**TINY, "hyper_search": {"ps": [0.1]}}, open(os.path.join(plain, "params.json"), "w"))
    proc = search(plain, digits_dir, "--promote", "2")
    assert proc.returncode == 2 and "--promote" in proc.stderr and os.listdir(plain) == ["params.json"]


def test_stop_at_epoch_pauses_and_a_resume_goes_on(make_experiment, digits_dir):
    from conftest import run_train

    folder = make_experiment(num_epochs=2)
    assert run_train(folder, digits_dir, "--stop_at_epoch", "1") == 0
    assert read_status(folder)["status"] == "paused" and epochs_of(folder) == [1]
    assert run_train(folder, digits_dir, "--restore_file", "last", "--stop_at_epoch", "1") == 0  # nothing to do
    assert epochs_of(folder) == [1]

    from core.rundir.folder import Status, folder_lock, write_status

    # promoted: a process resumes it past the rung; the old rung's command, run again meanwhile, leaves it alone
    write_status(folder, Status.RUNNING, epoch=1)
    with folder_lock(folder):
        assert run_train(folder, digits_dir, "--restore_file", "last", "--stop_at_epoch", "1") == 0
    assert read_status(folder)["status"] == "running"
    assert run_train(folder, digits_dir, "--restore_file", "last") == 0
    assert read_status(folder)["status"] == "completed" and epochs_of(folder) == [1, 2]
    assert FAST_PARAMS["num_epochs"] == 2


def test_a_cell_locked_by_another_process_is_skipped_not_offered_forever(tmp_path):
    from core.rundir.folder import folder_lock
    from core.search.pool import run_pool

    cell = fake_cell(str(tmp_path), "busy_elsewhere")
    asha = Asha([cell], Schedule(1, 3, "accuracy", "max", 9))
    with folder_lock(cell.folder):  # a hand-run train.py holds it
        assert run_pool(asha, str(tmp_path), workers=1, gpus=[], fail_fast=False, warm=False) == 0
    assert cell.result == "locked"


def test_retry_failed_retries_each_failed_cell_once_from_its_last_rung(tmp_path):
    p = str(tmp_path)
    cells = [fake_cell(p, "after_rung", "failed", 1, [0.5]), fake_cell(p, "at_start", "diverged", 0, [])]
    asha = Asha(cells, Schedule(1, 3, "accuracy", "max", 9), retry_failed=True)
    first = asha.next_job(set())
    assert (first.name, first.stop_at) == ("after_rung", 3)  # failed after rung 1: on to rung 3, not from scratch
    second = asha.next_job({"after_rung"})
    assert (second.name, second.stop_at) == ("at_start", 1)
    assert asha.next_job({"after_rung", "at_start"}) is None
    asha.refresh(first)  # it failed again: not offered a second time
    asha.refresh(second)
    assert asha.next_job(set()) is None


def test_a_small_rung_still_promotes_its_best_once_nothing_else_runs(tmp_path):
    p = str(tmp_path)
    cells = [fake_cell(p, "a", "paused", 1, [0.4]), fake_cell(p, "b", "paused", 1, [0.7])]  # 2 < reduction_factor 3
    asha = Asha(cells, Schedule(1, 3, "accuracy", "max", 9))
    assert asha.next_job({"a"}) is None  # something runs: wait for it
    job = asha.next_job(set())
    assert (job.name, job.stop_at) == ("b", 3)


def test_prune_leaves_a_cell_trained_elsewhere_alone(tmp_path):
    from core.rundir.folder import folder_lock

    p = str(tmp_path)
    cells = [fake_cell(p, "mine", "paused", 1, [0.4]), fake_cell(p, "theirs", "paused", 1, [0.7])]
    asha = Asha(cells, Schedule(1, 3, "accuracy", "max", 9))
    with folder_lock(cells[1].folder):
        asha.prune_rest()
    assert read_status(cells[0].folder)["status"] == "pruned" and read_status(cells[1].folder)["status"] == "paused"


def test_a_cell_interrupted_while_starting_stays_resumable(tmp_path):
    from core.search.pool import collect

    cell = fake_cell(str(tmp_path), "promoted", "paused", 1, [0.5])  # Ctrl-C before train.py wrote 'running'
    assert collect(cell, 130) == "interrupted" and read_status(cell.folder)["status"] == "interrupted"


def test_an_ended_cell_is_read_not_rewritten_when_another_process_holds_it_or_it_completed(tmp_path):
    from core.rundir.folder import folder_lock
    from core.search.pool import collect

    theirs = fake_cell(str(tmp_path), "theirs", "running", 1, [0.5])  # a second search trains it meanwhile
    with folder_lock(theirs.folder):
        assert collect(theirs, 1) == "locked"
    assert read_status(theirs.folder)["status"] == "running"
    done = fake_cell(str(tmp_path), "done", "completed", 2, [0.5, 0.6])  # its command crashed after the last epoch
    assert collect(done, 1) == "completed" and read_status(done.folder)["status"] == "completed"


def test_a_scheduler_task_that_is_gone_leaves_train_pys_own_end_and_fails_only_a_silent_one(tmp_path):
    from core.search.cluster import outcome_of_gone_task

    p = str(tmp_path)
    preempted = fake_cell(p, "preempted", "interrupted", 1, [0.5])  # scancel, or a node taken back
    assert outcome_of_gone_task(preempted, "Slurm task 7_0") == "interrupted"
    assert read_status(preempted.folder)["status"] == "interrupted"
    lost = fake_cell(p, "lost", "running", 1, [0.5])  # the node went away mid-epoch
    assert outcome_of_gone_task(lost, "Ray task (RayTaskError)") == "failed"
    assert read_status(lost.folder)["reason"] == "Ray task (RayTaskError) ended with status 'running'"


def test_under_torchrun_the_exit_code_is_the_one_of_the_status_rank_0_recorded(tmp_path):
    from core.rundir.folder import Status, read_status, write_status
    from train import after_torchrun

    folder = str(tmp_path)
    write_status(folder, Status.RUNNING, epoch=1)
    before = read_status(folder)
    assert after_torchrun(folder, 0, before) == 0
    write_status(folder, Status.INTERRUPTED, reason="SIGTERM")  # torchrun itself exits 1 whatever its ranks did
    assert after_torchrun(folder, 1, before) == 130  # a search resumes it, not marks it failed
    before = read_status(folder)
    write_status(folder, Status.RUNNING, epoch=1)
    assert after_torchrun(folder, 1, before) == 1  # rank 0 killed: it could not say, the launcher does
    assert read_status(folder)["status"] == "failed"
    write_status(folder, Status.INTERRUPTED, reason="an earlier session's")
    before = read_status(folder)  # rank 0 crashed before it wrote anything: the earlier status is not this run's
    assert after_torchrun(folder, 1, before) == 1 and read_status(folder)["reason"] == "an earlier session's"
