"""predict.py on trained folders of every task: what it writes, that it agrees with evaluate.py, reruns, bad input."""

import csv
import glob
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import read
from utils import UserError, run_cli


@pytest.fixture(scope="module")
def classifier(trained_run):
    return trained_run("classification")[0]


def predict(*args):
    import predict as script

    return script.main(list(args))


def error_line(capsys, *args):
    """predict.py's one stderr line for bad input (exit 2)."""
    with pytest.raises(SystemExit) as e:
        run_cli(lambda: predict(*args))
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    return err[0][len("error: "):]


def files(folder):
    return sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs)


def rows_of(out):
    with open(os.path.join(out, "predictions.csv")) as f:
        return list(csv.DictReader(f))


def test_classification_top1_is_what_evaluate_scores(classifier, digits_dir, tmp_path):
    import evaluate

    assert evaluate.main(["--model_dir", classifier, "--data_dir", digits_dir]) == 0
    accuracy = read(os.path.join(classifier, "metrics_test_best_weights.json"))["accuracy"]
    out = str(tmp_path / "out")
    assert predict("--model_dir", classifier, "--source", os.path.join(digits_dir, "test"), "--out", out) == 0
    rows = rows_of(out)
    assert len(rows) == len(glob.glob(os.path.join(digits_dir, "test", "*", "*.png")))
    right = [r["label_1"] == os.path.basename(os.path.dirname(r["image"])) for r in rows]
    assert sum(right) / len(rows) == pytest.approx(accuracy)  # the same preprocessing, the same model
    assert all(float(r["prob_1"]) >= float(r["prob_2"]) for r in rows)
    manifest = read(os.path.join(out, "manifest.json"))
    assert manifest["status"] == "completed" and manifest["count"] == len(rows) and manifest["unreadable"] == []
    assert manifest["identity"]["epoch"] == 1 and "predictions.csv" in manifest["files"]


def test_the_default_folder_a_rerun_that_skips_and_an_unreadable_image(classifier, digits_dir, tmp_path, capsys):
    source = tmp_path / "new_images"
    shutil.copytree(os.path.join(digits_dir, "test", "3"), source)
    n = len(os.listdir(source))
    assert predict("--model_dir", classifier, "--source", str(source)) == 0
    out = os.path.join(classifier, "predictions", "new_images")
    before = rows_of(out)
    assert len(before) == n
    assert predict("--model_dir", classifier, "--source", str(source)) == 0
    assert f"{out}: {n} images: 0 predicted this run, {n} predicted before, 0 unreadable;" in capsys.readouterr().out
    (source / "broken.png").write_bytes(b"not a png")
    shutil.copy(os.path.join(digits_dir, "test", "7", os.listdir(os.path.join(digits_dir, "test", "7"))[0]),
                source / "extra.png")
    assert predict("--model_dir", classifier, "--source", str(source)) == 0
    printed = capsys.readouterr().out
    assert f"{source / 'broken.png'}: cannot read image (skipped)" in printed
    assert f"{n + 2} images: 1 predicted this run, {n} predicted before, 1 unreadable;" in printed
    assert predict("--model_dir", classifier, "--source", str(source)) == 0  # the unreadable one is tried again
    assert f"{n + 2} images: 0 predicted this run, {n + 1} predicted before, 1 unreadable;" in capsys.readouterr().out
    after = {r["image"]: r for r in rows_of(out)}
    assert all(after[r["image"]] == r for r in before) and len(after) == n + 1  # the old rows as they were
    assert read(os.path.join(out, "manifest.json"))["unreadable"] == [str(source / "broken.png")]


def test_a_glob_and_a_list_file_as_sources(classifier, digits_dir, tmp_path):
    pattern = os.path.join(digits_dir, "test", "[12]", "*.png")
    assert predict("--model_dir", classifier, "--source", pattern, "--out", str(tmp_path / "g")) == 0
    assert len(rows_of(str(tmp_path / "g"))) == len(glob.glob(pattern))
    listed = sorted(glob.glob(pattern))[:5]
    (tmp_path / "list.txt").write_text("# five images\n" + "\n".join(listed) + "\n\n")
    assert predict("--model_dir", classifier, "--source", str(tmp_path / "list.txt")) == 0
    assert [r["image"] for r in rows_of(os.path.join(classifier, "predictions", "list"))] == listed


def test_another_models_predictions_are_refused_unless_overwrite(classifier, digits_dir, tmp_path, capsys):
    out = tmp_path / "out"
    source = os.path.join(digits_dir, "test", "5")
    assert predict("--model_dir", classifier, "--source", source, "--out", str(out)) == 0
    other = tmp_path / "other"
    shutil.copytree(classifier, other, ignore=shutil.ignore_patterns("predictions"))
    os.utime(other / "best.pth.tar")  # another checkpoint as far as the folder can tell
    before = {f: (out / f).read_bytes() for f in files(out)}
    line = error_line(capsys, "--model_dir", str(other), "--source", source, "--out", str(out))
    assert line.startswith(f"--out {out}: holds predictions of") and "give another --out, or --overwrite" in line
    assert {f: (out / f).read_bytes() for f in files(out)} == before
    assert predict("--model_dir", str(other), "--source", source, "--out", str(out), "--overwrite") == 0
    assert read(out / "manifest.json")["identity"]["model_dir"] == str(other)


@pytest.mark.parametrize("case", ["no_images", "missing_source", "untrained"])
def test_bad_input_is_one_line_and_writes_nothing(case, classifier, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    untrained = tmp_path / "untrained"
    untrained.mkdir()
    (untrained / "params.json").write_text("{}")
    model, source, named, message = {
        "no_images": (classifier, str(empty), f"--source {empty}", "no images"),
        "missing_source": (classifier, str(tmp_path / "nowhere"), "--source", "no such folder, file or glob"),
        "untrained": (str(untrained), str(empty), f"--model_dir {untrained}", "no best.pth.tar"),
    }[case]
    before = files(model)
    line = error_line(capsys, "--model_dir", model, "--source", source)
    assert line.startswith(named) and message in line
    assert files(model) == before


def test_out_that_is_a_file_is_refused(classifier, digits_dir, tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("mine")
    line = error_line(capsys, "--model_dir", classifier, "--source", os.path.join(digits_dir, "test", "1"), "--out",
                      str(a_file))
    assert line == f"--out {a_file}: is a file, not a folder" and a_file.read_text() == "mine"


@pytest.mark.slow
def test_segmentation_masks_at_each_images_size_and_keep_regions(trained_run, scenes_dir, tmp_path):
    exp = trained_run("segmentation")[0]
    source = os.path.join(scenes_dir, "test", "images")  # 48-px scenes, the model trained on 32-px ones
    assert predict("--model_dir", exp, "--source", source, "--out", str(tmp_path / "plain"), "--draw") == 0
    assert predict("--model_dir", exp, "--source", source, "--out", str(tmp_path / "clean"), "--keep_regions", "1") == 0
    classes = read(os.path.join(scenes_dir, "classes.json"))
    assert read(tmp_path / "plain" / "classes.json") == classes
    for name in sorted(os.listdir(source)):
        stem = os.path.splitext(name)[0]
        mask = tmp_path / "plain" / "masks" / f"{stem}.png"
        with Image.open(os.path.join(source, name)) as im, Image.open(mask) as m:
            assert m.size == im.size and m.mode == "P"  # indices as pixels, the classes' colours as palette
            plain = np.asarray(m)
        assert plain.max() < len(classes)
        with Image.open(tmp_path / "plain" / "drawn" / f"{stem}.png") as drawn:  # 48-px scenes drawn 6 times larger
            assert drawn.size == (6 * m.width, 6 * m.height)
        clean = np.asarray(Image.open(tmp_path / "clean" / "masks" / f"{stem}.png"))
        changed = clean != plain
        assert (clean[changed] == 0).all()  # cleaning only ever hands pixels to the background


@pytest.mark.slow
def test_detection_yolo_files_for_every_image_and_one_coco_file(trained_run, boxes_dir, tmp_path):
    exp = trained_run("detection")[0]
    source = os.path.join(boxes_dir, "test", "images")
    assert predict("--model_dir", exp, "--source", source, "--out", str(tmp_path / "out"), "--draw") == 0
    names = sorted(os.listdir(source))
    assert sorted(os.listdir(tmp_path / "out" / "labels")) == [os.path.splitext(n)[0] + ".txt" for n in names]
    assert sorted(os.listdir(tmp_path / "out" / "drawn")) == [os.path.splitext(n)[0] + ".png" for n in names]
    coco = read(tmp_path / "out" / "detections.json")
    assert len(coco["images"]) == len(names) and [c["name"] for c in coco["categories"]] == [str(d) for d in range(10)]
    for a in coco["annotations"]:
        image = coco["images"][a["image_id"] - 1]
        x, y, w, h = a["bbox"]
        assert 0 <= a["score"] <= 1 and 1 <= a["category_id"] <= 10 and a["iscrowd"] == 0
        assert a["area"] == pytest.approx(a["bbox"][2] * a["bbox"][3], abs=0.02)
        assert -1 <= x and x + w <= image["width"] + 1 and -1 <= y and y + h <= image["height"] + 1


@pytest.mark.slow
def test_keypoints_json_in_the_training_layout_and_csv(trained_run, points_dir, tmp_path):
    exp = trained_run("keypoints")[0]
    source = os.path.join(points_dir, "test", "images")
    assert predict("--model_dir", exp, "--source", source, "--out", str(tmp_path / "out"), "--draw") == 0
    assert len(os.listdir(tmp_path / "out" / "drawn")) == len(os.listdir(source))
    out = read(tmp_path / "out" / "keypoints.json")
    truth = read(os.path.join(points_dir, "test", "keypoints.json"))
    assert out["names"] == truth["names"] and sorted(out["images"]) == sorted(truth["images"])  # the same file keys
    assert len(out["images"]) == len(os.listdir(source))
    for points in out["images"].values():
        assert all(-8 <= x <= 40 and -8 <= y <= 40 and v == 2 for x, y, v in points)  # 32-px images
    with open(tmp_path / "out" / "keypoints.csv") as f:
        assert len(list(csv.reader(f))) == len(out["images"]) + 1


def test_a_missing_model_dir_is_one_line(tmp_path, capsys):
    assert error_line(capsys, "--model_dir", str(tmp_path / "nope"), "--source", str(tmp_path)).startswith(
        f"--model_dir {tmp_path / 'nope'}")


def test_output_stems_are_always_the_path_without_extension_and_a_shared_one_is_refused(tmp_path):
    from core.rundir.predictions import output_stems

    root = str(tmp_path / "src")
    paths = [f"{root}/x/1.jpg", f"{root}/y/2.png", str(tmp_path / "elsewhere" / "3.png"), f"{root}/../../4.png",
             f"{root}/..5.png"]
    stems = output_stems(paths, root, "src")
    assert stems == {paths[0]: "x/1", paths[1]: "y/2", paths[2]: "3", paths[3]: "4", paths[4]: "..5"}
    with pytest.raises(UserError, match=r"^--source src: .*x/1.jpg and .*x/1.png would share the output name x/1"):
        output_stems([*paths, f"{root}/x/1.png"], root, "src")  # a neighbour never renames x/1.jpg's files


def test_two_images_sharing_a_name_are_refused_before_anything_is_written(classifier, digits_dir, tmp_path,
                                                                           capsys):
    source = tmp_path / "photos"
    source.mkdir()
    first = sorted(glob.glob(os.path.join(digits_dir, "test", "2", "*.png")))[0]
    shutil.copy(first, source / "x.png")
    Image.open(first).convert("RGB").save(source / "x.jpg")
    out = tmp_path / "out"
    line = error_line(capsys, "--model_dir", classifier, "--source", str(source), "--out", str(out), "--draw")
    assert line == (f"--source {source}: {source / 'x.jpg'} and {source / 'x.png'} would share the output name x "
                    f"(masks/, labels/, drawn/ name files by the image without its extension); rename one")
    assert not out.exists()
    (source / "x.png").rename(source / "y.png")
    assert predict("--model_dir", classifier, "--source", str(source), "--out", str(out), "--draw") == 0
    assert sorted(os.listdir(out / "drawn")) == ["x.png", "y.png"]  # x.jpg -> x.png, whatever lies beside it


def test_an_export_predicts_into_its_own_default_folder_beside_the_checkpoints(classifier, digits_dir, tmp_path,
                                                                               capsys):
    """docs/prediction.md's sequence: predict, then predict with the ONNX export of the same folder."""
    pytest.importorskip("onnxruntime")
    import export

    run = tmp_path / "run"
    shutil.copytree(classifier, run, ignore=shutil.ignore_patterns("predictions"))
    source = tmp_path / "photos"
    shutil.copytree(os.path.join(digits_dir, "test", "8"), source)
    assert export.main(["--model_dir", str(run), "--format", "onnx", "--data_dir", digits_dir]) == 0
    assert predict("--model_dir", str(run), "--source", str(source)) == 0
    assert predict("--model_dir", str(run), "--source", str(source), "--exported", "onnx") == 0
    assert predict("--model_dir", str(run), "--source", str(source), "--restore_file", "last") == 0
    assert sorted(os.listdir(run / "predictions")) == ["photos", "photos_last", "photos_onnx"]
    onnx = read(run / "predictions" / "photos_onnx" / "manifest.json")["identity"]["checkpoint"]
    assert onnx == str(run / "export" / "best.onnx")
    assert [r["label_1"] for r in rows_of(run / "predictions" / "photos")] == [
        r["label_1"] for r in rows_of(run / "predictions" / "photos_onnx")]
    capsys.readouterr()
    out = run / "predictions" / "photos"  # an explicit --out holding the checkpoint's predictions: refused as before
    line = error_line(capsys, "--model_dir", str(run), "--source", str(source), "--exported", "onnx", "--out", str(out))
    assert line.startswith(f"--out {out}: holds predictions of {run / 'best.pth.tar'}")


def test_overwrite_removes_only_predict_outputs_and_run_or_source_folders_are_refused(classifier, digits_dir,
                                                                                       tmp_path, capsys):
    source = os.path.join(digits_dir, "test", "4")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    line = error_line(capsys, "--model_dir", classifier, "--source", source, "--out", str(mine), "--overwrite")
    assert "holds files predict.py did not write" in line and (mine / "notes.txt").read_text() == "keep"
    for out in (source, classifier, os.path.dirname(source)):
        line = error_line(capsys, "--model_dir", classifier, "--source", source, "--out", out, "--overwrite")
        assert line.startswith(f"--out {out}: would hold the source images or the run folder")
    assert os.path.exists(os.path.join(classifier, "best.pth.tar")) and os.listdir(source)


def test_a_torn_last_line_is_mended_and_a_list_naming_missing_files_is_refused(classifier, digits_dir, tmp_path,
                                                                                capsys):
    source, out = os.path.join(digits_dir, "test", "6"), tmp_path / "out"
    assert predict("--model_dir", classifier, "--source", source, "--out", str(out)) == 0
    lines = (out / "predictions.jsonl").read_text().splitlines()
    (out / "predictions.jsonl").write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:20])  # killed mid-append
    assert predict("--model_dir", classifier, "--source", source, "--out", str(out)) == 0
    assert f"{len(lines)} images: 1 predicted this run, {len(lines) - 1} predicted before, 0 unreadable;" in (
        capsys.readouterr().out)
    assert len(rows_of(str(out))) == len(lines)
    (tmp_path / "list.txt").write_text(f"{os.path.join(source, os.listdir(source)[0])}\nnot/there.png\n")
    line = error_line(capsys, "--model_dir", classifier, "--source", str(tmp_path / "list.txt"))
    assert "lists 1 file(s) that do not exist, the first" in line and "not/there.png" in line


def test_draw_pictures_every_image_also_those_predicted_before(classifier, digits_dir, tmp_path):
    source = os.path.join(digits_dir, "test", "3")
    out = str(tmp_path / "out")
    assert predict("--model_dir", classifier, "--source", source, "--out", out) == 0
    assert not os.path.exists(os.path.join(out, "drawn"))
    assert predict("--model_dir", classifier, "--source", source, "--out", out, "--draw") == 0  # nothing to predict
    names = sorted(os.listdir(source))
    assert sorted(os.listdir(os.path.join(out, "drawn"))) == [os.path.splitext(n)[0] + ".png" for n in names]
    with Image.open(os.path.join(source, names[0])) as im, Image.open(os.path.join(out, "drawn", os.path.splitext(
            names[0])[0] + ".png")) as drawn:
        scale = -(-256 // min(im.size))  # a 28-px digit is drawn enlarged, its label legible
        assert drawn.size == (im.width * scale, im.height * scale)
        corner = np.asarray(drawn.convert("RGB"))[:12, :40].astype(int)
    assert ((corner[..., 0] - corner[..., 1:].max(-1)) > 100).any()  # the red label, top left
    assert "drawn/" in read(os.path.join(out, "manifest.json"))["files"]


def test_each_option_that_changes_the_predictions_names_its_own_default_folder():
    from core.rundir.predictions import default_out
    from core.rundir.report import variant_of

    options = [(None, None, None, None), (None, 64, None, None), (None, 64, 32, None), (None, None, 32, None),
               (None, None, None, 1), (None, None, None, None, "onnx")]
    names = [os.path.basename(default_out("m", "photos", "best", variant_of(*o))) for o in options]
    assert names == ["photos", "photos_window64", "photos_window64_stride32", "photos_stride32", "photos_regions1",
                     "photos_onnx"]  # a stride alone changes the params' tiles too: never the plain folder
    assert default_out("m", "photos", "last", None).endswith("photos_last")
