"""What a search's results say when its cells are not all alike: cells validated on different data sets, a broken
cell beside healthy ones, the order of results.csv, and tick labels a reader can trust (no training)."""

import csv
import os

import pytest
from test_results import make_run, table_rows, write

import plot_results
import synthesize_results
from core.rundir.plots import plt
from core.search import parallel
from core.search.figures import draw_curves
from core.search.results import Point, gather, points_of, varied_keys
from core.search.space import axis_scales


def csv_folders(parent):
    with open(os.path.join(parent, "results.csv")) as f:
        return [os.path.relpath(r["folder"], parent) for r in csv.DictReader(f)]


# ---- item 7: cells validated on different data sets are never ranked against each other ----

@pytest.fixture
def two_sets(tmp_path):
    """A search over data_dir in which the imbalanced set's best cell scores highest: on its own, easier, valid set.
    A third cell trained on the balanced set through a link, spelled with ./ (its record.json says so)."""
    sets = tmp_path / "sets"
    digits, imbalanced = sets / "digits", sets / "digits_imbalanced"
    digits.mkdir(parents=True)
    imbalanced.mkdir()
    os.symlink(digits, sets / "digits_link")
    p = str(tmp_path / "by_set")
    write(os.path.join(p, "params.json"), {"num_epochs": 2, "hyper_search": {
        "data_dir": [str(digits), str(imbalanced)], "learning_rate": [0.01, 0.1]}})
    for data, lr, acc in ((digits, 0.01, 0.9517), (digits, 0.1, 0.90), (imbalanced, 0.01, 0.9593),
                          (imbalanced, 0.1, 0.93)):
        make_run(p, f"{data.name}__lr_{lr}", {"data_dir": str(data), "learning_rate": lr, "num_epochs": 2}, acc=acc,
                 epochs=2)
    by_hand = make_run(p, "by_hand", {"learning_rate": 0.05, "num_epochs": 2}, acc=0.94, epochs=2)
    write(os.path.join(by_hand, "record.json"), {"sessions": [{"data_dir": f"{sets}/./digits_link"}]})
    return p, os.path.realpath(digits), os.path.realpath(imbalanced)


def test_each_data_set_is_ranked_on_its_own_and_results_say_so(two_sets, capsys):
    p, digits, imbalanced = two_sets
    assert synthesize_results.main(["--parent_dir", p, "--all"]) == 0  # by_hand is no cell of the block
    out = capsys.readouterr().out
    note = f"The validation sets differ (data_dir: 2 data sets, {digits}, {imbalanced}): each data set is ranked on"
    assert note in out
    md = open(os.path.join(p, "results.md")).read()
    assert md.startswith(note)
    first, second = md.split(f"## data set {digits}\n\n")[1].split(f"## data set {imbalanced}\n\n")
    assert [r[0] for r in table_rows(first.split("## Which keys")[0])] == ["digits__lr_0.01", "by_hand",
                                                                            "digits__lr_0.1"]  # the link is one set
    assert [r[0] for r in table_rows(second)] == ["digits_imbalanced__lr_0.01", "digits_imbalanced__lr_0.1"]
    assert "data_dir" not in first.split("\n")[0]  # within a set, data_dir differs as text only: no column
    assert csv_folders(p) == ["digits__lr_0.01", "by_hand", "digits__lr_0.1", "digits_imbalanced__lr_0.01",
                              "digits_imbalanced__lr_0.1"]
    with open(os.path.join(p, "results.csv")) as f:
        assert [r["data_set"] for r in csv.DictReader(f)] == [digits] * 3 + [imbalanced] * 2


def test_figures_colour_the_best_of_each_data_set_and_say_so(two_sets, capsys, monkeypatch):
    p, digits, imbalanced = two_sets
    runs = gather(p)
    cells = points_of(runs, varied_keys(runs), "accuracy")
    fig, ax = plt.subplots()
    draw_curves(ax, cells, "accuracy", top_k=1)
    coloured = [line for line in ax.lines if line.get_linestyle() == "-"]
    assert sorted(line.get_ydata()[-1] for line in coloured) == [0.9517, 0.9593]  # the best of each, not the top 2
    plt.close(fig)
    lines = parallel.polylines(cells, axis_scales({}, varied_keys(runs), runs), "accuracy")
    colours, by_set = parallel.line_colours(lines, plt.get_cmap("viridis"))
    assert list(by_set) == [digits, imbalanced] and len(set(colours)) == 2
    monkeypatch.setattr(parallel, "HIGHLIGHT", 1)
    assert sorted(c.value for c in cells if id(c) in parallel.thick(lines)) == [0.9517, 0.9593]
    assert plot_results.main(["--parent_dir", p]) == 0
    assert "The validation sets differ (data_dir: 2 data sets" in capsys.readouterr().out


def test_one_data_set_spelled_two_ways_is_one_set_and_no_column(tmp_path):
    p = str(tmp_path / "spelled")
    (tmp_path / "digits").mkdir()
    make_run(p, "a", {"data_dir": str(tmp_path / "digits"), "learning_rate": 0.1}, acc=0.8)
    make_run(p, "b", {"data_dir": f"{tmp_path}/./digits/", "learning_rate": 0.01}, acc=0.9)
    md = synthesize_results.synthesize(p)
    assert "validation sets differ" not in md and "data_dir" not in md.splitlines()[0]
    assert [r[0] for r in table_rows(md)] == ["b", "a"]


# ---- item 8: results.csv is best first, in results.md's order ----

def test_results_csv_is_in_the_tables_order_for_any_metric(tmp_path):
    p = str(tmp_path / "order")
    for name, acc, loss in (("a", 0.7, 0.2), ("b", 0.9, 0.6), ("c", 0.8, 0.4)):
        make_run(p, name, {"learning_rate": acc / 10}, acc=acc, loss=loss)
    make_run(p, "d", {"learning_rate": 0.5}, status="failed")
    for metric, order in ((None, ["b", "c", "a", "d"]), ("loss", ["a", "c", "b", "d"])):
        md = synthesize_results.synthesize(p, metric=metric)
        assert [r[0] for r in table_rows(md.split("## Which")[0])] == order == csv_folders(p)


def test_repetitions_keep_their_rows_place_in_the_csv(tmp_path):
    p = str(tmp_path / "reps")
    for i, acc in enumerate([0.90, 0.94]):
        make_run(p, f"ps_0.5__rep{i}", {"ps": 0.5, "seed": 230 + i}, acc=acc)
    make_run(p, "ps_0.1__rep0", {"ps": 0.1, "seed": 230}, acc=0.80)
    make_run(p, "ps_0.9__rep0", {"ps": 0.9, "seed": 230}, acc=0.95)
    synthesize_results.synthesize(p)
    assert csv_folders(p) == ["ps_0.9__rep0", "ps_0.5__rep0", "ps_0.5__rep1", "ps_0.1__rep0"]


# ---- item 9: tick labels ----

def test_epoch_axes_are_ticked_at_whole_epochs(tmp_path):
    p = str(tmp_path / "two")
    for lr, acc in ((0.1, 0.8), (0.01, 0.9)):
        make_run(p, f"lr_{lr}", {"learning_rate": lr}, acc=acc, epochs=2)
    runs = gather(p)
    fig, ax = plt.subplots()
    draw_curves(ax, points_of(runs, varied_keys(runs), "accuracy"), "accuracy", top_k=8)
    fig.canvas.draw()
    lo, hi = ax.get_xlim()
    ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
    assert ticks == [1, 2]
    plt.close(fig)


@pytest.mark.parametrize("metric", ["accuracy", "loss"])
def test_the_metric_axis_of_parallel_coordinates_is_ticked_at_evenly_spaced_round_values(metric):
    low, high = 0.9517, 0.9593
    cells = [Point([], {}, "completed", v) for v in (low, 0.9554, high)]
    marks = parallel.metric_ticks(cells, metric)
    values = [float(text) for _, text in marks]
    steps = {round(b - a, 12) for a, b in zip(values, values[1:])}
    assert len(marks) >= 3 and len(steps) == 1  # 0.952, 0.954, 0.956, 0.958; not 0.952, 0.954, 0.955, ...
    assert all(low <= v <= high for v in values)
    for (position, _), v in zip(marks, values):  # each label sits where its value does, best at the top
        share = (v - low) / (high - low)
        assert position == pytest.approx(1 - share if metric == "loss" else share)


def test_linear_axes_of_parallel_coordinates_print_the_digits_their_step_needs():
    for low, high in ((0.9, 0.9593), (0.0, 0.6), (16, 128), (1e-5, 3e-5)):
        texts = [text for _, text in parallel.round_ticks(low, high)]
        values = [float(t) for t in texts]
        assert len(set(texts)) == len(texts) and len({round(b - a, 12) for a, b in zip(values, values[1:])}) == 1


# ---- item 12: one unreadable cell never breaks the summary ----

@pytest.fixture
def broken_cells(tmp_path):
    """Healthy cells, and beside them one with an unreadable params.json, one with a corrupt status.json and one
    whose metric is NaN."""
    p = str(tmp_path / "lr")
    write(os.path.join(p, "params.json"), {"num_epochs": 3, "hyper_search": {
        "learning_rate": [0.1, 0.01, 0.03, 0.001, 0.02, 0.05]}})
    for lr, acc in ((0.1, 0.80), (0.01, 0.95), (0.03, 0.90)):
        make_run(p, f"learning_rate_{lr}", {"learning_rate": lr, "num_epochs": 3}, acc=acc)
    bad_params = make_run(p, "learning_rate_0.001", {"learning_rate": 0.001, "num_epochs": 3}, acc=0.85)
    write(os.path.join(bad_params, "params.json"), '{"learning_rate": 0.0')
    bad_status = make_run(p, "learning_rate_0.02", {"learning_rate": 0.02, "num_epochs": 3}, acc=0.91)
    write(os.path.join(bad_status, "status.json"), '{"status": "comp')
    nan = make_run(p, "learning_rate_0.05", {"learning_rate": 0.05, "num_epochs": 3}, acc=0.7)
    write(os.path.join(nan, "metrics_val_best_weights.json"), '{"accuracy": NaN, "loss": NaN, "epoch": 3}')
    return p


def test_a_cell_with_unreadable_params_is_left_out_of_which_keys_mattered_not_the_reason_it_fails(broken_cells):
    p = broken_cells
    assert synthesize_results.main(["--parent_dir", p]) == 0
    md = open(os.path.join(p, "results.md")).read()
    header = [c.strip() for c in md.splitlines()[0].strip("|").split("|")]
    assert header[:4] == ["folder", "learning_rate", "num_epochs", "status"]  # the keys set, not every key
    rows = {r[0]: r for r in table_rows(md.split("## Which")[0])}
    assert len(rows) == 6 and rows["learning_rate_0.001"][1] == "" and "unreadable params.json" in rows[
        "learning_rate_0.001"][-1]
    assert "unreadable status.json" in rows["learning_rate_0.02"][-1]
    assert list(rows)[-1] == "learning_rate_0.05"  # a NaN ranks last
    section = md.split("## Which keys mattered")[1]
    assert "of 4 cells" in section and "Left out, their searched values unknown" in section
    assert "learning_rate_0.001" in section and "| learning_rate |" in section
    assert len(csv_folders(p)) == 6
    assert plot_results.main(["--parent_dir", p]) == 0
    for name in ("history_plots.png", "parallel.png", "parallel.html"):
        assert os.path.getsize(os.path.join(p, name)) > 1000

