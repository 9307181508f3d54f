"""method "tpe" (Optuna): the study rebuilt from the folders, a real search extended by a rerun, and bad blocks."""

import json
import os
import subprocess
import sys

import pytest
from test_search import TINY, make_parent, mtimes, search

from conftest import ROOT
from core.search.grid import tpe_block
from core.search.tpe import Tpe

pytest.importorskip("optuna")
SPACE = {"method": "tpe", "n_samples": 3, "learning_rate": {"loguniform": [1e-3, 1e-2]}, "ps": [0.0, 0.3]}


def write_cell(parent, params, status=None, history=(), best=None):
    name = f"cell{len(os.listdir(parent))}"
    folder = os.path.join(parent, name)
    os.makedirs(folder)
    json.dump(params, open(os.path.join(folder, "params.json"), "w"))
    if status:
        json.dump({"status": status, "epoch": len(history)}, open(os.path.join(folder, "status.json"), "w"))
    rows = [{"epoch": e, "val": {"accuracy": v}} for e, v in enumerate(history, 1)]
    json.dump({"epochs": rows}, open(os.path.join(folder, "history.json"), "w"))
    if best is not None:
        json.dump({"accuracy": best}, open(os.path.join(folder, "metrics_val_best_weights.json"), "w"))


def test_the_study_is_rebuilt_from_the_folders(tmp_path):
    parent = str(tmp_path)
    parent_params = {**TINY, "hyper_search": SPACE}
    base = {k: v for k, v in parent_params.items() if k != "hyper_search"}
    write_cell(parent, {**base, "learning_rate": 0.002, "ps": 0.3}, "completed", [0.5, 0.8], best=0.8)
    write_cell(parent, {**base, "learning_rate": 0.005, "ps": 0.0}, "pruned", [0.2])
    write_cell(parent, {**base, "learning_rate": 0.009, "ps": 0.0}, "failed", [])
    write_cell(parent, {**base, "learning_rate": 0.004, "ps": 0.0}, "running", [0.6])
    write_cell(parent, {**base, "learning_rate": 0.004, "ps": 0.9})  # ps outside the space: not this search's
    write_cell(parent, {**base, "learning_rate": 0.004, "ps": 0.0, "wd": 0.1})  # another key changed: not ours
    tpe = Tpe(parent, parent_params, *tpe_block(SPACE, "p"), "accuracy", "max")
    cells = tpe.existing()
    assert [c.name for c in cells] == ["cell0", "cell1", "cell2", "cell3", "cell4"]
    trials = [tpe.trial(c) for c in cells]
    states = [t.state.name if t else None for t in trials]
    assert states == ["COMPLETE", "PRUNED", "FAIL", "RUNNING", None]
    assert trials[0].value == 0.8 and trials[1].intermediate_values == {1: 0.2}
    assert trials[0].params == {"learning_rate": 0.002, "ps": 1}  # a choice goes to Optuna as its index
    assert tpe.propose(cells[:4]) is None  # 4 cells >= n_samples 3: nothing more
    tpe.n_samples = 6
    new = tpe.propose(cells[:4])
    assert new.name not in {c.name for c in cells} and 1e-3 <= new.params["learning_rate"] <= 1e-2
    assert new.params["ps"] in (0.0, 0.3) and not os.path.exists(new.folder)  # proposing writes nothing


@pytest.mark.slow
def test_tpe_search_trains_n_samples_cells_and_a_larger_n_samples_only_adds(tmp_path, digits_dir):
    parent = make_parent(tmp_path, SPACE, num_epochs=1)
    proc = search(parent, digits_dir, "--workers", "2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    cells = [d for d in os.listdir(parent) if os.path.isdir(os.path.join(parent, d))]
    assert len(cells) == 3 and all(d.startswith("learning_rate_") for d in cells)
    before = mtimes(parent)
    again = search(parent, digits_dir)
    assert again.returncode == 0 and mtimes(parent) == before  # the same 3 cells, from their folders
    params = json.load(open(os.path.join(parent, "params.json")))
    params["hyper_search"]["n_samples"] = 4
    json.dump(params, open(os.path.join(parent, "params.json"), "w"))
    more = search(parent, digits_dir)
    assert more.returncode == 0
    after = mtimes(parent)
    assert len(after) == 4 and all(after[c] == before[c] for c in before)


@pytest.mark.parametrize("block, message", [
    ([SPACE, {"ps": [0.5]}], "use a single hyper_search block"),
    ({**SPACE, "zip": {"wd": [0, 1e-4], "batch_size": [16, 32]}}, "'zip' needs method grid"),
    ({**SPACE, "ps": {"uniform": [0.5, 1.5]}}, "'ps' must be in [0, 1)"),
])
def test_bad_tpe_blocks_are_one_line_errors(tmp_path, digits_dir, block, message):
    parent = make_parent(tmp_path, block)
    proc = search(parent, digits_dir)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and os.listdir(parent) == ["params.json"]


def test_tpe_with_repetitions_or_without_optuna_is_a_one_line_error(tmp_path, digits_dir):
    (tmp_path / "reps").mkdir()
    reps = make_parent(tmp_path / "reps", SPACE, n_repetitions=2)
    assert "n_repetitions needs method grid" in search(reps, digits_dir).stderr
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "optuna.py").write_text("raise ImportError('no optuna here')\n")
    parent = make_parent(tmp_path, SPACE)
    proc = subprocess.run([sys.executable, "search_hyperparams.py", "--parent_dir", parent, "--data_dir", digits_dir],
                          cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(fake)))
    assert proc.returncode == 2 and proc.stderr.strip() == "error: method 'tpe' needs the 'optuna' package: pip " \
                                                            "install -r requirements-tpe.txt"


def test_tpe_fills_a_small_discrete_space_and_never_adopts_a_foreign_folder(tmp_path):
    parent = str(tmp_path)
    space = {"method": "tpe", "n_samples": 4, "learning_rate": [0.001, 0.002, 0.004, 0.008]}
    tpe = Tpe(parent, {**TINY, "hyper_search": space}, *tpe_block(space, "p"), "accuracy", "max")
    cells = []
    while (cell := tpe.propose(cells)) is not None:
        cells.append(cell)
    assert sorted(c.params["learning_rate"] for c in cells) == [0.001, 0.002, 0.004, 0.008]

    other = {"method": "tpe", "n_samples": 1, "ps": [0.5]}
    os.makedirs(os.path.join(parent, "ps_0.5"))  # an older search's cell: same name, other params
    json.dump({**TINY, "ps": 0.5, "batch_size": 7}, open(os.path.join(parent, "ps_0.5", "params.json"), "w"))
    tpe = Tpe(parent, {**TINY, "hyper_search": other}, *tpe_block(other, "p"), "accuracy", "max")
    assert tpe.existing() == []
    cell = tpe.propose([])  # the space's one cell, in a folder of its own beside the foreign one
    assert cell.name.startswith("ps_0.5__") and cell.params == {**TINY, "ps": 0.5}


def test_tpe_with_a_schedule_cannot_vary_num_epochs(tmp_path, digits_dir):
    block = {**SPACE, "num_epochs": {"int": [2, 6]}, "schedule": {"type": "asha", "min_epochs": 1}}
    proc = search(make_parent(tmp_path, block), digits_dir)
    assert proc.returncode == 2 and "the same num_epochs" in proc.stderr
