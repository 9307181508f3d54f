"""synthesize_results.py and plot_results.py over hand-made run folders (no training)."""

import json
import os

import pytest

import plot_results
import synthesize_results
from utils import UserError


def write(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(obj if isinstance(obj, str) else json.dumps(obj))


def make_run(parent, name, params, status="completed", acc=None, loss=0.5, epochs=3, test_acc=None):
    folder = os.path.join(parent, name)
    write(os.path.join(folder, "params.json"), params)
    write(os.path.join(folder, "status.json"), {"status": status, "epoch": epochs})
    if acc is not None:
        write(os.path.join(folder, "metrics_val_best_weights.json"), {"accuracy": acc, "loss": loss, "epoch": epochs})
        rows = [{"epoch": e, "lr": [0.1], "train": {"loss": 1 / e, "accuracy": acc * e / epochs},
                 "val": {"loss": 1.1 / e, "accuracy": acc * e / epochs}} for e in range(1, epochs + 1)]
        write(os.path.join(folder, "history.json"), {"classes": ["a", "b"], "epochs": rows})
    if test_acc is not None:
        write(os.path.join(folder, "metrics_test_best_weights.json"), {"accuracy": test_acc, "loss": 0.3, "epoch": 3})
    return folder


@pytest.fixture
def parent(tmp_path):
    p = str(tmp_path / "lr")
    write(os.path.join(p, "params.json"), {"num_epochs": 3, "hyper_search": {"learning_rate": [0.1, 0.01, 0.001]}})
    make_run(p, "learning_rate_0.1", {"learning_rate": 0.1, "num_epochs": 3}, acc=0.80)
    make_run(p, "learning_rate_0.01", {"learning_rate": 0.01, "num_epochs": 3}, acc=0.95, test_acc=0.94)
    make_run(p, "learning_rate_0.001", {"learning_rate": 0.001, "num_epochs": 3}, status="failed")
    corrupt = make_run(p, "learning_rate_0.5", {"learning_rate": 0.5, "num_epochs": 3}, acc=0.9)
    write(os.path.join(corrupt, "metrics_val_best_weights.json"), '{"accuracy": 0.9, "lo')  # half-written
    return p


def table_rows(markdown):
    lines = markdown.strip().splitlines()[2:]
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines]


def test_table_ranks_cells_shows_status_and_reports_corrupt_files(parent):
    md = synthesize_results.synthesize(parent)
    header = [c.strip() for c in md.splitlines()[0].strip("|").split("|")]
    assert header[:3] == ["folder", "learning_rate", "status"]
    assert "num_epochs" not in header  # only keys that differ
    rows = table_rows(md)
    assert [r[0] for r in rows[:2]] == ["learning_rate_0.01", "learning_rate_0.1"]  # best first
    acc = header.index("val_accuracy")
    assert rows[0][acc] == "0.9500" and rows[0][header.index("test_accuracy")] == "0.9400"
    failed = next(r for r in rows if r[0] == "learning_rate_0.001")
    assert failed[2] == "failed" and failed[acc] == ""
    corrupt = next(r for r in rows if r[0] == "learning_rate_0.5")
    assert "unreadable metrics_val_best_weights.json" in corrupt[-1]
    assert open(os.path.join(parent, "results.md")).read().strip() == md.strip()
    csv_lines = open(os.path.join(parent, "results.csv")).read().strip().splitlines()
    assert len(csv_lines) == 5 and csv_lines[0].startswith("folder,learning_rate,status,epoch")


def test_repetitions_collapse_to_mean_std_and_n(tmp_path):
    p = str(tmp_path / "reps")
    for i, acc in enumerate([0.90, 0.92, 0.94]):
        make_run(p, f"ps_0.5__rep{i}", {"ps": 0.5, "seed": 230 + i}, acc=acc)
    make_run(p, "ps_0.1__rep0", {"ps": 0.1, "seed": 230}, acc=0.97)
    rows = table_rows(synthesize_results.synthesize(p))
    assert rows[0][:4] == ["ps_0.1__rep0", "0.1", "completed", "1"]
    assert rows[1][:4] == ["ps_0.5__rep*", "0.5", "completed", "3"] and "0.9200 ± 0.0200" in rows[1]


def test_loss_sorts_ascending(parent):
    rows = table_rows(synthesize_results.synthesize(parent, metric="loss"))
    assert rows[0][2] == "completed"


def test_cli_errors_are_one_line(tmp_path):
    with pytest.raises(UserError, match="no run folders"):
        synthesize_results.synthesize(str(tmp_path))
    with pytest.raises(UserError, match="not a folder"):
        synthesize_results.synthesize(str(tmp_path / "missing"))


def test_plot_draws_curves_and_metric_vs_hyperparameter(parent):
    path = plot_results.plot(parent)
    assert path.endswith("history_plots.png") and os.path.getsize(path) > 10000


def test_plot_many_cells_stays_legible(tmp_path):
    p = str(tmp_path / "many")
    for i in range(40):
        make_run(p, f"wd_{i}", {"wd": i * 1e-4}, acc=0.5 + i / 100)
    path = plot_results.plot(p, top_k=5)
    assert os.path.getsize(path) > 10000
