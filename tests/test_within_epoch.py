"""Validation within an epoch (val_every_batches): rows at fractional epochs in history.json's "checks", one log line
each, a finer valid curve in train_history.png; the weights and the end-of-epoch rows of a run without them; exact
after a SIGKILL and a resume, as are the prediction snapshots (gallery/); what a search reads (ASHA's rung values,
results tables) stays the epochs'."""

import json
import os

import pytest
import torch
from PIL import Image, ImageChops

from conftest import assert_one_line_error, assert_same_weights, kill_mid_run_then_resume, read, run_train
from core.search import asha, results


@pytest.mark.slow
def test_checks_snapshots_and_recomputed_blocks_sigkilled_and_resumed_equal_uninterrupted_runs(make_experiment,
                                                                                               digits_dir):
    """The killed run also recomputes its blocks (grad_checkpointing, tests/test_activations.py): one SIGKILL test
    for both features, each of which must change nothing the run learns."""
    params = {"num_epochs": 3, "val_every_batches": 4, "ps": 0.3, "augmentation": "light", "ema_decay": 0.9,
              "plot_every_s": 0}  # every new best's gallery is drawn and kept: gallery/epoch_NNN.png
    whole, killed = make_experiment("whole", **params), make_experiment("killed", **params, grad_checkpointing=1)
    a, b = kill_mid_run_then_resume(whole, killed, digits_dir, kills=3)
    plain = make_experiment("plain", **{**params, "val_every_batches": 0})
    assert run_train(plain, digits_dir) == 0
    c = torch.load(os.path.join(plain, "last.pth.tar"), weights_only=True)
    assert a["epoch"] == b["epoch"] == c["epoch"] == 3
    assert_same_weights(a, b, parts=("model", "ema", "optimizer"))
    assert_same_weights(a, c, parts=("model", "ema", "optimizer"))
    assert "gradient checkpointing: 4 blocks" in open(os.path.join(killed, "train.log")).read()

    histories = [read(os.path.join(d, "history.json")) for d in (whole, killed, plain)]
    # 400 images in batches of 32: 13 a epoch, checked after batches 4, 8 and 12 (13 ends the epoch)
    assert [r["epoch"] for r in histories[0]["checks"]] == [round(e + k / 13, 4) for e in range(3) for k in (4, 8, 12)]
    assert [r["batch"] for r in histories[0]["checks"]] == [4, 8, 12] * 3
    assert histories[0]["checks"] == histories[1]["checks"]  # the killed epoch's checks were redone, not doubled
    assert "checks" not in histories[2]
    strip = lambda rows: [{k: r[k] for k in ("epoch", "lr", "train", "val")} for r in rows]  # noqa: E731
    assert strip(histories[0]["epochs"]) == strip(histories[1]["epochs"]) == strip(histories[2]["epochs"])
    log = open(os.path.join(whole, "train.log")).read()
    assert "epoch 1.31 (batch 4/13)  valid: loss" in log

    # the prediction snapshots: the epochs the resumed run trained are drawn as the uninterrupted run drew them;
    # the epoch the kill interrupted may miss its picture (the drawing helper dies with the run)
    kept = [sorted(os.listdir(os.path.join(d, "gallery"))) for d in (whole, killed)]
    trained_again = [name for name in kept[0] if int(name[6:9]) >= 2]
    assert trained_again and set(trained_again) <= set(kept[1]) <= set(kept[0])
    for name in kept[1]:
        a, b = (Image.open(os.path.join(d, "gallery", name)).convert("RGB") for d in (whole, killed))
        differ = ImageChops.difference(a, b).getbbox()  # None: the same pixels
        assert a.size == b.size and (differ is None or differ[3] <= 30), name  # but the title, naming the folder


def test_a_search_reads_the_epochs_not_the_checks(tmp_path):
    """ASHA's rung values and the results table read end-of-epoch rows only, whatever checks lie between."""
    cell = tmp_path / "cell"
    cell.mkdir()
    epochs = [{"epoch": e, "lr": [0.1], "train": {"loss": 1.0}, "val": {"loss": 1.0, "accuracy": 0.1 * e}}
              for e in (1, 2)]
    checks = [{"epoch": 1.5, "batch": 4, "lr": [0.1], "val": {"loss": 0.1, "accuracy": 0.99}}]
    (cell / "history.json").write_text(json.dumps({"classes": ["a", "b"], "epochs": epochs, "checks": checks}))
    assert results.checked_history({"folder": str(cell)}) == epochs
    assert asha.read_progress(str(cell), "accuracy").values == {1: 0.1, 2: 0.2}


def test_a_negative_interval_is_one_line(make_experiment, capsys):
    import train

    exp = make_experiment("bad", val_every_batches=-1)
    assert_one_line_error(lambda: train.main(["--model_dir", exp]), capsys, exp, "val_every_batches", exp)
