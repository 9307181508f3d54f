"""synthesize_results.py and plot_results.py over hand-made run folders (no training)."""

import json
import math
import os

import pytest

import plot_results
import synthesize_results
from core.rundir.plots import plt
from core.search.asha import schedule_of
from core.search.figures import apply_scale, draw_curves, draw_key
from core.search.importance import importance, spearman
from core.search.parallel import parallel_figure
from core.search.results import gather, points_of, varied_keys
from core.search.space import axis_scales
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
    md = synthesize_results.synthesize(parent, every=True)  # the corrupt folder is no cell of the block
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


def test_plot_draws_curves_metric_vs_hyperparameter_and_parallel_coordinates(parent):
    paths = plot_results.plot(parent)
    assert [os.path.basename(p) for p in paths] == ["history_plots.png", "parallel.png", "parallel.html"]
    assert all(os.path.getsize(p) > 1000 for p in paths)


def test_plot_many_cells_stays_legible(tmp_path):
    p = str(tmp_path / "many")
    for i in range(40):
        make_run(p, f"wd_{i}", {"wd": i * 1e-4}, acc=0.5 + i / 100)
    path = plot_results.plot(p, top_k=5)[0]
    assert os.path.getsize(path) > 10000


# ---- search figures: axis scales, how cells ended, parallel coordinates, which keys mattered ----

SPACE = {"method": "sobol", "n_samples": 8, "learning_rate": {"loguniform": [1e-4, 1e-1]},
         "ps": {"uniform": [0, 0.6]}, "batch_size": {"int": [16, 128]},
         "optimizer": {"choice": ["sgd", "adam", "adamw"]}, "wd": [0.0, 1e-4], "arch": ["small_cnn", "resnet18"]}


def scales_of(space, keys):
    runs = [{"params": {}}]
    return axis_scales({"hyper_search": space}, keys, runs)


def test_axis_scale_follows_the_search_space_for_each_distribution():
    s = scales_of(SPACE, list(SPACE)[2:])
    assert [s[k].kind for k in ("learning_rate", "ps", "batch_size", "optimizer", "wd", "arch")] == \
        ["log", "linear", "linear", "category", "linear", "category"]
    assert s["optimizer"].categories == ('"sgd"', '"adam"', '"adamw"')  # listed order, not sorted
    assert (s["ps"].low, s["ps"].high) == (0, 0.6)
    grids = scales_of({"learning_rate": [1e-4, 1e-3, 1e-2], "batch_size": [32, 64, 128],
                       "zip": {"ps": [0.1, 0.5], "wd": [1e-5, 1e-2]}}, ["learning_rate", "batch_size", "ps", "wd"])
    assert [grids[k].kind for k in ("learning_rate", "batch_size", "ps", "wd")] == ["log", "linear", "linear", "log"]
    assert scales_of({"batch_size": {"choice": [32, 64, 128]}}, ["batch_size"])["batch_size"].kind == "category"
    # keys not in the space (folders gathered by hand) follow the same rule from their values
    seen = axis_scales({}, ["wd", "ps"], [{"params": {"wd": w, "ps": p}} for w, p in ((1e-5, 0.1), (1e-2, 0.2))])
    assert (seen["wd"].kind, seen["ps"].kind) == ("log", "linear")


def test_the_figure_uses_that_scale_with_readable_ticks():
    s = scales_of(SPACE, ["learning_rate", "ps", "optimizer"])
    fig, axes = plt.subplots(1, 3)
    for ax, key in zip(axes, ("learning_rate", "ps", "optimizer")):
        apply_scale(ax, s[key])
    fig.canvas.draw()
    assert [ax.get_xscale() for ax in axes] == ["log", "linear", "linear"]
    log_labels = [t.get_text() for t in axes[0].get_xticklabels() if t.get_text()]
    assert log_labels and all("10^" not in t and "times" not in t for t in log_labels)  # plain numbers
    assert not [t for t in axes[0].xaxis.get_minorticklabels() if t.get_text()]  # no minor labels to overprint
    assert [t.get_text() for t in axes[2].get_xticklabels()] == ["sgd", "adam", "adamw"]
    plt.close(fig)


@pytest.fixture
def asha_parent(tmp_path):
    """9 cells of a successive-halving grid: 3 completed (9 epochs), 3 pruned at epoch 3, 2 at epoch 1, 1 failed."""
    p = str(tmp_path / "asha")
    schedule = {"type": "asha", "min_epochs": 1, "reduction_factor": 3}
    write(os.path.join(p, "params.json"), {"num_epochs": 9, "hyper_search": {
        "learning_rate": [0.001, 0.01, 0.1], "ps": [0.0, 0.25, 0.5], "schedule": schedule}})
    plan = [("completed", 9)] * 3 + [("pruned", 3)] * 3 + [("pruned", 1)] * 2 + [("failed", 1)]
    for i, (status, epochs) in enumerate(plan):
        lr, ps = [0.001, 0.01, 0.1][i % 3], [0.0, 0.25, 0.5][i // 3]
        make_run(p, f"lr_{lr}__ps_{ps}", {"learning_rate": lr, "ps": ps, "num_epochs": 9}, status=status,
                 acc=None if status == "failed" else 0.5 + 0.1 * (i % 3) + 0.01 * i, epochs=epochs)
    return p


def test_a_pruned_cells_mark_differs_from_a_completed_ones_and_its_curve_ends_with_it(asha_parent):
    runs = gather(asha_parent)
    schedule = schedule_of(json.load(open(os.path.join(asha_parent, "params.json"))), asha_parent)
    cells = points_of(runs, varied_keys(runs), "accuracy", schedule)
    assert [c.outcome for c in cells].count("pruned") == 5 and cells[0].outcome == "completed"
    pruned = next(c for c in cells if c.outcome == "pruned" and c.epochs == 3)
    assert pruned.value == pytest.approx(pruned.histories[0][2]["val"]["accuracy"])  # its value at its last rung
    scales = axis_scales({}, ["learning_rate", "ps"], runs)
    fig, (ax, curves) = plt.subplots(1, 2)
    draw_key(ax, cells, "learning_rate", scales["learning_rate"], "accuracy", schedule)
    marks = {tuple(map(tuple, c.get_paths()[0].vertices.round(3))) for c in ax.collections}
    assert len(marks) == 3  # completed, pruned and failed look different
    draw_curves(curves, cells, "accuracy", top_k=9)
    ends = [line for line in curves.lines if line.get_marker() == "v"]
    assert len(ends) == 5 and sorted(line.get_xdata()[0] for line in ends) == [1, 1, 3, 3, 3]
    plt.close(fig)
    paths = plot_results.plot(asha_parent)
    assert [os.path.basename(p) for p in paths][-1] == "rungs.png"


def test_parallel_coordinates_draw_one_line_per_cell_with_a_finite_metric(asha_parent, tmp_path):
    runs = gather(asha_parent)
    keys = varied_keys(runs)
    cells = points_of(runs, keys, "accuracy")
    path = str(tmp_path / "parallel.png")
    n = parallel_figure(path, asha_parent, cells, axis_scales({}, keys, runs), "accuracy")
    assert n == 8 == sum(c.value is not None for c in cells) and os.path.getsize(path) > 5000


def test_importance_ranks_a_key_that_changes_the_metric_above_one_that_does_not(tmp_path):
    p = str(tmp_path / "imp")
    write(os.path.join(p, "params.json"), {"hyper_search": {"method": "random", "n_samples": 24,
          "learning_rate": {"loguniform": [1e-4, 1e-1]}, "ps": {"uniform": [0, 0.6]}, "optimizer": ["adam", "sgd"]}})
    for i in range(24):
        lr, ps, opt = 10 ** (-4 + 3 * ((i * 7) % 24) / 23), 0.6 * ((i * 5) % 24) / 23, ["adam", "sgd"][i % 2]
        acc = 0.9 - 0.1 * abs(math.log10(lr) + 2.5) + 0.001 * ((i * 11) % 3)  # lr matters, ps and optimizer do not
        make_run(p, f"c{i}", {"learning_rate": lr, "ps": ps, "optimizer": opt}, acc=acc)
    runs = gather(p)
    keys = varied_keys(runs)
    _, n, rows = importance(points_of(runs, keys, "accuracy"), axis_scales(json.load(open(
        os.path.join(p, "params.json"))), keys, runs), "accuracy")
    assert n == 24 and rows[0]["key"] == "learning_rate" and rows[0]["spread"] > 5 * rows[-1]["spread"]
    assert rows[0]["groups"] == 4 and rows[0]["rho"] is not None
    assert next(r for r in rows if r["key"] == "optimizer")["rho"] is None  # no rank correlation for categories
    md = synthesize_results.synthesize(p, every=True)  # folders made by hand, not the block's own draws
    section = md.split("## Which keys mattered")[1]
    assert section.index("| learning_rate") < section.index("| ps") and "Spearman" in section


def test_spearman_matches_scipys_with_ties():
    from scipy.stats import spearmanr

    xs = [0.1, 0.5, 0.5, 0.2, 0.9, 0.9, 0.9, 0.3]
    ys = [3, 1, 2, 2, 5, 4, 4, 0]
    assert spearman(xs, ys) == pytest.approx(spearmanr(xs, ys).statistic)
    assert spearman([1, 1, 1], [1, 2, 3]) is None


def test_a_parent_of_several_tasks_gets_one_table_per_task_each_ranked_its_own_way(tmp_path):
    """A metric name means what its task says (map: detection's COCO mAP here, another task's mean AP there): a
    parent holding runs of several tasks gets a table per task, with only that task's columns and ranking."""
    p = str(tmp_path / "mixed")
    make_run(p, "cls_a", {"learning_rate": 0.1}, acc=0.7)
    make_run(p, "cls_b", {"learning_rate": 0.01}, acc=0.9)
    for name, error in (("kp_a", 0.4), ("kp_b", 1.2)):  # point_error: smaller is better
        folder = make_run(p, name, {"task": "keypoints", "learning_rate": error})
        write(os.path.join(folder, "metrics_val_best_weights.json"), {"loss": 0.1, "point_error": error, "epoch": 3})
    md = synthesize_results.synthesize(p)
    cls, kp = md.split("## classification\n\n")[1].split("## keypoints\n\n")
    assert "point_error" not in cls and "accuracy" not in kp
    assert [r[0] for r in table_rows(cls)] == ["cls_b", "cls_a"]  # larger accuracy first
    assert [r[0] for r in table_rows(kp)] == ["kp_a", "kp_b"]  # smaller point error first
    md = synthesize_results.synthesize(p, metric="point_error")  # ranks the task that has it, the other its own way
    assert [r[0] for r in table_rows(md.split("## keypoints\n\n")[1])] == ["kp_a", "kp_b"]
    assert [r[0] for r in table_rows(md.split("## classification\n\n")[1].split("## keypoints")[0])] == ["cls_b",
                                                                                                        "cls_a"]


def test_a_metric_name_two_tasks_share_is_ranked_by_each_tasks_direction():
    from core.search.results import minimized

    assert minimized("point_error", "keypoints") and not minimized("map", "detection")
    assert minimized("loss") and not minimized("accuracy") and not minimized("no_such_metric", "keypoints")
