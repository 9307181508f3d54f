"""DETR-family detection (model/detection/detr.py, Hugging Face transformers' RT-DETR): builds and trains with no
network, overfits a batch to a high mAP, resumes bit-identically after SIGKILL, and refuses what it cannot do in one
line. Skipped only where transformers is not installed (CI installs requirements-detr.txt)."""

import os
import socket
import sys

import pytest
import torch

from conftest import (
    DET_PARAMS,
    assert_one_line_error,
    assert_same_weights,
    experiment_maker,
    kill_mid_run_then_resume,
    read,
    run_train,
)
from core.config import load_params

pytest.importorskip("transformers")

DETR_PARAMS = {**DET_PARAMS, "arch": "small_rt_detr", "learning_rate": 5e-4, "grad_clip": 0.1}
TERMS = ("loss_vfl", "loss_bbox", "loss_giou")


@pytest.fixture
def detr_experiment(tmp_path):
    return experiment_maker(tmp_path, DETR_PARAMS, "detr")


@pytest.fixture
def no_network(monkeypatch):
    """The hub told to stay offline, and any connection attempt an error: a download would fail the test."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")

    def refuse(*args, **kwargs):
        raise OSError("test_detr: no network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_builds_and_trains_offline_with_its_loss_terms_map_and_gallery(detr_experiment, boxes_dir, no_network):
    exp = detr_experiment()
    assert run_train(exp, boxes_dir) == 0
    rows = read(os.path.join(exp, "history.json"))["epochs"]
    assert len(rows) == 2 and {"map", "map_50"} <= set(rows[-1]["val"])
    for split in ("train", "val"):
        assert set(TERMS) <= set(rows[-1][split])
        assert rows[-1][split]["loss"] == pytest.approx(sum(rows[-1][split][t] for t in TERMS), rel=1e-4)
    assert os.path.getsize(os.path.join(exp, "predictions.png")) > 1000


def test_matcher_and_loss_run_in_float32_under_bf16_autocast():
    from model.detection.detr import HFDetector, small_rt_detr

    seen = []
    net = small_rt_detr(3, 32, pretrain=0)
    inner = net.model.loss_function

    def spy(logits, labels, device, pred_boxes, *args, **kwargs):
        seen.append((torch.is_autocast_enabled("cpu"), logits.dtype, pred_boxes.dtype))
        return inner(logits, labels, device, pred_boxes, *args, **kwargs)

    net.model.loss_function = spy  # inside HFDetector's float32 wrapper: re-wrap it the same way
    net = HFDetector(net.model)
    targets = [{"boxes": torch.tensor([[2.0, 3.0, 14.0, 18.0]]), "labels": torch.tensor([2])}] * 2
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = net(list(torch.randn(2, 3, 32, 32)), targets)
    assert seen == [(False, torch.float32, torch.float32)]
    assert set(losses) == set(TERMS) and all(v.dtype == torch.float32 for v in losses.values())


def test_eval_losses_have_no_denoising_noise_and_detections_are_in_pixels():
    from model.detection.detr import small_rt_detr

    torch.manual_seed(0)
    net = small_rt_detr(3, 32, pretrain=0)
    images = list(torch.randn(2, 3, 32, 32))
    targets = [{"boxes": torch.tensor([[2.0, 3.0, 14.0, 18.0]]), "labels": torch.tensor([3])}] * 2
    net.train()
    a, b = net.eval_losses(images, targets), net.eval_losses(images, targets)
    assert net.training and all(torch.equal(a[k], b[k]) for k in TERMS)
    net.eval()
    found = net(images)
    assert len(found) == 2 and found[0]["boxes"].shape[1] == 4 and len(found[0]["boxes"]) <= 50
    assert found[0]["boxes"].min() >= 0 and found[0]["boxes"].max() <= 32
    assert set(found[0]["labels"].tolist()) <= {1, 2, 3}


def few_scenes(boxes_dir, n):
    """The first n training scenes of the digit boxes, normalised, and their torchvision targets."""
    import numpy as np
    from PIL import Image

    folder = os.path.join(boxes_dir, "train")
    coco = read(os.path.join(folder, "annotations.json"))
    images, targets = [], []
    for entry in coco["images"][:n]:
        pixels = np.array(Image.open(os.path.join(folder, "images", entry["file_name"])).convert("RGB"))  # writable
        images.append((torch.from_numpy(pixels).permute(2, 0, 1).float() / 255 - 0.5) / 0.25)
        boxes = [a for a in coco["annotations"] if a["image_id"] == entry["id"]]
        targets.append({"boxes": torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in boxes)]),
                        "labels": torch.tensor([a["category_id"] for a in boxes])})
    return images, targets


@pytest.mark.slow
def test_overfits_four_scenes_to_a_high_map_50(boxes_dir):
    """A bare loop (AdamW 1e-3, clip 0.1): map_50 1.0 from step ~150 when measured; train.py's overfit mode would
    validate and checkpoint every one of those steps."""
    from torchmetrics.detection import MeanAveragePrecision

    from model.detection.detr import small_rt_detr

    torch.manual_seed(0)
    images, targets = few_scenes(boxes_dir, 4)
    net = small_rt_detr(10, 32, pretrain=0)
    opt = torch.optim.AdamW(net.parameters(), 1e-3, weight_decay=1e-4)
    net.train()
    for _ in range(200):
        loss = sum(net(images, targets).values())
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 0.1)
        opt.step()
    net.eval()
    with torch.no_grad():
        found = net(images)
    score = MeanAveragePrecision()
    score.update(found, targets)
    assert score.compute()["map_50"] >= 0.9


@pytest.mark.slow
def test_sigkill_then_resume_gives_the_uninterrupted_weights(detr_experiment, boxes_dir):
    params = {"num_epochs": 2, "ema_decay": 0.9}
    whole, killed = detr_experiment("whole", **params), detr_experiment("killed", **params)
    a, b = kill_mid_run_then_resume(whole, killed, boxes_dir, after_first_epoch_s=0.5)
    assert a["epoch"] == b["epoch"] == 2  # killed inside epoch 2, resumed from epoch 1
    assert_same_weights(a, b)


# ---------------------------------------------------------------- one-line refusals


def params_json(exp):
    return os.path.join(exp, "params.json")


def test_a_misspelt_arch_is_one_line_with_a_hint(detr_experiment, boxes_dir, capsys):
    exp = detr_experiment(arch="small_rtdetr")
    assert_one_line_error(lambda: run_train(exp, boxes_dir), capsys, params_json(exp),
                          "unknown detection architecture 'small_rtdetr' (did you mean 'small_rt_detr'?", exp)


def test_pretrain_is_refused_in_one_line(detr_experiment, boxes_dir, capsys):
    exp = detr_experiment(pretrain=1)
    assert_one_line_error(lambda: run_train(exp, boxes_dir), capsys, params_json(exp),
                          "params key 'pretrain': small_rt_detr has no pretrained weights", exp)


def test_missing_transformers_names_the_requirements_file(detr_experiment, boxes_dir, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers now raises ImportError
    exp = detr_experiment()
    assert_one_line_error(lambda: run_train(exp, boxes_dir), capsys, params_json(exp),
                          "needs Hugging Face transformers: pip install -r requirements-detr.txt", exp)


def test_export_refuses_it_with_a_reason(detr_experiment):
    from core.tasks import TASKS
    from utils import UserError

    params = load_params(os.path.join(detr_experiment(), "params.json"))
    task = TASKS["detection"]
    with pytest.raises(UserError, match="small_rt_detr is not exported: .* these export: small_fcos"):
        task.export_parts(task.build_model(params, 3), params)
