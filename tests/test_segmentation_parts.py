"""The segmentation task's pure parts: metric formulas on a hand-worked confusion matrix, epoch accumulation, the
loss terms, the models' shapes and heads (offline), backbone weights, and sliding-window inference."""

import types

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from model.segmentation.loss import TERMS, cross_entropy, dice_loss, loss_fn
from model.segmentation.loss import terms_loss as build_loss
from model.segmentation.metrics import IGNORE, METRICS, EpochMetrics, per_class, predicted_classes
from model.segmentation.net import TORCHVISION, UNet, build_model, head_of, outputs_of, sliding_window
from utils import UserError, one_line

X = IGNORE
# one 2x4 image, 4 classes (class 3 appears nowhere); the ignored pixel is predicted 2 and must count nowhere
TRUE = torch.tensor([[[0, 0, 1, X], [1, 2, 2, 0]]])
PRED = torch.tensor([[[0, 1, 1, 2], [1, 2, 0, 0]]])


def logits_of(pred, k, scale=5.0):
    return F.one_hot(pred, k).permute(0, 3, 1, 2).float() * scale


def params(**kw):
    return types.SimpleNamespace(**{"arch": "unet", "ps": 0.0, "pretrain": 0, "pretrained_path": "", **kw})


def hand_cm():
    # rows true, columns predicted, worked out pixel by pixel from TRUE and PRED without the ignored one:
    # true 0 -> predicted 0, 1, 0; true 1 -> 1, 1; true 2 -> 2, 0
    return torch.tensor([[2, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]], dtype=torch.float64)


def test_confusion_and_formulas_by_hand():
    m = EpochMetrics(4, torch.device("cpu"))
    m.update(logits_of(PRED, 4), TRUE, torch.tensor(0.5))
    assert torch.equal(m.confusion.double(), hand_cm())
    got = m.compute()
    assert set(got) == set(METRICS)
    # IoU = tp / (true + predicted - tp): class 0: 2 / (3 + 3 - 2) = 1/2, class 1: 2 / (2 + 3 - 2) = 2/3,
    # class 2: 1 / (2 + 1 - 1) = 1/2; class 3 is in neither, so the mean is over three classes: 5/9
    assert got["miou"] == pytest.approx((1 / 2 + 2 / 3 + 1 / 2) / 3) == pytest.approx(5 / 9)
    # Dice = 2 tp / (true + predicted): 4/6, 4/5, 2/3 -> 32/45
    assert got["dice"] == pytest.approx((4 / 6 + 4 / 5 + 2 / 3) / 3) == pytest.approx(32 / 45)
    assert got["pixel_accuracy"] == pytest.approx(5 / 7)  # 7 labelled pixels, 5 right
    assert got["loss"] == pytest.approx(0.5)
    rows = per_class(hand_cm(), ["a", "b", "c", "d"])
    assert rows["a"] == {"iou": 0.5, "dice": pytest.approx(2 / 3), "pixels": 3, "predicted": 3}
    assert rows["b"]["iou"] == pytest.approx(2 / 3) and rows["b"]["predicted"] == 3
    assert rows["d"] == {"iou": None, "dice": None, "pixels": 0, "predicted": 0}


def test_predicted_classes_is_argmax_with_the_first_of_equal_maxima():
    logits = torch.randint(0, 3, (4, 11, 16, 16)).float()  # small integers: many ties across the classes
    assert torch.equal(predicted_classes(logits), logits.argmax(1))
    assert predicted_classes(torch.zeros(1, 5, 2, 2)).eq(0).all()


def test_nothing_seen_computes_nothing():
    assert EpochMetrics(3, torch.device("cpu")).compute() == {}


def test_two_batches_equal_their_concatenation():
    g = torch.Generator().manual_seed(0)
    k = 5
    logits = torch.randn(5, k, 9, 7, generator=g)
    masks = torch.randint(0, k, (5, 9, 7), generator=g)
    masks[torch.rand(5, 9, 7, generator=g) < 0.2] = IGNORE
    parts = [(logits[:2], masks[:2]), (logits[2:], masks[2:])]
    split = EpochMetrics(k, torch.device("cpu"))
    losses = [loss_fn(lo, ma) for lo, ma in parts]
    for (lo, ma), loss in zip(parts, losses):
        split.update(lo, ma, loss)
    whole = EpochMetrics(k, torch.device("cpu"))
    whole.update(logits, masks, (losses[0] * 2 + losses[1] * 3) / 5)  # the same per-image loss, as one batch
    assert split.n == whole.n == 5
    assert torch.equal(split.confusion, whole.confusion)
    assert split.compute() == pytest.approx(whole.compute())
    valid = masks != IGNORE  # and the matrix counts each labelled pixel once
    reference = torch.zeros(k, k, dtype=torch.long)
    for t, p in zip(masks[valid].tolist(), logits.argmax(1)[valid].tolist()):
        reference[t, p] += 1
    assert torch.equal(whole.confusion, reference)
    raw = EpochMetrics(k, torch.device("cpu"))
    raw.update({"out": logits, "aux": logits.flip(1)}, masks, losses[0])  # a torchvision model's outputs as they are
    assert torch.equal(raw.confusion, reference)
    raw.update(logits, None, losses[1])  # a batch without masks counts for the loss only
    assert raw.compute() == {"loss": pytest.approx((losses[0] * 5 + losses[1] * 5).item() / 10)}


# ---------------------------------------------------------------- losses

def batch(k=3, seed=0, ignore=0.2):
    g = torch.Generator().manual_seed(seed)
    masks = torch.randint(0, k, (2, 8, 6), generator=g)
    masks[torch.rand(2, 8, 6, generator=g) < ignore] = IGNORE
    return torch.randn(2, k, 8, 6, generator=g), masks


def test_a_zero_weight_changes_nothing():
    logits, masks = batch()
    assert build_loss({"ce": 1.0, "dice": 0}, 3)(logits, masks) == build_loss({"ce": 1.0}, 3)(logits, masks)


def test_dice_of_a_perfect_prediction_is_zero():
    _, masks = batch()
    perfect = logits_of(masks.masked_fill(masks == IGNORE, 0), 3, scale=30.0)
    assert dice_loss(perfect, masks).item() == pytest.approx(0.0, abs=1e-6)
    assert dice_loss(-perfect, masks).item() > 0.9


def test_ignored_pixels_change_no_term():
    logits, masks = batch()
    junk = logits.clone()
    ignored = masks == IGNORE
    junk.permute(0, 2, 3, 1)[ignored] = torch.randn(int(ignored.sum()), 3) * 10  # any scores where there is no label
    for name in TERMS:
        k = 2 if name == "bce" else 3
        m = masks.clamp(max=k - 1).masked_fill(masks == IGNORE, IGNORE)
        loss = build_loss({name: 1.0}, k)
        assert loss(junk[:, :k], m) == pytest.approx(loss(logits[:, :k], m).item()), name
    valid = masks != IGNORE
    pixels = logits.permute(0, 2, 3, 1)[valid]
    assert loss_fn(logits, masks) == pytest.approx(F.cross_entropy(pixels, masks[valid]).item())


def test_ce_is_pytorchs_mean_and_no_nan_without_labels():
    logits, masks = batch()
    w = torch.tensor([0.5, 2.0, 1.0])
    want = F.cross_entropy(logits, masks, weight=w, ignore_index=IGNORE, label_smoothing=0.1)
    assert cross_entropy(logits, masks, w, 0.1) == pytest.approx(want.item())
    loss = build_loss({"ce": 1.0}, 3, class_weights=[0.5, 2.0, 1.0], label_smoothing=0.1)
    assert loss(logits, masks) == pytest.approx(want.item())
    unlabelled = torch.full_like(masks, IGNORE)
    for name in TERMS:
        assert build_loss({name: 1.0}, 2)(logits[:, :2], unlabelled).item() == 0.0
    assert loss_fn(logits, unlabelled).item() == 0.0


def test_bce_on_two_channels_is_two_class_ce():
    logits, masks = batch(k=2)
    assert build_loss({"bce": 1.0}, 2)(logits, masks) == pytest.approx(loss_fn(logits, masks).item())
    one_channel = (logits[:, 1] - logits[:, 0]).unsqueeze(1)
    assert build_loss({"bce": 1.0}, 2)(one_channel, masks) == pytest.approx(loss_fn(logits, masks).item())


def test_terms_add_with_their_weights_and_aux_with_aux_weight():
    logits, masks = batch()
    aux, _ = batch(seed=1)
    ce, dice = build_loss({"ce": 1.0}, 3), build_loss({"dice": 1.0}, 3)
    both = build_loss({"ce": 0.3, "dice": 0.7}, 3, aux_weight=0.25)
    main = 0.3 * ce(logits, masks) + 0.7 * dice(logits, masks)
    assert both(logits, masks) == pytest.approx(main.item())
    assert both({"out": logits}, masks) == pytest.approx(main.item())
    extra = 0.3 * ce(aux, masks) + 0.7 * dice(aux, masks)
    assert both({"out": logits, "aux": aux}, masks) == pytest.approx((main + 0.25 * extra).item())
    assert loss_fn({"out": logits, "aux": aux}, masks) == loss_fn(logits, masks)  # validation: main output only


@pytest.mark.parametrize("terms, fragment", [
    ({"foo": 1.0}, "unknown term 'foo' (terms: ce, dice, bce)"),
    ({"ce": -1.0}, "weight >= 0"),
    ({"ce": True}, "weight >= 0"),
    ({"ce": 0, "dice": 0.0}, "every term weighs 0"),
    ({}, "dict of term weights"),
    ("ce", "dict of term weights"),
])
def test_bad_terms_are_one_line_errors(terms, fragment):
    with pytest.raises(UserError) as e:
        build_loss(terms, 3)
    assert fragment in str(e.value) and "params key 'loss'" in str(e.value) and "\n" not in str(e.value)


def test_bce_needs_one_class_masks():
    with pytest.raises(UserError, match="'bce' is for one-class masks"):
        build_loss({"bce": 1.0}, 4)


# ---------------------------------------------------------------- models

@pytest.mark.parametrize("h, w", [(64, 64), (70, 50), (5, 3)])
def test_unet_keeps_any_size(h, w):
    model = UNet(4).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, h, w))
    assert out.shape == (2, 4, h, w)


def test_unet_size_and_head():
    model = build_model(params(ps=0.2), 6)
    assert 100_000 < sum(p.numel() for p in model.parameters()) < 500_000
    assert head_of(model) is model.head and model.head.out_channels == 6
    assert isinstance(model.drop, nn.Dropout2d) and model.drop.p == 0.2
    raw = model(torch.randn(2, 3, 16, 16))
    assert outputs_of(raw) == (raw, None)


@pytest.mark.parametrize("arch", list(TORCHVISION))
def test_torchvision_segmenters_build_offline(arch):
    k = 3
    model = build_model(params(arch=arch), k).eval()
    with torch.no_grad():
        out, aux = outputs_of(model(torch.randn(2, 3, 64, 64)))
    assert out.shape == (2, k, 64, 64)
    assert (aux is None) == arch.startswith("lraspp")
    if aux is not None:
        assert aux.shape == (2, k, 64, 64)
    convs = [m for m in head_of(model).modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(c.out_channels == k for c in convs)
    assert len(convs) == (1 if arch.startswith("fcn") or arch.startswith("deeplab") else 2) + (aux is not None)


def test_unknown_arch_suggests_the_closest():
    with pytest.raises(UserError) as e:
        build_model(params(arch="lraspp_mobilenet_v3"), 3)
    message = str(e.value)
    assert "did you mean 'lraspp_mobilenet_v3_large'?" in message and "unet" in message and "\n" not in message


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """An empty torch cache and no network: what pretrain=1 meets on a machine that never fetched the weights."""
    import torchvision.models._api as api

    def no_network(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(api, "load_state_dict_from_url", no_network)
    return tmp_path


def test_pretrain_without_weights_is_one_line(offline):
    with pytest.raises(UserError) as e:
        build_model(params(arch="lraspp_mobilenet_v3_large", pretrain=1), 3)
    message = one_line(e.value)
    assert message == str(e.value) and "mobilenet_v3_large" in message and "pretrained_path" in message
    with pytest.raises(UserError, match="not found"):
        build_model(params(arch="lraspp_mobilenet_v3_large", pretrain=1, pretrained_path=str(offline / "x")), 3)


def test_pretrain_loads_the_classifiers_weights_into_the_backbone(offline):
    import torchvision.models as tvm

    classifier = tvm.mobilenet_v3_large(weights=None)
    path = offline / "mobilenet.pth"
    torch.save(classifier.state_dict(), path)
    model = build_model(params(arch="lraspp_mobilenet_v3_large", pretrain=1, pretrained_path=str(path)), 3)
    assert torch.equal(model.backbone["0"][0].weight, classifier.features[0][0].weight)
    assert torch.equal(model.backbone["16"][0].weight, classifier.features[16][0].weight)
    torch.save({"conv1.weight": torch.zeros(1)}, path)  # another architecture's file
    with pytest.raises(UserError, match="does not hold mobilenet_v3_large ImageNet weights"):
        build_model(params(arch="lraspp_mobilenet_v3_large", pretrain=1, pretrained_path=str(path)), 3)


# ---------------------------------------------------------------- sliding window

def conv1x1(k=4):
    torch.manual_seed(0)
    return nn.Conv2d(3, k, 1)


@pytest.mark.parametrize("window, stride", [(16, 8), (16, 16), (16, 5), (64, 64)])
def test_sliding_window_of_a_pointwise_model_is_whole_image_inference(window, stride):
    conv, x = conv1x1(), torch.randn(2, 3, 40, 56)
    with torch.no_grad():
        got = sliding_window(conv, x, 4, window, stride)
        assert got.shape == (2, 4, 40, 56) and got.dtype == torch.float32
        assert torch.allclose(got, conv(x), atol=1e-5)  # 64: larger than the image, padded and cropped back


def test_sliding_window_averages_overlaps():
    calls = []

    def constant(tiles):
        calls.append(tiles.shape[0])
        return torch.full((tiles.shape[0], 2, 16, 16), 3.0)

    x = torch.randn(3, 3, 40, 30)
    got = sliding_window(constant, x, 2, 16, 6)  # rows 0 6 12 18 24 (flush), columns 0 6 12 14 (flush)
    assert torch.equal(got, torch.full((3, 2, 40, 30), 3.0))  # each pixel's sum divided by its own count
    assert calls == [3] * 20
    calls.clear()
    sliding_window(constant, x, 2, 16, 6, tiles_per_call=30)
    assert calls == [30, 30]


def test_sliding_window_edges():
    conv, x = conv1x1(), torch.randn(1, 3, 7, 30)
    with torch.no_grad():
        assert torch.allclose(sliding_window(conv, x, 4, 0, 0), conv(x))  # window 0: the whole image at once
        as_dict = lambda t: {"out": conv(t), "aux": None}
        assert torch.allclose(sliding_window(as_dict, x, 4, 16, 8), conv(x), atol=1e-5)  # 7 < 16 < 30
    with pytest.raises(ValueError, match="stride"):
        sliding_window(conv, x, 4, 16, 17)


def test_keep_largest_regions_keeps_each_classs_n_largest_and_gives_the_rest_to_the_background():
    from model.segmentation.report import keep_largest_regions

    mask = torch.zeros(1, 8, 8, dtype=torch.long)
    mask[0, 0:3, 0:3] = 1  # class 1: a 9-pixel region ...
    mask[0, 6, 6] = 1  # ... and a stray pixel
    mask[0, 0:2, 5:8] = 2  # class 2: a 6-pixel region ...
    mask[0, 5:7, 0:2] = 2  # ... and a 4-pixel one
    mask[0, 4, 3] = 2  # diagonal to nothing of class 2: a region of its own
    logits = F.one_hot(mask, 3).permute(0, 3, 1, 2).float() * 5 + torch.randn(1, 3, 8, 8) * 0.1
    one = predicted_classes(keep_largest_regions(logits, 1))
    expected = mask.clone()
    expected[0, 6, 6] = expected[0, 4, 3] = 0
    expected[0, 5:7, 0:2] = 0
    assert torch.equal(one, expected)
    two = predicted_classes(keep_largest_regions(logits, 2))
    assert two[0, 6, 6] == 1 and two[0, 5, 0] == 2 and two[0, 4, 3] == 0  # the two largest of each class
    only_1 = predicted_classes(keep_largest_regions(logits, {1: 1}))  # class 2 left whole
    assert only_1[0, 6, 6] == 0 and only_1[0, 4, 3] == 2 and only_1[0, 5, 0] == 2
    assert torch.equal(keep_largest_regions(logits, 3), logits)  # nothing to drop: the logits as they were


@pytest.mark.parametrize("value, fragment", [
    (-1, "key 'keep_regions' must be an int >= 0 or an object of ints >= 1, got -1"),
    ({"1": 0}, "key 'keep_regions' must be an int >= 0 or an object of ints >= 1"),
    ({"cat": 1}, "key 'keep_regions' names class 'cat', not a foreground class of the data (1, 2)"),
    ({"background": 1}, "key 'keep_regions' names class 'background'"),
])
def test_bad_keep_regions_are_one_line_errors(value, fragment):
    from core.config import Params, resolve
    from core.tasks import TASKS

    with pytest.raises(UserError) as e:
        params = Params(resolve({"task": "segmentation", "keep_regions": value}, "p"))
        TASKS["segmentation"].check_params(params, ["background", "1", "2"], "p")
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_keep_regions_is_refused_by_the_tasks_without_masks():
    from core.config import Params, resolve
    from core.tasks import TASKS

    for task in ("classification", "keypoints", "detection"):
        with pytest.raises(UserError, match=f"key 'keep_regions' cleans segmentation masks; not for {task}"):
            TASKS[task].check_params(Params(resolve({"task": task, "keep_regions": 1}, "p")), ["a", "b"], "p")
