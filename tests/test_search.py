"""search_hyperparams.py end to end (real train.py children on the digits data) and the grid rules."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

import search_hyperparams
from conftest import FAST_PARAMS, ROOT, read
from core.rundir.folder import read_status
from core.search.grid import expand, folder_name, plan
from utils import UserError

TINY = {**FAST_PARAMS, "train_subset": 200, "valid_subset": 100, "num_epochs": 2}


def make_parent(tmp_path, hyper_search, **extra):
    parent = tmp_path / "search"
    parent.mkdir()
    (parent / "params.json").write_text(json.dumps({**TINY, **extra, "hyper_search": hyper_search}))
    return str(parent)


def search(parent, digits_dir, *flags):
    return subprocess.run([sys.executable, "search_hyperparams.py", "--parent_dir", parent, "--data_dir", digits_dir,
                           *flags], cwd=ROOT, capture_output=True, text=True, timeout=600)


def mtimes(parent):
    return {d: os.path.getmtime(os.path.join(parent, d, "last.pth.tar"))
            for d in os.listdir(parent) if os.path.exists(os.path.join(parent, d, "last.pth.tar"))}


def test_grid_trains_in_parallel_then_rerun_skips_everything(tmp_path, digits_dir):
    parent = make_parent(tmp_path, {"learning_rate": [0.002, 0.005], "ps": [0.0, 0.5]})
    proc = search(parent, digits_dir, "--workers", "2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    cells = sorted(d for d in os.listdir(parent) if os.path.isdir(os.path.join(parent, d)))
    assert cells == ["learning_rate_0.002__ps_0.0", "learning_rate_0.002__ps_0.5",
                     "learning_rate_0.005__ps_0.0", "learning_rate_0.005__ps_0.5"]
    for c in cells:
        child = read(os.path.join(parent, c, "params.json"))
        assert "hyper_search" not in child and child["num_epochs"] == 2
        assert read(os.path.join(parent, c, "status.json"))["status"] == "completed"
    results = open(os.path.join(parent, "results.md")).read()
    assert all(c in results for c in cells) and "learning_rate" in results and "ps" in results
    assert os.path.getsize(os.path.join(parent, "history_plots.png")) > 5000
    assert os.path.exists(os.path.join(parent, "results.csv"))

    before = mtimes(parent)
    again = search(parent, digits_dir, "--workers", "2")
    assert again.returncode == 0
    assert "0 of 4 cells to train" in again.stdout
    assert mtimes(parent) == before


@pytest.mark.slow
def test_sigkill_mid_search_then_rerun_resumes_only_the_interrupted_cell(tmp_path, digits_dir):
    parent = make_parent(tmp_path, {"learning_rate": [0.002, 0.004, 0.006]}, num_epochs=4)
    cmd = [sys.executable, "search_hyperparams.py", "--parent_dir", parent, "--data_dir", digits_dir]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first, second = (os.path.join(parent, n) for n in ("learning_rate_0.002", "learning_rate_0.004"))
    deadline = time.time() + 240
    # kill once the first cell is done and the second has a checkpoint but is unfinished
    while time.time() < deadline:
        if os.path.exists(os.path.join(second, "last.pth.tar")) and read_status(second).get("epoch", 0) >= 1:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert read(os.path.join(first, "status.json"))["status"] == "completed"
    assert read(os.path.join(second, "status.json"))["status"] == "running"  # killed: no chance to record more
    done_mtime = os.path.getmtime(os.path.join(first, "last.pth.tar"))
    time.sleep(1)  # the child dies with the search (PDEATHSIG): its lock is gone

    rerun = search(parent, digits_dir)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert os.path.getmtime(os.path.join(first, "last.pth.tar")) == done_mtime  # not trained again
    assert "resuming at epoch" in open(os.path.join(second, "train.log")).read()
    for cell in (first, second, os.path.join(parent, "learning_rate_0.006")):
        epochs = [r["epoch"] for r in read(os.path.join(cell, "history.json"))["epochs"]]
        assert epochs == [1, 2, 3, 4]  # every epoch exactly once


def test_failing_cell_does_not_stop_the_others_and_shows_in_results(tmp_path, digits_dir):
    parent = make_parent(tmp_path, {"arch": ["small_cnn", "resnet_nope"]}, num_epochs=1)
    proc = search(parent, digits_dir, "--workers", "2")
    assert proc.returncode == 1
    assert read(os.path.join(parent, "arch_small_cnn", "status.json"))["status"] == "completed"
    failed = read(os.path.join(parent, "arch_resnet_nope", "status.json"))
    assert failed["status"] == "failed" and "resnet_nope" in failed["reason"] and failed["log_tail"]
    assert "arch_resnet_nope/train.log" in proc.stdout
    rows = [line for line in open(os.path.join(parent, "results.md")) if "resnet_nope" in line]
    assert rows and "failed" in rows[0]
    # a rerun leaves the failed cell alone unless asked
    assert "skip (failed" in search(parent, digits_dir, "--dry_run").stdout
    assert "retry" in search(parent, digits_dir, "--dry_run", "--retry_failed").stdout


def test_dry_run_writes_nothing_and_print_commands_prepares_folders(tmp_path, digits_dir):
    parent = make_parent(tmp_path, {"zip": {"batch_size": [16, 32], "learning_rate": [0.001, 0.002]}})
    dry = search(parent, digits_dir, "--dry_run")
    assert dry.returncode == 0 and "2 cells: 2 run" in dry.stdout
    assert os.listdir(parent) == ["params.json"]
    cmds = search(parent, digits_dir, "--print_commands").stdout.strip().splitlines()
    assert len(cmds) == 2 and all("train.py --model_dir" in c for c in cmds)
    assert sorted(os.listdir(parent)) == ["batch_size_16__learning_rate_0.001", "batch_size_32__learning_rate_0.002",
                                          "params.json"]


def test_a_hand_edited_cell_is_kept_and_the_cell_of_the_block_gets_its_own_folder(tmp_path, digits_dir, capsys):
    parent = make_parent(tmp_path, {"ps": [0.1]})
    child = os.path.join(parent, "ps_0.1")
    os.makedirs(child)
    edited = json.dumps({**TINY, "ps": 0.1, "num_epochs": 9})
    open(os.path.join(child, "params.json"), "w").write(edited)
    assert search_hyperparams.main(["--parent_dir", parent, "--data_dir", digits_dir, "--dry_run"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"\| ps_0\.1__[0-9a-f]{8} +\| run ", out) and re.search(r"\| ps_0\.1 +\| not in this search", out)
    assert "1 of 1 cells to train" in out and "1 folders not in this search (kept)" in out
    assert open(os.path.join(child, "params.json")).read() == edited and os.listdir(child) == ["params.json"]


# ------------------------------------------------------------------ the grid, without training

def test_product_zip_union_nested_and_list_values():
    cells = expand({"zip": {"batch_size": [32, 64], "learning_rate": [1e-3, 2e-3]}, "ps": [0.1, 0.2]}, "p")
    assert len(cells) == 4 and {"batch_size": 64, "learning_rate": 2e-3, "ps": 0.2} in cells
    union = expand([{"arch": ["small_cnn"], "learning_rate": [1e-3]},
                    {"arch": ["resnet18"], "learning_rate": [[1e-4, 1e-3], [1e-3, 1e-2]]}], "p")
    assert len(union) == 3 and {"arch": "resnet18", "learning_rate": [1e-4, 1e-3]} in union
    out = plan({**TINY, "early_stopping": {"patience": 5}, "hyper_search": {"early_stopping.patience": [1, 3]}}, "p")
    assert [n for n, _, _ in out] == ["early_stopping.patience_1", "early_stopping.patience_3"]
    assert out[1][1]["early_stopping"] == {"patience": 3}


def test_repetitions_get_distinct_seeds_and_suffixes():
    out = plan({**TINY, "seed": 7, "n_repetitions": 3, "hyper_search": {"ps": [0.5]}}, "p")
    assert [n for n, _, _ in out] == ["ps_0.5", "ps_0.5__rep1", "ps_0.5__rep2"]  # the first keeps the plain name
    assert [p["seed"] for _, p, _ in out] == [7, 1007, 2007] and all("n_repetitions" not in p for _, p, _ in out)
    grid = plan({**TINY, "n_repetitions": 2, "hyper_search": {"seed": [1, 2]}}, "p")
    assert len({p["seed"] for _, p, _ in grid}) == 4  # a searched seed never collides with a repetition's


@pytest.mark.parametrize("params, message", [
    ({"hyper_search": {"ps": [0.1], "n_repetitions": 3}},
     "p: hyper_search: key 'n_repetitions' belongs in the parent's params, beside hyper_search, not in it"),
    ({"method": "random", "n_samples": 2, "hyper_search": {"ps": {"uniform": [0, 0.5]}}},
     "p: key 'method' belongs in the hyper_search block, not beside it"),
    ({"schedule": {"type": "asha"}, "hyper_search": {"ps": [0.1, 0.2]}},  # not "did you mean 'scheduler'"
     "p: key 'schedule' belongs in the hyper_search block, not beside it"),
    ({"hyper_search": {"zip": {"ps": [0.1], "method": ["grid"]}}},
     "p: hyper_search: 'method' belongs in the hyper_search block, beside 'zip', not in it"),
])
def test_a_search_setting_in_the_wrong_place_says_where_it_belongs(params, message):
    from core.config import suggest

    with pytest.raises(UserError) as e:
        plan({**TINY, **params}, "p")
    assert str(e.value) == message
    assert all(f"'{key}'?" not in suggest(key) for key in ("n_repetitions", "hyper_search", "learning_rate"))


@pytest.mark.parametrize("block, message", [
    ({"learning_rat": [0.1]}, "did you mean 'learning_rate'"),
    ({"ps": []}, "non-empty list"),
    ({"ps": 0.5}, "non-empty list"),
    ({"zip": {"ps": [0.1, 0.2], "wd": [0.1]}}, "equal lengths"),
    ([{"ps": [0.1]}, {"ps": [0.1]}], "duplicate cell"),
    ({"batch_size": [0, 8]}, "batch_size' must be >= 1"),
    ({"ps": ["high"]}, "expects float"),
])
def test_bad_blocks_are_rejected_before_anything_is_written(tmp_path, digits_dir, block, message):
    parent = make_parent(tmp_path, block)
    proc = search(parent, digits_dir)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert os.listdir(parent) == ["params.json"]


def test_folder_names_never_escape_the_parent(tmp_path):
    names = [folder_name({"pretrained_path": v}) for v in ["../x", "../../etc", "/abs/path", "a\\b", "..", "x" * 300]]
    for name in names:
        assert "/" not in name and "\\" not in name and ".." not in name and len(name) <= 110
        assert os.path.dirname(os.path.abspath(os.path.join(tmp_path, name))) == str(tmp_path)
    assert len(set(names)) == len(names)
    assert folder_name({"learning_rate": 0.001}) == "learning_rate_0.001"  # the seed template's naming
    with pytest.raises(UserError):
        from core.search.identity import child_path
        child_path(str(tmp_path), "../outside")


def test_a_run_that_has_written_its_end_is_waited_for_not_skipped_as_running_elsewhere(tmp_path):
    """Ctrl-C, then the search at once: the interrupted cell's process may still hold the folder's lock for a moment
    (a container being torn down); its status says it ended, so the rerun waits for it and resumes the cell."""
    import subprocess
    import sys
    import time

    from conftest import ROOT
    from core.rundir.folder import Status, is_locked, write_status

    folder = str(tmp_path)
    hold = ("import sys, time; sys.path.insert(0, {root!r}); from core.rundir.folder import folder_lock\n"
            "with folder_lock({folder!r}):\n    print('held', flush=True); time.sleep({s})")
    write_status(folder, Status.INTERRUPTED, reason="SIGTERM")
    proc = subprocess.Popen([sys.executable, "-c", hold.format(root=str(ROOT), folder=folder, s=0.5)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "held\n"
    start = time.monotonic()
    assert not is_locked(folder) and time.monotonic() - start > 0.2  # waited for it to let go
    proc.wait()
    write_status(folder, Status.RUNNING)
    proc = subprocess.Popen([sys.executable, "-c", hold.format(root=str(ROOT), folder=folder, s=3)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "held\n"
    start = time.monotonic()
    assert is_locked(folder) and time.monotonic() - start < 1  # a running cell is someone else's at once
    proc.kill()
    proc.wait()


def test_the_data_set_is_a_search_key_each_cell_trains_on_its_own(tmp_path, digits_dir):
    small = tmp_path / "small_digits"
    for split in ("train", "valid"):
        for c in sorted(os.listdir(os.path.join(digits_dir, split))):
            os.makedirs(small / split / c)
            for f in sorted(os.listdir(os.path.join(digits_dir, split, c)))[:6]:
                os.link(os.path.join(digits_dir, split, c, f), small / split / c / f)
    sets = [digits_dir, str(small)]
    parent = tmp_path / "search"
    parent.mkdir()
    params = {k: v for k, v in TINY.items() if not k.endswith("_subset")}
    (parent / "params.json").write_text(json.dumps({**params, "num_epochs": 1, "hyper_search": {"data_dir": sets}}))
    cmd = [sys.executable, "search_hyperparams.py", "--parent_dir", str(parent)]  # no --data_dir: the cells' own
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    used = {}
    for cell in sorted(d for d in os.listdir(parent) if os.path.isdir(parent / d)):
        assert read(parent / cell / "status.json")["status"] == "completed"
        session = read(parent / cell / "record.json")["sessions"][0]
        used[read(parent / cell / "params.json")["data_dir"]] = session["data_dir"]
        n_train = 60 if session["data_dir"] == str(small) else None
        if n_train:
            assert f"({n_train} train," in open(parent / cell / "train.log").read()
    assert used == {d: os.path.abspath(d) for d in sets}  # each cell trained on its own set, and says so
    header = open(parent / "results.md").read().splitlines()[0]
    assert "data_dir" in header

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "params.json").write_text(json.dumps({**TINY, "hyper_search": {"data_dir": [digits_dir, "/no/such"]}}))
    proc = subprocess.run([sys.executable, "search_hyperparams.py", "--parent_dir", str(bad)], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "error: data set /no/such: not found (params data_dir, or --data_dir)"]
    assert os.listdir(bad) == ["params.json"]
