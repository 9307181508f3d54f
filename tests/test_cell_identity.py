"""A cell is what it trains: rewrites of a finished search's block that name the same cells train nothing, under the
local launcher and under Slurm; folders of today's and earlier naming are found by their params; folders no longer
in the block are kept and left out of the results."""

import json
import os
import re
import shutil

import pytest
from test_cluster import slurm  # noqa: F401  the fixture: a one-node cluster
from test_search import TINY, search

import synthesize_results
from conftest import read
from core.search.cells import Cell
from core.search.identity import folder_identity, identity
from core.search.pool import collect, prepare

BLOCK = {"learning_rate": [0.001, 0.004], "ps": [0.1, 0.3]}
NAMES = ["learning_rate_0.001__ps_0.1", "learning_rate_0.001__ps_0.3", "learning_rate_0.004__ps_0.1",
         "learning_rate_0.004__ps_0.3"]
PARAMS = {**TINY, "num_epochs": 1, "train_subset": 128, "valid_subset": 64}

# each rewrite of the block names the same four cells (a number spelled otherwise: written as JSON text below)
SAME_CELLS = {
    "keys reordered": {"ps": [0.1, 0.3], "learning_rate": [0.001, 0.004]},
    "values reordered": {"learning_rate": [0.004, 0.001], "ps": [0.3, 0.1]},
    "a constant key every cell already uses": {**BLOCK, "wd": [0.0001]},
    "a zip": {"zip": {"learning_rate": [0.001, 0.001, 0.004, 0.004], "ps": [0.1, 0.3, 0.1, 0.3]}},
    "a list of blocks": [{"learning_rate": [0.004], "ps": [0.1, 0.3]}, {"ps": [0.3, 0.1], "learning_rate": [0.001]}],
}
RESPELLED = '{"learning_rate": [1e-3, 4.0e-3], "ps": [1E-1, 0.30]}'


@pytest.fixture(scope="module")
def finished(tmp_path_factory, digits_dir):
    """A finished 4-cell grid, trained once for the module; each test works on a copy."""
    parent = tmp_path_factory.mktemp("finished") / "search"
    parent.mkdir()
    (parent / "params.json").write_text(json.dumps({**PARAMS, "hyper_search": BLOCK}))
    proc = search(str(parent), digits_dir, "--workers", "2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(d for d in os.listdir(parent) if os.path.isdir(parent / d)) == NAMES
    return parent


def copy_of(finished, tmp_path, block_text=None, **parent_keys):
    """The finished search copied, its block rewritten (JSON text, or an object) and parent keys set."""
    parent = tmp_path / "search"
    shutil.copytree(finished, parent, ignore=shutil.ignore_patterns(".lock"))
    params = {**read(parent / "params.json"), **parent_keys}
    text = json.dumps(params)
    if block_text is not None:
        text = text.replace(json.dumps(params["hyper_search"]), block_text)
    (parent / "params.json").write_text(text)
    return str(parent)


def planned(parent, digits_dir, *flags):
    proc = search(parent, digits_dir, "--dry_run", *flags)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def weights_mtimes(parent):
    return {d: os.path.getmtime(os.path.join(parent, d, "last.pth.tar")) for d in NAMES}


@pytest.mark.parametrize("rewrite", [*SAME_CELLS, "numbers respelled"])
def test_a_rewrite_of_the_block_that_names_the_same_cells_trains_nothing(finished, tmp_path, digits_dir, rewrite):
    text = RESPELLED if rewrite == "numbers respelled" else json.dumps(SAME_CELLS[rewrite])
    parent = copy_of(finished, tmp_path, text)
    out = planned(parent, digits_dir)
    assert "0 of 4 cells to train" in out and "4 cells: 4 skip (done)" in out, out
    for name in NAMES:
        assert re.search(rf"\| {re.escape(name)} +\| skip \(done\)", out), out
    before = weights_mtimes(parent)
    proc = search(parent, digits_dir)  # the real thing: nothing trains, nothing is rewritten
    assert proc.returncode == 0 and "0 of 4 cells to train" in proc.stdout
    assert weights_mtimes(parent) == before and sorted(n for n in os.listdir(parent) if "__" in n) == NAMES


def test_more_repetitions_train_only_the_new_ones_and_the_first_keeps_its_folder(finished, tmp_path, digits_dir):
    parent = copy_of(finished, tmp_path, n_repetitions=2)
    out = planned(parent, digits_dir)
    assert "4 of 8 cells to train" in out and "4 skip (done), 4 run" in out
    before = weights_mtimes(parent)
    proc = search(parent, digits_dir, "--workers", "2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert weights_mtimes(parent) == before  # the first repetitions are the folders trained before, untouched
    reps = sorted(n for n in os.listdir(parent) if n.endswith("__rep1"))
    assert reps == [f"{n}__rep1" for n in NAMES]
    assert read(os.path.join(parent, reps[0], "params.json"))["seed"] == TINY.get("seed", 230) + 1000
    assert "0 of 8 cells to train" in planned(parent, digits_dir)


def test_folders_of_the_naming_before_are_found_by_what_they_trained(finished, tmp_path, digits_dir):
    """A parent written by the earlier naming (keys in block order, every repetition suffixed __repN, list values
    joined by commas): each folder is its cell, recognised by the params it recorded (params_effective.json)."""
    parent = copy_of(finished, tmp_path, json.dumps({"ps": [0.1, 0.3], "learning_rate": [0.001, 0.004]}),
                     n_repetitions=2)
    old = {}
    for name in NAMES:
        lr, ps = re.fullmatch(r"learning_rate_(.*)__ps_(.*)", name).groups()
        old[name] = f"ps_{ps}__learning_rate_{lr}__rep0"
        os.rename(os.path.join(parent, name), os.path.join(parent, old[name]))
    out = planned(parent, digits_dir)
    assert "4 of 8 cells to train" in out
    for name in old.values():
        assert re.search(rf"\| {re.escape(name)} +\| skip \(done\)", out), out
    # what train.py recorded decides, not params.json: a folder whose record says it trained other params (an
    # earlier default, say) is no cell of this search, and its cell gets a folder of its own
    first = os.path.join(parent, old[NAMES[0]])
    effective = read(os.path.join(first, "params_effective.json"))
    (effective.update(batch_size=effective["batch_size"] + 1))
    with open(os.path.join(first, "params_effective.json"), "w") as f:
        json.dump(effective, f)
    out = planned(parent, digits_dir)
    assert "5 of 8 cells to train" in out and f"| {old[NAMES[0]]}" in out and "not in this search (kept)" in out
    assert re.search(rf"\| {re.escape(NAMES[0])} +\| run ", out), out


def test_a_folder_no_longer_in_the_block_is_kept_listed_and_left_out_of_the_results(finished, tmp_path, digits_dir):
    parent = copy_of(finished, tmp_path, json.dumps({"learning_rate": [0.001], "ps": [0.1, 0.3]}))
    proc = search(parent, digits_dir)
    assert proc.returncode == 0 and "0 of 2 cells to train" in proc.stdout
    assert "2 folders in" in proc.stderr and "not in this search (kept)" in proc.stderr
    assert all(os.path.exists(os.path.join(parent, n, "last.pth.tar")) for n in NAMES)  # never deleted
    rows = [line.split("|")[1].strip() for line in read_table(parent)]
    assert sorted(rows) == NAMES[:2]
    md = open(os.path.join(parent, "results.md")).read()
    assert "2 folders are not cells of this search (--all shows them)" in md
    assert synthesize_results.main(["--parent_dir", parent, "--all"]) == 0
    assert sorted(line.split("|")[1].strip() for line in read_table(parent)) == NAMES


def read_table(parent):
    lines = open(os.path.join(parent, "results.md")).read().split("\n\n")[0].splitlines()
    return lines[2:]


def test_under_slurm_rewrites_submit_nothing_and_more_repetitions_only_the_new_cells(slurm, finished, tmp_path,  # noqa: F811
                                                                                      digits_dir):
    for i, block in enumerate([*SAME_CELLS.values(), RESPELLED]):
        parent = copy_of(finished, tmp_path / str(i), block if isinstance(block, str) else json.dumps(block))
        assert "0 of 4 cells to train (slurm)" in planned(parent, digits_dir, "--launcher", "slurm")
    parent = copy_of(finished, tmp_path / "reps", n_repetitions=2)
    before = weights_mtimes(parent)
    proc = search(parent, digits_dir, "--launcher", "slurm", "--time_min", "10")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "4 of 8 cells to train (slurm)" in proc.stdout and weights_mtimes(parent) == before
    assert all(read(os.path.join(parent, f"{n}__rep1", "status.json"))["status"] == "completed" for n in NAMES)


# ------------------------------------------------------------------ identity, without training

def test_identity_is_the_effective_params_whatever_their_spelling():
    base = {**PARAMS, "learning_rate": 0.001}
    assert identity(base, "p") == identity({**base, "learning_rate": 1e-3, "wd": 0.0001}, "p")
    assert identity(base, "p") == identity({**base, "loggers": ["tensorboard"], "num_workers": 0}, "p")  # resumable
    assert identity({**base, "ps": 0}, "p") == identity({**base, "ps": 0.0}, "p")
    assert identity(base, "p") != identity({**base, "learning_rate": 0.002}, "p")
    assert identity(base, "p") != identity({**base, "seed": 231}, "p")


def test_two_cells_that_train_the_same_are_one_line_before_anything_is_written(tmp_path, digits_dir):
    parent = tmp_path / "search"
    parent.mkdir()
    same = [{"wd": [0.0001]}, {"learning_rate": [PARAMS["learning_rate"]]}]  # the default wd; the parent's rate
    (parent / "params.json").write_text(json.dumps({**PARAMS, "hyper_search": same}))
    proc = search(str(parent), digits_dir)
    assert proc.returncode == 2 and "train the same params" in proc.stderr and "Traceback" not in proc.stderr
    assert os.listdir(parent) == ["params.json"]


def test_a_stale_diverged_status_does_not_hide_a_new_crash(tmp_path):
    """An earlier session diverged; this one crashed (exit 1, as a divergence exits) before it wrote any status: the
    crash is recorded with its own log tail, not taken for the old divergence."""
    cell = Cell("c", str(tmp_path / "c"), PARAMS)
    os.makedirs(cell.folder)
    with open(os.path.join(cell.folder, "status.json"), "w") as f:
        json.dump({"status": "diverged", "reason": "non-finite loss at epoch 3"}, f)
    prepare(cell)  # as every launcher does when the job starts
    with open(os.path.join(cell.folder, "train.log"), "a") as f:
        f.write("Traceback (most recent call last):\nSyntaxError: invalid syntax (net.py, line 12)\n")
    assert collect(cell, 1) == "failed"
    status = read(os.path.join(cell.folder, "status.json"))
    assert status["reason"] == "SyntaxError: invalid syntax (net.py, line 12)" and status["log_tail"][-1] == \
        status["reason"]


def test_a_folder_with_unreadable_params_is_no_cell(tmp_path):
    folder = tmp_path / "x"
    folder.mkdir()
    (folder / "params.json").write_text('{"learning_rate": 0.0')
    assert folder_identity(str(folder)) is None
