"""The training recipe keys (label_smoothing, class_weights, mixup/cutmix, grad_clip, accumulate_steps, ema_decay,
compile, wd_norm_bias) and evaluate.py's per-class report: each key's effect, and resume with all of them on."""

import os
import shutil

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from test_train import StopAfter

import evaluate
import synthesize_results
from conftest import assert_same_weights, read, run_train
from core.config import Params, resolve
from core.tasks import TASKS
from core.training.compiling import compile_model
from core.training.engine import pick_runtime
from core.training.optim import build_optimizer, build_scheduler, layer_lrs, optimizer_steps
from core.training.state import BestTracker, TrainingState, build_ema, evaluated_weights
from model.classification.data_loader import build_batch_mix
from model.classification.loss import build_loss, class_weight_tensor
from model.classification.metrics import METRICS, EpochMetrics
from model.classification.net import SmallCNN
from model.loop import optimizer_step, train_one_epoch
from utils import UserError, load_checkpoint

classification = TASKS["classification"]
RARE = {"0": 0.1, "1": 0.1}  # the imbalanced digits: 10 % of the 0s and 1s kept
ALL_KEYS = {"label_smoothing": 0.1, "class_weights": "balanced", "mixup_alpha": 0.4, "cutmix_alpha": 1.0,
            "mix_prob": 0.8, "grad_clip": 1.0, "accumulate_steps": 2, "ema_decay": 0.9}


def params(**kw):
    return Params(resolve(kw, "test"))


@pytest.fixture(scope="module")
def imbalanced_dir(tmp_path_factory):
    from data.digits import build_digits

    return build_digits(str(tmp_path_factory.mktemp("data") / "imbalanced"), keep=RARE)


# ---------------------------------------------------------------- loss and labels


def test_label_smoothing_raises_the_loss_of_confident_right_answers_and_takes_soft_targets():
    logits, y = torch.tensor([[8.0, 0, 0], [0, 8.0, 0]]), torch.tensor([0, 1])
    plain, smooth = build_loss(params(), [1, 1, 1]), build_loss(params(label_smoothing=0.2), [1, 1, 1])
    assert plain(logits, y) == pytest.approx(F.cross_entropy(logits, y).item())
    assert smooth(logits, y) > plain(logits, y) + 0.5
    soft = F.one_hot(y, 3).float()
    assert smooth(logits, soft) == pytest.approx(smooth(logits, y).item())  # probabilities work like indices


def test_balanced_class_weights_follow_the_counts():
    w = class_weight_tensor("balanced", [10, 30, 60])
    assert w.tolist() == pytest.approx([100 / 30, 100 / 90, 100 / 180])
    assert class_weight_tensor(None, [1, 2]) is None and class_weight_tensor([1, 2], [5, 5]).tolist() == [1, 2]
    assert class_weight_tensor("balanced", [0, 4]).isfinite().all()  # a class absent from training


def test_balanced_weights_on_imbalanced_data_change_the_training(make_experiment, imbalanced_dir):
    from core.data.loaders import fetch_dataloader
    p = params(train_subset=0, im_sz=24)
    loaders, classes = fetch_dataloader(["train"], imbalanced_dir, p)
    counts = classification.class_counts(loaders["train"].dataset, len(classes))
    assert counts[0] < counts[5] / 5  # the data set really is imbalanced
    w = class_weight_tensor("balanced", counts)
    assert w[0] > 4 * w[5]
    runs = {}
    for cw in (None, "balanced"):
        exp = make_experiment(f"cw_{cw}", num_epochs=1, class_weights=cw, train_subset=300)
        assert run_train(exp, imbalanced_dir) == 0
        runs[cw] = read(os.path.join(exp, "history.json"))["epochs"][0]
    assert runs[None]["train"]["loss"] != runs["balanced"]["train"]["loss"]
    assert runs[None]["val"]["balanced_accuracy"] != runs[None]["val"]["accuracy"]


# ---------------------------------------------------------------- mixing


def test_batch_mix_gives_probabilities_and_is_off_by_default():
    assert build_batch_mix(params(), 10) is None
    x, y = torch.randn(6, 3, 8, 8), torch.arange(6)
    for kw in ({"mixup_alpha": 1.0}, {"cutmix_alpha": 1.0}, {"mixup_alpha": 1.0, "cutmix_alpha": 1.0}):
        mx, my = build_batch_mix(params(**kw), 10)(x, y)
        assert my.shape == (6, 10) and torch.allclose(my.sum(1), torch.ones(6)) and not torch.equal(mx, x)
    never = build_batch_mix(params(mixup_alpha=1.0, mix_prob=0.0), 10)
    assert never(x, y)[1] is y


def test_mixed_epochs_report_the_loss_only():
    m = EpochMetrics(3, torch.device("cpu"))
    m.update(torch.tensor([[3.0, 0, 0], [0, 3.0, 0]]), None, torch.tensor(0.5))
    assert m.compute() == {"loss": 0.5}


# ---------------------------------------------------------------- optimisation


def tiny_state(model, accumulate_steps=1, grad_clip=0.0, lr=0.1):
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    return TrainingState(classification, model, opt, None, BestTracker("loss", True, 0.0, 0), per_batch=False,
                         criterion=F.cross_entropy, accumulate_steps=accumulate_steps, grad_clip=grad_clip, n_classes=3)


def linear():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 3))


def test_accumulated_gradients_equal_one_big_batch_with_a_short_last_group():
    torch.manual_seed(1)
    x, y = torch.randn(12, 3, 2, 2), torch.randint(0, 3, (12,))
    rt = pick_runtime(0)
    small = [(x[i:i + 4], y[i:i + 4]) for i in (0, 4, 8)]  # accumulated as [b0 b1] [b2]
    big = [(x[:8], y[:8]), (x[8:], y[8:])]
    a, b = tiny_state(linear(), accumulate_steps=2), tiny_state(linear())
    train_one_epoch(a, small, rt)
    train_one_epoch(b, big, rt)
    for pa, pb in zip(a.model.parameters(), b.model.parameters()):
        assert torch.allclose(pa, pb, atol=1e-6)


def test_accumulation_steps_the_optimizer_and_schedule_per_group():
    assert [optimizer_steps(n, 2) for n in (1, 4, 5)] == [1, 2, 3]
    p = params(accumulate_steps=2, num_epochs=1)
    model = SmallCNN(3)
    opt = build_optimizer(p, model, classification)
    sched = build_scheduler(p, opt, optimizer_steps(5, 2))
    state = TrainingState(classification, model, opt, sched, BestTracker("loss", True, 0.0, 0), per_batch=True,
                          criterion=F.cross_entropy, accumulate_steps=2, n_classes=3)
    steps = []
    opt.register_step_post_hook(lambda *a: steps.append(1))
    batches = [(torch.randn(4, 3, 16, 16), torch.randint(0, 3, (4,))) for _ in range(5)]
    train_one_epoch(state, batches, pick_runtime(0))
    assert len(steps) == 3 and sched.last_epoch == 3  # one_cycle ran its whole schedule, no more


def test_grad_clip_bounds_the_update():
    for clip, bounded in ((0.0, False), (0.01, True)):
        model = linear()
        state = tiny_state(model, grad_clip=clip, lr=1.0)
        before = [p.detach().clone() for p in model.parameters()]
        (model(torch.randn(4, 3, 2, 2)).sum() * 100).backward()
        optimizer_step(state, None, 0, None)
        moved = torch.cat([(p - b).flatten() for p, b in zip(model.parameters(), before)]).norm().item()
        assert (moved <= 0.01 + 1e-6) == bounded, moved


def test_no_weight_decay_on_norm_and_bias_parameters_by_default():
    model = SmallCNN(3)
    for flag, expect_zero in ((0, True), (1, False)):
        opt = build_optimizer(params(wd_norm_bias=flag, learning_rate=[1e-3, 1e-2]), model, classification)
        decay_of = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
        for p in model.parameters():
            assert decay_of[id(p)] == (0.0 if p.dim() == 1 and expect_zero else 1e-4)
        assert layer_lrs(opt) == [1e-3, 1e-2]  # one rate per layer group, however the groups are split


def test_compile_falls_back_to_eager_with_a_message(monkeypatch):
    def broken(fn, **kw):
        def call(*a, **k):
            raise RuntimeError("no C++ compiler found")
        return call

    model = SmallCNN(3)
    monkeypatch.setattr(torch, "compile", broken)
    note = compile_model(model, torch.randn(2, 3, 16, 16), pick_runtime(0))
    assert "training eager" in note and "no C++ compiler found" in note
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 3)  # still the eager model
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: fn)  # a compiler that works
    assert "training with torch.compile" in compile_model(model, torch.randn(2, 3, 16, 16), pick_runtime(0))
    assert model._compiled_call_impl is not None and all("_orig_mod" not in k for k in model.state_dict())


@pytest.mark.slow
@pytest.mark.skipif(not shutil.which("c++"), reason="torch.compile on the CPU needs a C++ compiler")
def test_compile_for_real_matches_eager():
    torch.manual_seed(0)
    model, x = SmallCNN(3).eval(), torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        eager = model(x)
    assert "training with torch.compile" in compile_model(model, x, pick_runtime(0))
    with torch.no_grad():
        assert torch.allclose(model(x), eager, atol=1e-4)


def test_compile_key_trains_through_the_fallback(make_experiment, digits_dir, monkeypatch):
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: (lambda *a, **k: (_ for _ in ()).throw(OSError("no cc"))))
    exp = make_experiment(num_epochs=1, compile=1, train_subset=64)
    assert run_train(exp, digits_dir) == 0
    assert "training eager instead (OSError: no cc)" in open(os.path.join(exp, "train.log")).read()


def test_ema_warms_up_then_keeps_its_decay():
    model = linear()
    ema = build_ema(model, 0.9)
    weights = []
    for _ in range(200):
        with torch.no_grad():
            model[1].bias.add_(1.0)  # one "step": the raw bias grows by 1
        ema.update_parameters(model)
        weights.append(ema.module[1].bias.clone())
    raw = model[1].bias
    assert torch.allclose(weights[0], raw - 199)  # the first update copies
    assert torch.allclose(weights[1], 2 / 11 * weights[0] + 9 / 11 * (raw - 198))  # d = (1 + 1) / (10 + 1)
    lag = (raw - weights[-1]).mean().item()
    assert lag == pytest.approx(0.9 / 0.1, rel=0.01)  # d reached 0.9 at n = 80: it lags 9 steps behind


# ---------------------------------------------------------------- resume and EMA, every key on


def test_resume_with_every_recipe_key_on_is_bit_identical(make_experiment, digits_dir, monkeypatch):
    keys = dict(ALL_KEYS, num_epochs=3, train_subset=200, valid_subset=0)
    whole = make_experiment("whole", **keys)
    assert run_train(whole, digits_dir) == 0
    resumed = make_experiment("resumed", **keys)
    with monkeypatch.context() as m:
        StopAfter(m, 1)
        with pytest.raises(KeyboardInterrupt):
            run_train(resumed, digits_dir)
    assert run_train(resumed, digits_dir, "--restore_file", "last") == 0
    a, b = (load_checkpoint(os.path.join(d, "last.pth.tar")) for d in (whole, resumed))
    assert_same_weights(a, b)
    assert a["optimizer"]["state"][0]["exp_avg"].equal(b["optimizer"]["state"][0]["exp_avg"])
    # the EMA is its own weights, it is what was validated, and it is what best.pth.tar and evaluate.py use
    ema, raw = evaluated_weights(a), a["model"]
    assert a["weights"] == "ema" and set(ema) == set(raw) and not torch.equal(ema["head.1.weight"],
                                                                              raw["head.1.weight"])
    history = read(os.path.join(whole, "history.json"))["epochs"]
    assert list(history[0]["train"]) == ["loss"]  # mixed batches: no training accuracy
    assert evaluate.main(["--model_dir", whole, "--data_dir", digits_dir, "--split", "valid"]) == 0
    evaluated, validated = (read(os.path.join(whole, f)) for f in ("metrics_valid_best_weights.json",
                                                                  "metrics_val_best_weights.json"))
    assert evaluated["weights"] == "ema" and evaluated["accuracy"] == validated["accuracy"]
    assert evaluated["loss"] == pytest.approx(validated["loss"], rel=1e-6)


# ---------------------------------------------------------------- evaluate.py's report


def test_evaluate_reports_per_class_metrics_and_keeps_tta_apart(make_experiment, imbalanced_dir, capsys):
    exp = make_experiment(num_epochs=1, train_subset=300)
    assert run_train(exp, imbalanced_dir) == 0
    assert evaluate.main(["--model_dir", exp, "--data_dir", imbalanced_dir]) == 0
    plain = read(os.path.join(exp, "metrics_test_best_weights.json"))
    assert list(plain["per_class"]) == [str(d) for d in range(10)] and plain["tta"] == "none"
    n_test = sum(len(files) for _, _, files in os.walk(os.path.join(imbalanced_dir, "test")))
    assert sum(c["support"] for c in plain["per_class"].values()) == n_test
    assert plain["per_class"]["0"]["support"] < plain["per_class"]["5"]["support"] / 5
    recalls = [c["recall"] for c in plain["per_class"].values()]
    assert plain["balanced_accuracy"] == pytest.approx(sum(recalls) / 10)  # scikit-learn's, and ours agrees
    report = open(os.path.join(exp, "report_test_best_weights.md")).read()
    assert "| class" in report and "macro mean" in report and "balanced accuracy" in report
    assert os.path.getsize(os.path.join(exp, "confusion_test_best_weights.png")) > 1000

    before = open(os.path.join(exp, "metrics_test_best_weights.json")).read()
    assert evaluate.main(["--model_dir", exp, "--data_dir", imbalanced_dir, "--tta", "hflip"]) == 0
    tta = read(os.path.join(exp, "metrics_test_best_weights_tta_hflip.json"))
    assert tta["tta"] == "hflip" and tta["loss"] != plain["loss"]
    assert os.path.exists(os.path.join(exp, "report_test_best_weights_tta_hflip.md"))
    assert open(os.path.join(exp, "metrics_test_best_weights.json")).read() == before  # not overwritten

    table = synthesize_results.synthesize(os.path.dirname(exp), metric="balanced_accuracy")
    assert "val_balanced_accuracy" in table and "test_balanced_accuracy" in table


def test_balanced_accuracy_metric_matches_scikit_learn():
    from sklearn.metrics import balanced_accuracy_score

    y, pred = [0, 0, 0, 1, 2, 2], [0, 1, 0, 1, 0, 2]
    cm = torch.zeros(4, 4, dtype=torch.float64)  # class 3 never occurs: not counted
    for t, p in zip(y, pred):
        cm[t, p] += 1
    assert METRICS["balanced_accuracy"].formula({"cm": cm, "n": 6}) == pytest.approx(balanced_accuracy_score(y, pred))


def test_a_checkpoint_older_than_the_recipe_keys_resumes_with_what_it_did(make_experiment, digits_dir):
    """A run trained before these keys existed: its checkpoint lacks them and decayed every parameter."""
    exp = make_experiment(num_epochs=2, wd_norm_bias=1)
    assert run_train(exp, digits_dir, "--stop_at_epoch", "1") == 0
    path = os.path.join(exp, "last.pth.tar")
    ckpt = torch.load(path, weights_only=True)
    for key in ("label_smoothing", "class_weights", "mixup_alpha", "cutmix_alpha", "mix_prob", "grad_clip",
                "accumulate_steps", "ema_decay", "compile", "wd_norm_bias"):
        ckpt["params"].pop(key, None)
    for group in ckpt["optimizer"]["param_groups"]:
        group.pop("layer_group", None)
    torch.save(ckpt, path)
    with pytest.raises(UserError, match=r"wd_norm_bias: 1 -> 0"):
        run_train(exp, digits_dir, "--restore_file", "last", "wd_norm_bias=0")
    assert run_train(exp, digits_dir, "--restore_file", "last") == 0  # params.json says wd_norm_bias 1: as it ran
    assert [r["epoch"] for r in read(os.path.join(exp, "history.json"))["epochs"]] == [1, 2]


def test_compile_that_fails_at_once_also_falls_back(monkeypatch):
    def unsupported(fn, **kw):  # torch.compile checks the platform when called, before any batch
        raise RuntimeError("Python 3.99 is not supported by torch.compile")

    monkeypatch.setattr(torch, "compile", unsupported)
    model = SmallCNN(3)
    assert "training eager" in compile_model(model, torch.randn(2, 3, 16, 16), pick_runtime(0))
    assert model._compiled_call_impl is None


def test_deterministic_turns_deterministic_kernels_on_and_off_again():
    pick_runtime(0, deterministic=True)
    assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    pick_runtime(0)  # the next run in this process: as its params say
    assert not torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.deterministic


def test_class_weights_scale_mixed_and_plain_batches_alike():
    p = Params(resolve({"class_weights": [1.0, 1.0, 5.0]}, "t"))
    loss = build_loss(p, [10, 10, 10])
    logits, labels = torch.randn(6, 3), torch.tensor([0, 1, 2, 2, 1, 0])
    one_hot = F.one_hot(labels, 3).float()
    assert torch.allclose(loss(logits, labels), loss(logits, one_hot))  # same targets, same loss
    scaled = build_loss(Params(resolve({"class_weights": [10.0, 10.0, 50.0]}, "t")), [10, 10, 10])
    assert torch.allclose(scaled(logits, one_hot), loss(logits, one_hot))  # a uniform factor changes nothing


def test_tta_loss_stays_finite_for_a_confident_wrong_answer():
    from model.classification.report import predictor

    model = nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[120.0, 0.0], [0.0, 0.0]]))
        model.bias.zero_()
    x = torch.tensor([[[[1.0, 1.0]]]]).squeeze(0)  # [1, 1, 2]: flipping the last dim keeps it
    logits = predictor(None, "hflip")(lambda t: model(t.reshape(1, 2)), x.unsqueeze(0))
    assert torch.isfinite(F.cross_entropy(logits, torch.tensor([1])))


def test_overfit_check_learns_its_batches_unmixed(make_experiment, digits_dir):
    exp = make_experiment(overfit_batches=1, num_epochs=25, learning_rate=0.01, ps=0.0, mixup_alpha=1.0,
                          cutmix_alpha=1.0, early_stopping={"patience": 0})
    assert run_train(exp, digits_dir) == 0
    assert read(os.path.join(exp, "status.json"))["overfit_check"]["passed"]


def test_report_leaves_absent_classes_out_of_the_means():
    from model.classification.report import report_markdown

    per_class = {"a": {"precision": 1.0, "recall": 0.5, "f1": 0.6667, "support": 4},
                 "b": {"precision": 0.5, "recall": 1.0, "f1": 0.6667, "support": 2},
                 "c": {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}}
    text = report_markdown({"per_class": per_class, "accuracy": 0.6667, "balanced_accuracy": 0.75}, "t")
    macro = next(line for line in text.splitlines() if "macro mean" in line)
    assert "0.7500" in macro and "| c " in text.split("macro mean")[0] and "n/a" in text and "absent" in text
