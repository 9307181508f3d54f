"""data/scenes.py: the digit scenes segmentation set, its layout, masks, boxes, determinism and split hygiene."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.tasks import TASKS, ensure_data
from data.build_dataset import SPLITS, main
from data.scenes import CLASSES, build_scenes, source_splits
from utils import UserError

COUNTS = (40, 10, 10)
DEFAULT_SCENES = TASKS["segmentation"].data


@pytest.fixture(scope="module")
def scenes_dir(tmp_path_factory):
    return build_scenes(str(tmp_path_factory.mktemp("data") / "scenes"), size=48, counts=COUNTS)


def stems(folder):
    return sorted(p.stem for p in Path(folder).glob("*.png"))


def files(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(Path(root).rglob("*")) if p.is_file()}


def test_layout_and_stems_pair_up(scenes_dir):
    assert json.loads(Path(scenes_dir, "classes.json").read_text()) == CLASSES
    assert CLASSES == ["background", *map(str, range(10))]
    for split, count in zip(SPLITS, COUNTS):
        names = stems(os.path.join(scenes_dir, split, "images"))
        assert names == stems(os.path.join(scenes_dir, split, "masks")) == [f"scene_{k:05d}" for k in range(count)]
        boxes = json.loads(Path(scenes_dir, split, "boxes.json").read_text())
        assert sorted(boxes) == names
    assert not [p for p in os.listdir(os.path.dirname(scenes_dir)) if p.startswith(".building-")]


def test_masks_and_boxes_match_the_images(scenes_dir):
    for split in SPLITS:
        boxes = json.loads(Path(scenes_dir, split, "boxes.json").read_text())
        for name, digits in boxes.items():
            image = Image.open(os.path.join(scenes_dir, split, "images", name + ".png"))
            mask_img = Image.open(os.path.join(scenes_dir, split, "masks", name + ".png"))
            assert image.mode == "RGB" and mask_img.mode == "L" and image.size == mask_img.size == (48, 48)
            mask = np.asarray(mask_img)
            assert mask.max() <= 10 and (mask > 0).any()
            assert 1 <= len(digits) <= 3
            assert set(np.unique(mask)) - {0} <= {d["category_id"] for d in digits}
            for d in digits:
                x, y, w, h = d["bbox"]
                assert d["category_id"] == d["digit"] + 1 and 0 <= d["digit"] <= 9
                assert x >= 0 and y >= 0 and w >= 1 and h >= 1 and x + w <= 48 and y + h <= 48
                inside = mask[y:y + h, x:x + w] == d["category_id"]
                assert inside.any()
                if len([e for e in digits if e["digit"] == d["digit"]]) == 1:  # a box of a class seen once: tight
                    rows, cols = np.nonzero(mask == d["category_id"])
                    assert x <= cols.min() and cols.max() < x + w and y <= rows.min() and rows.max() < y + h


def test_digits_are_bright_on_a_dark_background(scenes_dir):
    image = np.asarray(Image.open(os.path.join(scenes_dir, "train", "images", "scene_00000.png"))).max(axis=2)
    mask = np.asarray(Image.open(os.path.join(scenes_dir, "train", "masks", "scene_00000.png")))
    assert image[mask > 0].mean() > image[mask == 0].mean() + 60


def test_same_arguments_give_identical_bytes(tmp_path, scenes_dir):
    again = build_scenes(str(tmp_path / "again"), size=48, counts=COUNTS)
    assert files(again) == files(scenes_dir)


def test_a_smaller_build_is_the_start_of_a_bigger_one(tmp_path, scenes_dir):
    small = files(build_scenes(str(tmp_path / "small"), size=48, counts=(5, 0, 2)))
    big = files(scenes_dir)
    assert {k for k in small if k.endswith(".png")} <= set(big)
    assert all(small[k] == big[k] for k in small if k.endswith(".png"))


def test_another_seed_gives_other_scenes(tmp_path, scenes_dir):
    other = build_scenes(str(tmp_path / "other"), size=48, counts=(3, 0, 0), seed=231)
    name = os.path.join("train", "images", "scene_00000.png")
    assert files(other)[name] != files(scenes_dir)[name]


def test_test_size_makes_bigger_test_scenes(tmp_path):
    dst = build_scenes(str(tmp_path / "big_test"), size=32, test_size=80, counts=(2, 2, 3))
    for split, side in (("train", 32), ("valid", 32), ("test", 80)):
        for sub in ("images", "masks"):
            for name in stems(os.path.join(dst, split, sub)):
                assert Image.open(os.path.join(dst, split, sub, name + ".png")).size == (side, side)
    boxes = json.loads(Path(dst, "test", "boxes.json").read_text())
    assert max(x + w for digits in boxes.values() for x, _, w, _ in (d["bbox"] for d in digits)) > 32


def test_an_existing_dst_is_refused_and_untouched(tmp_path):
    dst = tmp_path / "taken"
    dst.mkdir()
    (dst / "mine.txt").write_text("keep me")
    with pytest.raises(UserError, match="taken"):
        build_scenes(str(dst), counts=(1, 1, 1))
    assert files(dst) == {"mine.txt": b"keep me"}
    assert sorted(os.listdir(tmp_path)) == ["taken"]


def test_valid_and_test_scenes_use_no_train_scan(scenes_dir):
    from sklearn.datasets import load_digits

    labels = [int(y) for y in load_digits().target]
    pools = {s: set(idx) for s, idx in source_splits(labels, 230).items()}
    assert not pools["train"] & pools["valid"] and not pools["train"] & pools["test"]
    assert not pools["valid"] & pools["test"] and len(set.union(*pools.values())) == len(labels)
    used = {}
    for split in SPLITS:
        boxes = json.loads(Path(scenes_dir, split, "boxes.json").read_text())
        used[split] = {d["scan"] for digits in boxes.values() for d in digits}
        assert used[split] <= pools[split]
        assert all(labels[d["scan"]] == d["digit"] for digits in boxes.values() for d in digits)
    assert not used["train"] & (used["valid"] | used["test"])


def test_cli_builds_scenes_and_refuses_class_folder_options(tmp_path, capsys):
    dst = str(tmp_path / "cli")
    main(["--task", "segmentation", "--dst", dst, "--size", "16", "--test_size", "24"])
    assert "train 1200 images" in capsys.readouterr().out
    assert Image.open(os.path.join(dst, "test", "images", "scene_00000.png")).size == (24, 24)
    with pytest.raises(UserError, match="already exists"):
        main(["--task", "segmentation", "--dst", dst])
    for extra in (["--src", str(tmp_path)], ["--imbalance", "0=0.5"], ["--fractions", "0.8,0.1,0.1"]):
        with pytest.raises(UserError, match=f"{extra[0]}: not with --task segmentation"):
            main(["--task", "segmentation", "--dst", str(tmp_path / "never"), *extra])
    with pytest.raises(UserError, match="--test_size"):
        main(["--dst", str(tmp_path / "never"), "--test_size", "24"])
    assert not (tmp_path / "never").exists()


def test_ensure_data_builds_the_default_scenes_on_first_use(tmp_path, monkeypatch):
    built = []
    monkeypatch.setattr(type(TASKS["segmentation"]), "build_data", lambda self, dst: built.append(dst) or dst)
    monkeypatch.chdir(tmp_path)
    assert ensure_data(DEFAULT_SCENES) == DEFAULT_SCENES and built == [DEFAULT_SCENES]
    assert ensure_data("./" + DEFAULT_SCENES) and len(built) == 2  # the same folder, spelled another way
    assert ensure_data(os.path.join("data", "elsewhere")) and len(built) == 2


def test_the_large_detection_set_has_small_digits_on_large_scenes(tmp_path, capsys):
    """--large: 1024-px scenes whose digits keep 16-32 px, the scale crops and tiles are for; the default scenes are
    unchanged by the options that make them (the same bytes as before: test_same_arguments_give_identical_bytes)."""
    from data.boxes import LARGE, build_boxes

    dst = str(tmp_path / "large")
    build_boxes(dst, **{**LARGE, "counts": (2, 1, 1)})
    coco = json.load(open(os.path.join(dst, "train", "annotations.json")))
    assert {(i["width"], i["height"]) for i in coco["images"]} == {(1024, 1024)}
    sides = [max(a["bbox"][2:]) for a in coco["annotations"]]
    assert len(sides) >= 2 and all(8 <= s <= 32 for s in sides)  # a stroke's box, within its 16-32 px square
    with pytest.raises(UserError, match="--large: only with --task detection"):
        main(["--task", "segmentation", "--large", "--dst", str(tmp_path / "x")])
