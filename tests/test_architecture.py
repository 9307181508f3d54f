"""The shape of the code: which module may import which (read from the source, nothing is imported)."""

import ast
import json
import os
import subprocess
import sys

import pytest
from test_config import SEED_TEMPLATE

from conftest import ROOT
from core.config import KEYS, NESTED, resolve
from utils import UserError

WHERE = "exp/params.json"


def error_of(user):
    with pytest.raises(UserError) as e:
        resolve(user, WHERE)
    return str(e.value)

SCRIPTS = {"train", "evaluate", "predict", "search_hyperparams", "synthesize_results", "plot_results"}


def project_imports(path):
    """Modules of this project that `path` imports, at the top or inside functions."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    local = {p.stem for p in ROOT.glob("*.py")} | {"core", "model", "data"}
    return {n for n in names if n.split(".")[0] in local}


def module_name(path):
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def module_graph(folders):
    graph = {}
    for folder in folders:
        for path in (ROOT / folder).rglob("*.py"):
            graph[module_name(path)] = {m for m in project_imports(path) if m.split(".")[0] in folders}
    return graph


def test_core_and_model_never_import_a_script():
    for folder in ("core", "model"):
        for path in (ROOT / folder).rglob("*.py"):
            assert not project_imports(path) & SCRIPTS, path.name


def test_model_imports_nothing_from_core_at_the_top():
    """model/ is what users edit: it may call machinery lazily, but reading it must not mean reading core/. At the
    top it imports only what it builds on: the registry its tasks register in, the image reader and the loss terms."""
    for path in (ROOT / "model").rglob("*.py"):
        top = [n for n in ast.parse(path.read_text()).body if isinstance(n, (ast.Import, ast.ImportFrom))]
        modules = {n.module for n in top if isinstance(n, ast.ImportFrom) and n.module}
        built_on = {"core.tasks", "core.data.images", "core.losses"}
        assert not {m for m in modules if m.startswith("core")} - built_on, path.name


def test_core_imports_nothing_from_model():
    """The machinery reads, tests and runs without the tasks: the scripts import model.tasks, which registers them
    in core/tasks.py (imports inside functions count too)."""
    for path in (ROOT / "core").rglob("*.py"):
        assert not {m for m in project_imports(path) if m.split(".")[0] == "model"}, path.relative_to(ROOT)


def test_core_without_the_tasks_imports_and_asking_it_for_one_is_a_clear_error():
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); import core.config, core.search.pool, core.tasks\n"
            "for ask in (lambda: core.tasks.load('classification'), lambda: core.config.resolve({}, 'p')):\n"
            "    try:\n        ask()\n    except RuntimeError as e:\n        print(e)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == 2 * ["no task registered: model/tasks.py registers them in core/tasks.py when "
                                    "imported; import it before asking core/ for a task"]


def test_no_import_cycle_among_core_model_and_data():
    graph = module_graph(("core", "model", "data"))
    state = {}

    def visit(node, trail):
        if state.get(node) == "open":
            raise AssertionError("import cycle: " + " -> ".join(trail + [node]))
        if state.get(node) == "done":
            return
        state[node] = "open"
        for nxt in graph.get(node, ()):
            visit(nxt, trail + [node])
        state[node] = "done"

    for module in graph:
        visit(module, [])


def test_core_imports_run_down_the_stages_never_back_up():
    """core/training knows no run folder or search; core/rundir knows no search (imports inside functions too)."""
    below = {"core.training": ("core.rundir", "core.search"), "core.rundir": ("core.search",)}
    for module, imports in module_graph(("core",)).items():
        for package, forbidden in below.items():
            if module.startswith(package):
                assert not [m for m in imports if m.startswith(forbidden)], (module, imports)


# ---------------------------------------------------------------- one record per key, one registry of metrics


def test_minimize_follows_the_monitored_metric_and_a_contradiction_is_refused():
    assert resolve({"early_stopping": {"monitor_metric": "loss"}}, WHERE)["early_stopping"]["minimize"] == 1
    assert resolve({"early_stopping": {"monitor_metric": "f1"}}, WHERE)["early_stopping"]["minimize"] == 0
    assert resolve(SEED_TEMPLATE, WHERE)["early_stopping"]["minimize"] == 1  # the seed template says so itself
    msg = error_of({"early_stopping": {"monitor_metric": "loss", "minimize": 0}})
    assert msg == (f"{WHERE}: key 'early_stopping.minimize' is 0 but a smaller loss is better; set it to 1 or "
                   f"leave it out")


def test_monitor_metric_must_be_one_of_the_tasks_metrics(monkeypatch):
    msg = error_of({"early_stopping": {"monitor_metric": "auc"}})
    assert msg == (f"{WHERE}: key 'early_stopping.monitor_metric' is auc, not a metric of task classification "
                   f"(one of loss, accuracy, f1, balanced_accuracy, top5)")
    msg = error_of({"early_stopping": {"monitor_metric": "miou"}})  # a metric, but another task's
    assert msg == (f"{WHERE}: key 'early_stopping.monitor_metric' is miou, not a metric of task classification "
                   f"(one of loss, accuracy, f1, balanced_accuracy, top5)")


def test_a_metric_added_to_the_registry_is_computed_and_ranked():
    import torch

    from core.search.results import minimized
    from model.classification import metrics

    recall_0 = metrics.Metric(lambda s: (s["cm"][0, 0] / s["cm"][0].sum()).item())
    with pytest.MonkeyPatch.context() as m:
        m.setitem(metrics.METRICS, "recall_0", recall_0)
        acc = metrics.EpochMetrics(3, torch.device("cpu"))
        logits = torch.tensor([[3.0, 0, 0], [0, 3.0, 0], [3.0, 0, 0], [0, 0, 3.0]])
        acc.update(logits, torch.tensor([0, 0, 0, 2]), torch.tensor(0.5))
        out = acc.compute()
        assert list(out) == ["loss", "accuracy", "f1", "balanced_accuracy", "recall_0"]  # top5 needs 5 classes
        assert out["recall_0"] == pytest.approx(2 / 3) and out["accuracy"] == 0.75 and out["loss"] == 0.5
        assert not minimized("recall_0") and minimized("loss")


def test_resumable_and_hyperparameter_flags_live_on_the_keys():
    from core.config import fixed_overrides, hyperparams

    assert {k for k, e in KEYS.items() if not e.hyperparam} == {"hyper_search", "n_repetitions"}
    assert KEYS["num_workers"].resumable and not KEYS["learning_rate"].resumable
    assert fixed_overrides("evaluate") == ["pretrain=0", "train_subset=0", "valid_subset=0", "overfit_batches=0"]
    assert fixed_overrides("smoke") == ["cache_images=0", "num_workers=0", "nproc=1", "compile=0",
                                        "val_every_batches=0", "overfit_batches=0"]
    flat = hyperparams({"ps": 0.5, "early_stopping": {"patience": 3}, "n_repetitions": 2,
                        "augmentation": {"transform": {}}})
    assert flat == {"ps": 0.5, "early_stopping.patience": 3, "augmentation": {"transform": {}}}


def test_readme_params_table_lists_every_key_with_its_default():
    """README's params table is written by hand: it must name every key of KEYS, and no other, with its default."""
    import re

    section = (ROOT / "docs" / "params.md").read_text().split("## `params.json`")[1].split("\n\n| key |")[1]
    rows = [line for line in section.split("\n\n")[0].splitlines() if line.startswith("| `")]
    documented = {}
    for row in rows:
        names_cell, default_cell = row.split(" | ")[0], row.split(" | ")[1]
        names = re.findall(r"`([^`]+)`", names_cell)
        defaults_ = [d.strip() for d in default_cell.split(", ")] if len(names) > 1 else [default_cell.strip()]
        documented.update(zip(names, defaults_))
    top = {k.split(".")[0] for k in KEYS}
    assert set(documented) == top
    for key, text in documented.items():
        if key in NESTED or KEYS[key].default is None:
            continue
        default = KEYS[key].default
        shown = text.strip("`")
        assert shown in (json.dumps(default), str(default)) or float(shown) == default, key


# ---------------------------------------------------------------- clear errors at the extension points


def test_a_model_without_a_final_linear_gets_a_one_line_error(make_experiment, digits_dir, monkeypatch):
    import torch.nn as nn

    from conftest import run_train
    from core.tasks import TASKS

    classification = TASKS["classification"]

    def conv_only(params, n_clas):
        return nn.Sequential(nn.Conv2d(3, n_clas, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())

    monkeypatch.setattr(classification.part("net"), "build_model", conv_only)
    exp = make_experiment(num_epochs=1, learning_rate=[0.001, 0.01])
    with pytest.raises(UserError, match="2 rates need layer groups, which end at a final nn.Linear classifier head; "
                                        "Sequential"):
        run_train(exp, digits_dir)
    assert sorted(os.listdir(exp)) == ["params.json"]
    one_rate = make_experiment("one_rate", num_epochs=1, learning_rate=0.001)
    assert run_train(one_rate, digits_dir) == 0  # one rate needs no groups: such a model trains


def test_dry_run_catches_an_unknown_augmentation_preset(tmp_path, digits_dir):
    from conftest import FAST_PARAMS

    parent = tmp_path / "search"
    parent.mkdir()
    (parent / "params.json").write_text(json.dumps({**FAST_PARAMS, "hyper_search": {"augmentation": ["light",
                                                                                                  "lihgt"]}}))
    proc = subprocess.run([sys.executable, "search_hyperparams.py", "--parent_dir", str(parent), "--data_dir",
                           digits_dir, "--dry_run"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("error: cell augmentation_lihgt: params key 'augmentation': unknown preset 'lihgt' "
                                   "(presets: none, light, standard; or an albumentations dict)")
    assert os.listdir(parent) == ["params.json"]


FOCAL = """
import json, sys
sys.path.insert(0, {root!r})
import torch
from model.segmentation import loss
from core.losses import Term

def focal(logits, masks, gamma):
    ce = torch.nn.functional.cross_entropy(logits, masks, reduction="none")
    return ((1 - (-ce).exp()) ** gamma * ce).mean()

loss.TERMS["focal"] = Term(focal, 0.0, "focal loss", {{"gamma": 2.0}})  # the one edit a user makes
from core.config import KEYS, Params, resolve
from core.search.grid import plan
from core.tasks import TASKS
import model.tasks

out = {{"keys": [k for k in KEYS if k.startswith("loss.")]}}
params = resolve({{"task": "segmentation", "loss": {{"ce": 0, "focal": 1, "focal_gamma": 3}}}}, "p")
out["loss"] = params["loss"]
torch.manual_seed(0)
logits, masks = torch.randn(2, 3, 4, 4), torch.randint(0, 3, (2, 4, 4))
task = TASKS["segmentation"]
out["trained"] = task.build_loss(Params(params), [1, 1, 1])(logits, masks).item()
out["by_hand"] = focal(logits, masks, 3).item()
cells = plan({{"task": "segmentation", "stages": [{{"num_epochs": 1, "loss": {{"focal": 1}}}}, {{"num_epochs": 1}}],
              "hyper_search": {{"loss.focal_gamma": [1, 3], "stages.0.loss.focal": [0.5, 1]}}}}, "search")
out["cells"] = [name for name, _, _ in cells]
for bad in ({{"loss": {{"focal": 1}}}}, {{"task": "segmentation", "loss": {{"focal_gamma": "a"}}}}):
    try:
        resolve(bad, "p")
    except Exception as e:
        out.setdefault("errors", []).append(str(e))
print(json.dumps(out))
"""


def test_a_loss_term_added_to_a_tasks_terms_is_a_params_search_and_stage_key_and_trains():
    """Adding a term (with its own setting, focal's gamma) is one edit in the task's loss.py: params, stages and
    the search learn it from the task, and build_loss weighs it."""
    proc = subprocess.run([sys.executable, "-c", FOCAL.format(root=str(ROOT))], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["keys"] == ["loss.ce", "loss.dice", "loss.bce", "loss.focal", "loss.focal_gamma"]
    assert out["loss"] == {"ce": 0, "dice": 0.0, "bce": 0.0, "focal": 1, "focal_gamma": 3}
    assert out["trained"] == pytest.approx(out["by_hand"])
    assert len(out["cells"]) == 4 and any("focal_gamma_3" in name for name in out["cells"])
    assert out["errors"] == ["p: key 'loss.focal' is 1, but it is not a loss term of classification (its terms: ce)",
                             "p: key 'loss.focal_gamma' expects float, got string \"a\""]


def unsupplied(task):
    """The required names (model/task.py required_names) `task` supplies neither in its Task subclass nor in its
    files."""
    from model.task import Task, required_names

    missing = []
    for name in required_names():
        member = vars(Task).get(name)
        if member is None:  # a fact declared without a value
            supplied = hasattr(task, name)
        else:
            file, own = getattr(member, "fget", member).required
            supplied = task.supplies(name, file, own)
        if not supplied:
            missing.append(name)
    return missing


def test_every_task_is_a_task_that_supplies_the_required_names():
    from core import tasks
    from model.task import Task

    for name, task in tasks.TASKS.items():
        assert isinstance(task, Task) and task.name == name
        assert unsupplied(task) == [], name
        assert task.overfit_metric in task.metrics and task.monitor in task.metrics
        assert list(task.metrics)[0] == "loss"


def test_reading_the_tasks_facts_imports_no_torch():
    """Params validation, the search's planning and the result tables read every task's facts: no torch for that."""
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); import core.config, core.search.results, model.tasks; "
            "core.config.resolve({'task': 'segmentation'}, 'p'); core.search.results.minimized('miou'); "
            f"print(sorted(m for m in ('torch', 'albumentations') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_default_data_folder_two_tasks_share_is_built_once(tmp_path, monkeypatch):
    from core import tasks
    from model.task import Task

    built = []

    class Shares(Task):
        data = str(tmp_path / "shared")

        def build_data(self, dst, **options):
            built.append(dst)
            os.makedirs(dst)

    first, second = Shares(), Shares()
    first.name, second.name = "first", "second"
    monkeypatch.setattr(tasks, "TASKS", {"first": first, "second": second})
    assert tasks.ensure_data(str(tmp_path / "shared")) == str(tmp_path / "shared") and len(built) == 1


def test_a_classifier_needs_two_classes_and_refused_keys_come_first():
    from core.config import Params, resolve
    from core.tasks import TASKS

    with pytest.raises(UserError, match="monitor_metric' is accuracy but the data has only 1 classes"):
        TASKS["classification"].check_params(Params(resolve({}, WHERE)), ["only"], WHERE)
    params = Params(resolve({"task": "keypoints", "class_weights": [1, 2]}, WHERE))
    with pytest.raises(UserError, match="key 'class_weights' weighs classes; not for keypoints"):
        TASKS["keypoints"].check_params(params, ["a", "b", "c"], WHERE)


def test_train_py_main_is_an_outline_and_the_run_goes_around_as_one_object():
    """main() fits on a screen, each branch (launch under torchrun, a rank beside rank 0, the run that writes) a
    named function; no function of train.py or of the loop takes more than six positional parameters."""
    sources = {name: ast.parse((ROOT / name).read_text()) for name in ("train.py", "model/loop.py")}
    functions = {f"{name}:{node.name}": node for name, tree in sources.items() for node in ast.walk(tree)
                 if isinstance(node, ast.FunctionDef)}
    main = functions["train.py:main"]
    assert main.end_lineno - main.lineno + 1 <= 30
    called = {n.func.id for n in ast.walk(main) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    assert {"launch_ranks", "prepare", "train_beside_rank_0", "train_and_record"} <= called
    wide = {name: len(f.args.args) for name, f in functions.items() if len(f.args.args) > 6}
    assert wide == {}, wide
