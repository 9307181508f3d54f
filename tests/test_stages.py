"""Training plans (core/stages.py): freezing, each stage's own schedule, resume and search across stage boundaries,
and every bad stages entry refused in one line."""

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import (
    ROOT,
    assert_one_line_error,
    assert_same_weights,
    kill_mid_run_then_resume,
    read,
    run_train,
    train_cmd,
)
from core.rundir.plots import stage_boundaries

FROZEN_THEN_STEP = [{"num_epochs": 2, "freeze": "body", "learning_rate": 0.01, "scheduler": "none"},
                    {"num_epochs": 2, "learning_rate": 0.004, "scheduler": "step", "step_size": 1, "gamma": 0.5}]


def checkpoint(folder):
    return torch.load(os.path.join(folder, "last.pth.tar"), map_location="cpu", weights_only=True)


def initial_weights(folder, data_dir):
    """The weights a run of `folder` starts from, built as train.py builds them."""
    from core.config import load_params
    from core.data.loaders import fetch_dataloader
    from core.training.engine import pick_runtime, seed_everything
    from core.training.state import build_state

    params = load_params(os.path.join(folder, "params.json"))
    seed_everything(params.seed)
    loaders, classes = fetch_dataloader(["train", "valid"], data_dir, params)
    state, _ = build_state(params, classes, pick_runtime(0), loaders["train"], folder)
    return {k: v.clone() for k, v in state.model.state_dict().items()}


def test_a_frozen_body_and_its_batchnorm_are_unchanged_through_stage_0_and_train_in_stage_1(make_experiment,
                                                                                               digits_dir):
    exp = make_experiment(num_epochs=4, stages=FROZEN_THEN_STEP)
    start = initial_weights(exp, digits_dir)
    assert run_train(exp, digits_dir, "--stop_at_epoch", "2") == 0
    after_0 = checkpoint(exp)
    assert run_train(exp, digits_dir, "--restore_file", "last") == 0
    after_1 = checkpoint(exp)

    body = [k for k in start if not k.startswith("head.")]
    assert any("running_mean" in k for k in body) and any(k.startswith("head.") for k in start)
    assert all(torch.equal(start[k], after_0["model"][k]) for k in body)  # weights and BatchNorm statistics
    assert not torch.equal(start["head.1.weight"], after_0["model"]["head.1.weight"])
    changed = [k for k in body if not torch.equal(after_0["model"][k], after_1["model"][k])]
    assert any("running_mean" in k for k in changed) and any(k.endswith("0.weight") for k in changed)
    # stage 0's optimizer held only the head: no state, no decay for what was frozen
    assert len(after_0["optimizer"]["state"]) == 2 and len(after_1["optimizer"]["state"]) == len(start) - sum(
        "running" in k or "num_batches" in k for k in start)

    history = read(os.path.join(exp, "history.json"))["epochs"]
    assert [r["stage"] for r in history] == [0, 0, 1, 1]
    assert stage_boundaries(history) == [(2.5, 1)]  # where train_history.png draws stage 1's line
    # each stage its own schedule over its own epochs (the rate each epoch trained with): constant 0.01, then
    # 0.004 halved after every epoch
    assert [r["lr"][-1] for r in history] == pytest.approx([0.01, 0.01, 0.004, 0.002])
    assert all(not r.get("grad_warnings") for r in history)  # frozen layers are not 'vanishing'
    assert set(history[0]["grad_norm"]) == {"head.1.weight"} and len(history[2]["grad_norm"]) > 1
    session = read(os.path.join(exp, "record.json"))["sessions"][0]
    assert session["stages"] == FROZEN_THEN_STEP


@pytest.mark.slow
@pytest.mark.parametrize("epochs", [[1, 2], [2, 1]], ids=["resume-at-the-boundary", "resume-before-it"])
def test_sigkill_across_a_stage_boundary_then_resume_is_bit_identical(make_experiment, digits_dir, epochs):
    """The kill lands in epoch 2: the first of stage 1 (the resume builds the new stage), or the last of stage 0
    (the resume crosses the boundary itself). Stage 1 changes batch size, EMA, accumulation and the loss. A frozen
    epoch is quick, so only a one-epoch stage 0 is frozen: the kill must not come after the run has ended."""
    stages = [{"num_epochs": epochs[0], "freeze": "body" if epochs[0] == 1 else "none", "learning_rate": 0.01},
              {"num_epochs": epochs[1], "learning_rate": [0.001, 0.004], "batch_size": 16, "ema_decay": 0.9,
               "accumulate_steps": 2, "grad_clip": 1.0, "label_smoothing": 0.1}]
    whole = make_experiment("whole", num_epochs=3, stages=stages, train_subset=400)
    killed = make_experiment("killed", num_epochs=3, stages=stages, train_subset=400)
    a, b = kill_mid_run_then_resume(whole, killed, digits_dir, after_first_epoch_s=0.4, kills=2)
    assert "resuming at epoch" in open(os.path.join(killed, "train.log")).read()
    assert_same_weights(a, b)
    assert read(os.path.join(whole, "history.json"))["epochs"][-1]["val"] == \
        read(os.path.join(killed, "history.json"))["epochs"][-1]["val"]


def test_plan_fine_tune_trains_the_head_then_everything_with_discriminative_rates(make_experiment, digits_dir):
    exp = make_experiment(num_epochs=2, plan="fine_tune", learning_rate=0.004)
    assert run_train(exp, digits_dir) == 0
    history = read(os.path.join(exp, "history.json"))["epochs"]
    assert [r["stage"] for r in history] == [0, 1] and len(history[0]["lr"]) == 1 and len(history[1]["lr"]) == 3
    stages = read(os.path.join(exp, "params_effective.json"))["stages"]
    assert stages[0]["freeze"] == "body" and stages[1]["learning_rate"] == pytest.approx([2e-5, 2e-4, 2e-3])


@pytest.mark.parametrize("stages, named, message", [
    ([{"num_epochs": 2, "arch": "resnet18"}], "params.json: stages.0: key 'arch'", "cannot change within a run"),
    ([{"learning_rate": 0.1}], "params.json: stages.0: key 'num_epochs'", "must be an int >= 1"),
    ([{"num_epochs": 1}, {"num_epochs": 1, "freeze": 3}], "params.json: stages.1: key 'freeze' 3",
     "leaves nothing to train"),
    ([{"num_epochs": 2, "freeze": "head"}], "params.json: stages.0: key 'freeze'", "must be \"none\", \"body\""),
    ([{"num_epochs": 2, "scheduler": "warp"}], "params.json: stages.0: key 'scheduler'", "must be one of"),
    ([{"num_epochs": 2, "loss": {"focal": 1}}], "params.json: stages.0: unknown key 'loss.focal'", "did you mean"),
    ([{"num_epochs": 2, "loss": {"dice": 1}}], "params.json: stages.0: key 'loss.dice' is 1",
     "not a loss term of classification (its terms: ce)"),
    ({"num_epochs": 2}, "params.json: key 'stages'", "expects a list of objects"),
    ([{"num_epochs": 1}, {"num_epochs": 2}], "params.json: key 'num_epochs' is 2", "the stages add up to 3"),
])
def test_every_bad_stages_entry_is_one_line_and_writes_nothing(make_experiment, digits_dir, capsys, stages, named,
                                                               message):
    exp = make_experiment(stages=stages)
    assert_one_line_error(lambda: run_train(exp, digits_dir), capsys, f"{exp}/{named}", message, exp)


def test_a_stage_key_of_a_search_must_name_an_existing_stage(tmp_path, digits_dir):
    parent = tmp_path / "search"
    parent.mkdir()
    (parent / "params.json").write_text(json.dumps({"stages": [{"num_epochs": 1}],
                                                    "hyper_search": {"stages.1.learning_rate": [0.1, 0.2]}}))
    proc = subprocess.run([sys.executable, "search_hyperparams.py", "--parent_dir", str(parent), "--dry_run"],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and "key 'stages.1.learning_rate': params.json has no stage 1" in proc.stderr
    assert os.listdir(parent) == ["params.json"]


@pytest.mark.slow
def test_a_successive_halving_search_over_a_stage_key_with_rungs_in_both_stages(tmp_path, digits_dir):
    from conftest import FAST_PARAMS

    parent = tmp_path / "search"
    parent.mkdir()
    stages = [{"num_epochs": 1, "freeze": "body", "learning_rate": 0.01}, {"num_epochs": 2}]
    hyper = {"stages.1.learning_rate": [0.0005, 0.002, 0.008],
             "schedule": {"type": "asha", "min_epochs": 1, "reduction_factor": 3}}
    params = {**FAST_PARAMS, "num_epochs": 3, "stages": stages, "hyper_search": hyper}
    (parent / "params.json").write_text(json.dumps(params))
    proc = subprocess.run([sys.executable, "search_hyperparams.py", "--parent_dir", str(parent), "--data_dir",
                           digits_dir, "--workers", "2"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    names = [f"stages.1.learning_rate_{lr}" for lr in (0.0005, 0.002, 0.008)]
    assert sorted(d for d in os.listdir(parent) if d.startswith("stages")) == sorted(names)  # readable names
    statuses = {n: read(parent / n / "status.json")["status"] for n in names}
    assert sorted(statuses.values()) == ["completed", "pruned", "pruned"]
    promoted = parent / next(n for n, s in statuses.items() if s == "completed")
    assert [r["stage"] for r in read(promoted / "history.json")["epochs"]] == [0, 1, 1]  # rung 1 in stage 0
    assert "paused at epoch 1" in (promoted / "train.log").read_text()
    assert "stages.1.learning_rate" in (parent / "results.md").read_text().splitlines()[0]

    fresh = tmp_path / "fresh"  # the same cell, never paused at the stage boundary
    fresh.mkdir()
    (fresh / "params.json").write_text((promoted / "params.json").read_text())
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    subprocess.run(train_cmd(str(fresh), digits_dir), cwd=ROOT, env=env, check=True, capture_output=True)
    a, b = checkpoint(promoted)["model"], checkpoint(fresh)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_stage_key_the_task_cannot_honour_is_refused_like_the_run_key(tmp_path, boxes_dir, capsys):
    from conftest import DET_PARAMS

    exp = tmp_path / "det"
    exp.mkdir()
    stages = [{"num_epochs": 1}, {"num_epochs": 1, "mixup_alpha": 0.2}]
    (exp / "params.json").write_text(json.dumps({**DET_PARAMS, "num_epochs": 2, "stages": stages}))
    assert_one_line_error(lambda: run_train(str(exp), boxes_dir), capsys, f"{exp}/params.json: key 'mixup_alpha'",
                          "not for detection", str(exp))
