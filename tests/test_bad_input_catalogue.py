"""The second bad-input catalogue: each class of silent wrong result, lost work or traceback gets one test.

Contract as in test_bad_input.py: one stderr line starting "error:" naming the file and key, exit code 2, no
traceback, nothing written; a bad cell in synthesize/plot is reported and the others still shown.
"""

import csv
import io
import json
import math
import os
import shutil
import warnings

import pytest
from PIL import Image

import plot_results
import synthesize_results
from conftest import FAST_PARAMS, KP_PARAMS, read, run_train
from utils import UserError, read_json, run_cli


def one_line(capsys, run, *needles):
    """run() exits 2 with one 'error:' line on stderr holding every needle; returns the line."""
    with pytest.raises(SystemExit) as e:
        run_cli(run)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    assert len(err[0]) < 600, len(err[0])
    for needle in needles:
        assert needle in err[0], (needle, err[0])
    return err[0]


def train(model_dir, data_dir, *extra):
    import train as script

    return lambda: script.main(["--model_dir", str(model_dir), "--data_dir", str(data_dir), *extra])


def experiment(tmp_path, text_or_params, name="exp"):
    folder = tmp_path / name
    folder.mkdir()
    text = text_or_params if isinstance(text_or_params, str) else json.dumps(text_or_params)
    (folder / "params.json").write_text(text)
    return folder


def untouched(folder):
    assert os.listdir(folder) == ["params.json"], os.listdir(folder)


# ---------------------------------------------------------------- JSON and params


@pytest.mark.parametrize("text, needles", [
    ('{"learning_rate": 0.1, "num_epochs": 1, "learning_rate": 0.2}', ["key \"learning_rate\" appears twice"]),
    ("[" * 100_000 + "]" * 100_000, ["nested too deeply"]),
    (json.dumps({**FAST_PARAMS, "seed": -1}), ["key 'seed' must be >= 0, got -1"]),
    (json.dumps({**FAST_PARAMS, "arch": "x" * 10_000_000}), ["characters)"]),
])
def test_params_that_json_or_python_would_take_wrongly_are_one_line(text, needles, tmp_path, digits_dir, capsys):
    folder = experiment(tmp_path, text)
    line = one_line(capsys, train(folder, digits_dir), str(folder / "params.json"), *needles)
    assert "x" * 1000 not in line  # a huge value is never echoed whole
    untouched(folder)


def test_a_duplicate_key_is_refused_in_every_json_the_data_holds(tmp_path):
    path = tmp_path / "annotations.json"
    path.write_text('{"images": [], "annotations": [{"id": 1, "bbox": [0, 0, 1, 1], "bbox": [0, 0, 2, 2]}]}')
    with pytest.raises(UserError, match=r"annotations.json: key \"bbox\" appears twice"):
        read_json(path)


def test_a_later_stages_mistake_is_found_before_epoch_1_and_named(tmp_path, digits_dir, capsys):
    rates = {**FAST_PARAMS, "stages": [{"num_epochs": 1}, {"num_epochs": 1, "learning_rate": [1e-3] * 50}]}
    folder = experiment(tmp_path, rates)
    one_line(capsys, train(folder, digits_dir), "stages.1: params key 'learning_rate': 50 rates")
    untouched(folder)
    aug = {**FAST_PARAMS, "stages": [{"num_epochs": 1}, {"num_epochs": 1, "augmentation": {
        "__version__": "2.0.8", "transform": {"__class_fullname__": "NoSuchTransform"}}}]}
    folder = experiment(tmp_path, aug, "aug")
    with warnings.catch_warnings(record=True) as said:  # albumentations' own words before ours: two more lines
        warnings.simplefilter("always")
        one_line(capsys, train(folder, digits_dir), "stages.1: ", "unknown transform 'NoSuchTransform'")
    assert [str(w.message) for w in said] == []
    untouched(folder)


def test_what_albumentations_says_of_a_valid_augmentation_dict_is_one_line_once(capsys):
    from model.images import pipeline_from_dict

    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        for _ in range(2):  # each split and stage builds its pipeline: said once
            assert pipeline_from_dict({"__class_fullname__": "VerticalFlip"}).p == 0.5
    assert said == [] and capsys.readouterr().err.splitlines() == [
        "warning: params key 'augmentation': Transform VerticalFlip has no 'p' parameter in serialized data, "
        "defaulting to 0.5"]


def test_a_read_only_model_folder_is_one_line(tmp_path, digits_dir, capsys, monkeypatch):
    folder = experiment(tmp_path, {**FAST_PARAMS, "num_epochs": 1})
    real_open = os.open

    def read_only(path, flags, *rest):  # root ignores permissions: make the folder's first write fail as EROFS would
        if str(path).startswith(str(folder)) and flags & os.O_CREAT:
            raise PermissionError(30, "Read-only file system")
        return real_open(path, flags, *rest)

    monkeypatch.setattr(os, "open", read_only)
    one_line(capsys, train(folder, digits_dir), f"--model_dir {folder}: cannot write there (Read-only file system)")
    untouched(folder)


# ---------------------------------------------------------------- images


def copy_digits(digits_dir, dst, per_class=4):
    for split in ("train", "valid"):
        for c in ("0", "1", "2"):
            os.makedirs(dst / split / c)
            for f in sorted(os.listdir(os.path.join(digits_dir, split, c)))[:per_class]:
                shutil.copy(os.path.join(digits_dir, split, c, f), dst / split / c / f)
    return dst


TINY = {**{k: v for k, v in FAST_PARAMS.items() if not k.endswith("_subset")}, "num_epochs": 1, "batch_size": 4,
        "bs_test": 4}


def test_a_jpeg_cut_short_inside_its_pixels_is_named_before_training(tmp_path, digits_dir, capsys):
    data = copy_digits(digits_dir, tmp_path / "data")
    bad = data / "train" / "1" / "cut.jpg"
    buffer = io.BytesIO()
    Image.effect_noise((96, 96), 64).convert("RGB").save(buffer, format="JPEG", quality=95)
    bad.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) * 2 // 3])
    with Image.open(bad) as im:
        im.verify()  # what the start-up check used to rely on: it lets this file through
    folder = experiment(tmp_path, {**TINY, "cache_images": 0})
    one_line(capsys, train(folder, data), f"{bad}: cannot read image")
    untouched(folder)


def test_a_decompression_bomb_is_named(tmp_path, digits_dir, capsys, monkeypatch):
    data = copy_digits(digits_dir, tmp_path / "data")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # a 28 x 28 digit is then more than twice the limit
    folder = experiment(tmp_path, TINY)
    one_line(capsys, train(folder, data), "cannot read image: more pixels than PIL decodes safely")
    untouched(folder)


# ---------------------------------------------------------------- keypoints


def points_as_csv(points_dir, dst, cell):
    """A copy of the keypoint set with train's points as a keypoints.csv written by Excel (UTF-8 with a BOM);
    `cell` (x, y, v) replaces the first point of the first image."""
    shutil.copytree(points_dir, dst)
    data = read(dst / "train" / "keypoints.json")
    (dst / "train" / "keypoints.json").unlink()
    first = sorted(data["images"])[0]
    data["images"][first][0] = list(cell)
    with open(dst / "train" / "keypoints.csv", "w", newline="", encoding="utf-8-sig") as f:
        w = csv.writer(f)
        w.writerow(["image", *[f"{n}_{c}" for n in data["names"] for c in "xyv"]])
        for name, points in sorted(data["images"].items()):
            w.writerow([name, *[v for p in points for v in p]])
    return dst


def test_an_unlabelled_point_written_as_nan_trains_and_a_labelled_nan_is_refused(tmp_path, points_dir, capsys):
    data = points_as_csv(points_dir, tmp_path / "data", ("nan", "nan", 0))  # as DeepLabCut writes one
    folder = experiment(tmp_path, {**KP_PARAMS, "num_epochs": 1})
    assert run_train(str(folder), str(data)) == 0
    row = read(folder / "history.json")["epochs"][0]
    assert math.isfinite(row["train"]["loss"]) and math.isfinite(row["val"]["loss"])

    data = points_as_csv(points_dir, tmp_path / "labelled", ("nan", "nan", 2))
    folder = experiment(tmp_path, {**KP_PARAMS, "num_epochs": 1}, "labelled_nan")
    one_line(capsys, train(folder, data), "is labelled (visibility 2) but at (nan, nan)")
    untouched(folder)


# ---------------------------------------------------------------- detection files


def test_data_yaml_names_by_quoted_index_keep_index_order_and_bad_yaml_is_one_line(tmp_path):
    from model.detection.data_loader import yolo_names

    path = tmp_path / "data.yaml"
    path.write_text(json.dumps({"names": {str(k): f"c{k}" for k in range(12)}}))  # YAML written from JSON
    assert yolo_names(str(path)) == [f"c{k}" for k in range(12)]  # not c0, c1, c10, c11, c2, ...
    path.write_text("names:\n  0: a\n  2: b\n")
    with pytest.raises(UserError, match=r"data.yaml: 'names' maps .*; expected the class indices 0 to 1"):
        yolo_names(str(path))
    path.write_text("names: [a, b\n")
    with pytest.raises(UserError, match=r"data.yaml: invalid YAML at line 2"):
        yolo_names(str(path))
    path.write_text("- a\n- b\n")
    with pytest.raises(UserError, match=r"data.yaml: expected a mapping \(names: ...\), not a list"):
        yolo_names(str(path))


def edit_coco(boxes_dir, dst, change):
    shutil.copytree(boxes_dir, dst)
    path = dst / "train" / "annotations.json"
    data = read(path)
    change(data)
    path.write_text(json.dumps(data))
    return dst


def first_box_polygon_only(d):
    ann = d["annotations"][0]
    ann.pop("bbox")
    ann["segmentation"] = [[0, 0, 4, 0, 4, 4]]


@pytest.mark.parametrize("change, needle", [
    (lambda d: d["images"].append(dict(d["images"][0], file_name="other.png")),
     "image id 1 is given twice"),
    (first_box_polygon_only, "'bbox' must be [x, y, width, height], got null (it has a segmentation but no box"),
    (lambda d: d["annotations"][0].update(bbox=[1, 2, 3]), "'bbox' must be [x, y, width, height], got [1, 2, 3]"),
])
def test_coco_mistakes_are_one_line_naming_the_file(change, needle, tmp_path, boxes_dir):
    from model.detection.data_loader import scan_split

    data = edit_coco(boxes_dir, tmp_path / "data", change)
    with pytest.raises(UserError) as e:
        scan_split(str(data), "train", None)
    assert str(e.value).startswith(str(data / "train" / "annotations.json")) and needle in str(e.value)


def test_a_coco_image_without_width_and_height_takes_them_from_the_file(tmp_path, boxes_dir):
    from model.detection.data_loader import scan_split

    data = edit_coco(boxes_dir, tmp_path / "data", lambda d: [im.pop(k) for im in d["images"]
                                                              for k in ("width", "height")])
    same = lambda items: [(os.path.basename(path), boxes) for path, boxes in items]  # noqa: E731
    assert same(scan_split(str(data), "train", None)) == same(scan_split(boxes_dir, "train", None))


# ---------------------------------------------------------------- searches and their tables


def write(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(obj if isinstance(obj, str) else json.dumps(obj))


def test_a_file_where_a_cell_folder_goes_is_one_line(tmp_path, capsys):
    import search_hyperparams

    parent = tmp_path / "search"
    write(parent / "params.json", {**FAST_PARAMS, "hyper_search": {"learning_rate": [0.01, 0.02]}})
    write(parent / "learning_rate_0.01", "my notes")
    one_line(capsys, lambda: search_hyperparams.main(["--parent_dir", str(parent)]),
             f"{parent / 'learning_rate_0.01'}: is a file, where the search puts cell learning_rate_0.01's folder")
    assert sorted(os.listdir(parent)) == ["learning_rate_0.01", "params.json"]


def cell(parent, name, params, acc, history=True):
    folder = os.path.join(parent, name)
    write(os.path.join(folder, "params.json"), params)
    write(os.path.join(folder, "status.json"), {"status": "completed", "epoch": 2})
    write(os.path.join(folder, "metrics_val_best_weights.json"), {"accuracy": acc, "loss": 0.5, "epoch": 2})
    metrics = lambda e: {"loss": 1 / e, "accuracy": acc}  # noqa: E731
    rows = [{"epoch": e, "lr": [0.1], "train": metrics(e), "val": metrics(e)} for e in (1, 2)]
    if history:
        write(os.path.join(folder, "history.json"), {"classes": ["a", "b"], "epochs": rows})
    return folder


def test_a_cell_with_unreadable_params_shows_blanks_not_defaults(tmp_path):
    parent = str(tmp_path / "lr")
    write(os.path.join(parent, "params.json"), {"num_epochs": 7, "hyper_search": {"learning_rate": [0.1, 0.01]}})
    cell(parent, "learning_rate_0.1", {"learning_rate": 0.1, "num_epochs": 7}, 0.8)
    cell(parent, "learning_rate_0.01", '{"learning_rate": 0.01, "num_ep', 0.9)  # cut short
    assert synthesize_results.main(["--parent_dir", parent]) == 0
    with open(os.path.join(parent, "results.csv")) as f:
        rows = {os.path.basename(r["folder"] if "folder" in r else r["run"]): r for r in csv.DictReader(f)}
    bad = rows["learning_rate_0.01"]
    assert bad["learning_rate"] == "" and bad["num_epochs"] == ""  # not the defaults 0.002 and 10
    assert rows["learning_rate_0.1"]["num_epochs"] == "7"


def test_plot_reports_a_cell_whose_history_lacks_val_and_draws_the_others(tmp_path, capsys):
    parent = str(tmp_path / "lr")
    write(os.path.join(parent, "params.json"), {"hyper_search": {"learning_rate": [0.1, 0.01]}})
    cell(parent, "learning_rate_0.1", {"learning_rate": 0.1}, 0.8)
    bad = cell(parent, "learning_rate_0.01", {"learning_rate": 0.01}, 0.9)
    write(os.path.join(bad, "history.json"), {"epochs": [{"epoch": 1, "train": {"loss": 1.0}}]})
    assert plot_results.main(["--parent_dir", parent]) == 0
    out = capsys.readouterr().out
    assert f"{bad}: history.json row 1 lacks epoch, train or val: curves left out" in out
    assert os.path.exists(os.path.join(parent, "history_plots.png"))
