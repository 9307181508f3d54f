"""The pictures a run and predict.py draw: whole epochs on the history's axis, text in proportion to the picture,
a detection picture that says why it shows no box, predicted masks a viewer shows in colour."""

import numpy as np
import pytest
import torch
from PIL import Image

from core.rundir import plots

RED = np.array([255, 0, 0])


def history(epochs):
    return [{"epoch": e, "train": {"loss": 1 / e}, "val": {"loss": 1.2 / e, "accuracy": 0.5 + e / 10},
             "lr": [0.1]} for e in range(1, epochs + 1)]


@pytest.mark.parametrize("draw", ["history", "gradients"])
def test_a_two_epoch_run_is_ticked_at_whole_epochs(draw, tmp_path, monkeypatch):
    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path, fixed_size=False: figures.append(fig))
    rows = history(2)
    if draw == "history":
        plots.plot_history(rows, str(tmp_path / "train_history.png"))
    else:
        plots.plot_gradients([{**r, "grad_norm": {"conv": 1.0}, "update_ratio": {"conv": 1e-3}} for r in rows],
                             str(tmp_path / "gradients.png"))
    axes = [ax for ax in figures[0].axes if ax.get_xlabel() == "epoch"]
    figures[0].canvas.draw()
    assert axes
    for ax in axes:
        low, high = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if low <= t <= high]
        assert ticks and all(t == int(t) for t in ticks), ticks  # not 1.0, 1.2, ..., 2.0
        assert {label.get_text() for label in ax.get_xticklabels() if label.get_text()} <= {"0", "1", "2", "3"}


def pixels(points):
    return points * plots.DPI / 72


def test_text_grows_with_the_picture_and_never_shrinks_below_its_minimum():
    small, drawn, photo = (np.zeros((h, w, 3), np.uint8) for h, w in ((32, 32), (256, 300), (1024, 2000)))
    assert pixels(plots.text_size(small)) == pytest.approx(plots.TEXT_MIN_PX)
    assert pixels(plots.text_size(drawn)) == pytest.approx(16)  # a sixteenth of the shorter side
    assert plots.text_size(photo) == pytest.approx(4 * plots.text_size(drawn))
    assert plots.line_height(plots.text_size(photo)) > pixels(plots.text_size(photo))  # lines do not touch


def test_the_drawn_label_of_a_large_picture_is_large(tmp_path):
    from model.classification.report import draw_prediction

    row = {"labels": ["cat"], "probs": [0.9]}
    sizes = {}
    for side in (256, 1024):
        image, labels = draw_prediction(np.zeros((side, side, 3), np.uint8), row, 1, str(tmp_path), ["cat"])
        plots.save_mosaic(image, labels, str(tmp_path / f"{side}.png"))
        red = np.all(np.asarray(Image.open(tmp_path / f"{side}.png"))[..., :3] == RED, axis=-1)
        rows = np.flatnonzero(red.any(1))
        sizes[side] = rows.max() - rows.min() + 1  # the label's height in pixels
    assert sizes[256] >= 9 and sizes[1024] >= 3.5 * sizes[256], sizes  # was 8 px on both


# ---------------------------------------------------------------- detection: what a blank picture says


def boxes(*scores):
    return [[4.0, 4.0, 20.0, 20.0, s, 0] for s in scores]


def test_hidden_note_says_why_no_box_is_drawn():
    from model.detection.report import hidden_note

    assert hidden_note([0.18, 0.05, 0.12]) == "3 boxes below 0.5 hidden (best 0.18)"
    assert hidden_note([0.3]) == "1 box below 0.5 hidden (best 0.30)"
    assert hidden_note([]) == "no boxes detected"
    assert hidden_note([0.9, 0.1]) is None  # a picture with a box drawn needs no word


@pytest.mark.parametrize("scores, note", [((0.17, 0.18, 0.05), "3 boxes below 0.5 hidden (best 0.18)"),
                                          ((), "no boxes detected"), ((0.9, 0.1), None)])
def test_predict_draws_the_note_on_a_detection_picture_with_no_box(scores, note, tmp_path):
    from model.detection.report import draw_prediction

    image = np.zeros((256, 256, 3), np.uint8)
    drawn, labels = draw_prediction(image, {"boxes": boxes(*scores)}, 1, str(tmp_path), ["7"])
    texts = [label.text for label in labels]
    assert (note in texts) if note else texts == ["7 0.90"]
    if note:
        (label,) = [lab for lab in labels if lab.text == note]
        plots.save_mosaic(drawn, labels, str(tmp_path / "drawn.png"))
        from core.rundir.plots import font

        width = font(label.size).getbbox(note, anchor=label.anchor)[2]
        assert label.x + width <= 256 and label.y > 200  # along the bottom, inside a 256-px drawing


def test_the_training_gallery_says_why_a_tile_has_no_box(tmp_path):
    from model.detection.report import hidden_note, plot_gallery

    image = tmp_path / "scene.png"
    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(image)
    item = {"image": str(image), "truth": [], "detections": [], "side": 64, "mistakes": 0, "worst": False}
    pictures = {}
    for name, note in (("quiet", None), ("said", hidden_note([0.18, 0.1]))):
        best = {"epoch": 2, "classes": ["7"], "gallery": [{**item, "note": note}]}
        plot_gallery(best, str(tmp_path / f"{name}.png"), "valid")
        pictures[name] = np.asarray(Image.open(tmp_path / f"{name}.png"))[..., :3].astype(int)
    reddish = (pictures["said"][..., 0] - pictures["said"][..., 1:].max(-1)) > 80
    assert reddish.sum() > (pictures["quiet"][..., 0] - pictures["quiet"][..., 1:].max(-1) > 80).sum()


# ---------------------------------------------------------------- segmentation: masks a viewer shows


def test_predicted_masks_are_palette_pngs_whose_pixels_are_the_class_indices(tmp_path):
    from model.segmentation.data_loader import load_mask
    from model.segmentation.report import draw_prediction, save_predictions

    classes = ["background", *map(str, range(10))]  # the digit scenes' 11 classes
    truth = np.arange(11 * 6, dtype=np.int64).reshape(6, 11) % 11
    logits = torch.nn.functional.one_hot(torch.from_numpy(truth), 11).permute(2, 0, 1)[None].float()
    images = [{"image": "a.jpg", "stem": "sub/a", "size": (11, 6), "input": (11, 6)}]
    (row,) = save_predictions(logits, images, str(tmp_path), classes)
    path = tmp_path / "masks" / "sub" / "a.png"
    assert row["mask"] == "masks/sub/a.png"
    with Image.open(path) as mask:
        assert mask.mode == "P"
        assert np.array_equal(np.asarray(mask), truth)  # the indices, as numpy reads them
        colours = np.asarray(mask.convert("RGB"))  # what an image viewer shows
    assert np.array_equal(load_mask(str(path)), truth)  # training reads the same masks
    shown = {tuple(colours[truth == k][0]) for k in range(11)}
    assert len(shown) == 11 and (0, 0, 0) in shown  # a colour per class, the background black
    assert all(max(c) > 60 for c in shown - {(0, 0, 0)})  # the classes are no near-black greys
    drawn, labels = draw_prediction(np.zeros((6, 11, 3), np.uint8), row, 1, str(tmp_path), classes)
    assert drawn.shape == (6, 11, 3) and [label.text for label in labels] == classes[1:]
