"""The data set's start-up cache (core/data/imagecache.py): images verified once, decoded once, shared between runs.

Every test works on its own small copy of the digits, since the cache writes into DATA_DIR/.cache.
"""

import fcntl
import itertools
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import train
from conftest import ROOT
from core.config import load_params
from core.data import imagecache
from core.data import loaders as core_data
from core.tasks import TASKS
from model import defaults
from utils import UserError, load_checkpoint, run_cli

CLASSES, PER_SPLIT = ("0", "1", "2"), {"train": 20, "valid": 6}
N_IMAGES = len(CLASSES) * sum(PER_SPLIT.values())
PARAMS_FOLDERS = itertools.count()


@pytest.fixture
def data(tmp_path, digits_dir):
    """A small copy of the digits: 3 classes, 20 train and 6 valid images each."""
    root = tmp_path / "data"
    for split, n in PER_SPLIT.items():
        for c in CLASSES:
            (root / split / c).mkdir(parents=True)
            for f in sorted((Path(digits_dir) / split / c).iterdir())[:n]:
                shutil.copy(f, root / split / c / f.name)
    return root


def make_params(make_experiment, **overrides):
    exp = make_experiment(f"params{next(PARAMS_FOLDERS)}", **{"train_subset": 0, "valid_subset": 0, **overrides})
    return load_params(os.path.join(exp, "params.json"))


@pytest.fixture
def params(make_experiment):
    return make_params(make_experiment)


def counting(counts, key, fn):
    """fn, adding 1 to counts[key] at each call."""
    def counted(*args):
        counts[key] += 1
        return fn(*args)

    return counted


@pytest.fixture
def calls(monkeypatch):
    """How many images fetch_dataloader checks and decodes (classification's are the defaults', model/defaults.py)."""
    counts = {"checked": 0, "decoded": 0}
    monkeypatch.setattr(defaults, "check_item", counting(counts, "checked", defaults.check_item))
    monkeypatch.setattr(defaults, "load_image", counting(counts, "decoded", defaults.load_image))
    return counts


def fetch(data, params):
    return core_data.fetch_dataloader(["train", "valid"], str(data), params)[0]


def cache_files(data):
    """{name: (size, mtime_ns)} of DATA_DIR/.cache."""
    folder = data / imagecache.CACHE_DIR
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir()} if folder.exists() else {}


def arrays(data, split):
    return sorted(n for n in cache_files(data) if n.startswith(f"{split}-") and n.endswith(".npy"))


def manifest(data):
    return json.loads((data / imagecache.CACHE_DIR / imagecache.MANIFEST).read_text())


def touch_later(path):
    """Move the modification time on, as a later edit would (a rewrite within one clock tick may not)."""
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))


# ---------------------------------------------------------------- verified once, decoded once


def test_second_start_checks_and_decodes_nothing(data, params, calls):
    first = fetch(data, params)
    assert calls == {"checked": N_IMAGES, "decoded": N_IMAGES}
    assert len(manifest(data)) == N_IMAGES and all(rel.endswith(".png") for rel in manifest(data))
    assert len(arrays(data, "train")) == 1 and len(arrays(data, "valid")) == 1
    before = cache_files(data)

    second = fetch(data, params)
    assert calls == {"checked": N_IMAGES, "decoded": N_IMAGES}  # nothing more: not even reading an item decodes
    for split in ("train", "valid"):
        for i in (0, len(second[split].dataset) - 1):
            assert torch.equal(first[split].dataset[i][0], second[split].dataset[i][0])
    assert calls["decoded"] == N_IMAGES
    assert cache_files(data) == before  # nothing rewritten


def test_without_cache_only_the_subset_is_checked_and_then_never_again(data, make_experiment, calls):
    params = make_params(make_experiment, cache_images=0, train_subset=10)
    fetch(data, params)
    assert calls["checked"] == 10 + PER_SPLIT["valid"] * len(CLASSES)
    fetch(data, params)
    assert calls["checked"] == 10 + PER_SPLIT["valid"] * len(CLASSES)
    assert not arrays(data, "train")


def test_changed_image_is_rechecked_and_its_split_rebuilt(data, params, calls):
    loaders = fetch(data, params)
    valid_array, (old_train,) = arrays(data, "valid"), arrays(data, "train")
    victim = sorted((data / "train" / "1").iterdir())[3]
    row = loaders["train"].dataset.paths.index(str(victim))
    old_pixels = np.array(loaders["train"].dataset.images[row])
    killed_build = data / imagecache.CACHE_DIR / f".tmp-x1y2z3{imagecache.array_stem('train', params.im_sz)}-k.npy"
    killed_build.write_bytes(b"half an array")

    with Image.open(victim) as im:
        Image.fromarray(255 - np.asarray(im)).save(victim)
    touch_later(victim)
    calls.update(checked=0, decoded=0)
    loaders = fetch(data, params)

    assert calls["checked"] == 1
    assert calls["decoded"] == PER_SPLIT["train"] * len(CLASSES)  # train rebuilt, valid reused
    (new_train,) = arrays(data, "train")
    assert new_train != old_train and arrays(data, "valid") == valid_array
    assert not killed_build.exists()
    decode, _, _ = TASKS["classification"].decoder(params)
    new_pixels = np.array(loaders["train"].dataset.images[row])
    assert np.array_equal(new_pixels, decode((str(victim), None))) and not np.array_equal(new_pixels, old_pixels)
    assert manifest(data)[os.path.relpath(victim, data)] == imagecache.file_stamp(victim)


def test_added_and_removed_images_rebuild_the_split(data, params):
    fetch(data, params)
    (first,) = arrays(data, "train")
    extra = data / "train" / "2" / "extra.png"
    shutil.copy(next((data / "train" / "2").iterdir()), extra)
    assert len(fetch(data, params)["train"].dataset) == PER_SPLIT["train"] * len(CLASSES) + 1
    (second,) = arrays(data, "train")
    extra.unlink()
    fetch(data, params)
    (third,) = arrays(data, "train")
    assert second != first and third == first  # the key follows the content: back to the first set of files
    assert os.path.relpath(extra, data) in manifest(data)  # harmless: nothing to check, so nothing rewritten
    touch_later(next((data / "valid" / "0").iterdir()))
    fetch(data, params)
    assert os.path.relpath(extra, data) not in manifest(data)  # the next rewrite forgets files that are gone


def test_subsets_and_sizes_share_or_separate_arrays(data, make_experiment, calls):
    fetch(data, make_params(make_experiment, train_subset=10))
    fetch(data, make_params(make_experiment, train_subset=25))
    assert calls["decoded"] == N_IMAGES  # the second subset read the first one's file
    fetch(data, make_params(make_experiment, im_sz=20))
    assert len(arrays(data, "train")) == 2  # one per size


def test_content_key_covers_paths_labels_stamps_and_recipe():
    entries = [("train/0/a.png", 0, [10, 1]), ("train/1/b.png", 1, [12, 2])]
    key = imagecache.content_key(entries, "resize-v1")
    assert key == imagecache.content_key([tuple(e) for e in entries], "resize-v1")
    variants = [entries[:1], entries + [("train/1/c.png", 1, [9, 3])], [entries[0], ("train/1/b.png", 0, [12, 2])],
                [entries[0], ("train/1/b.png", 1, [12, 3])], [entries[0], ("train/1/b.png", 1, [13, 2])]]
    assert key not in {imagecache.content_key(v, "resize-v1") for v in variants}
    assert key != imagecache.content_key(entries, "resize-v2")


# ---------------------------------------------------------------- bad images


def test_corrupt_image_is_one_line_error_and_never_cached(data, params, make_experiment, capsys):
    bad = data / "valid" / "2" / "garbage.png"
    bad.write_text("not a PNG")
    with pytest.raises(UserError) as e:
        fetch(data, params)
    assert str(e.value) == f"{bad}: cannot read image"
    assert cache_files(data) == {}  # nothing written before the error

    bad.unlink()
    fetch(data, params)
    before = cache_files(data)
    items = train_items(data)
    in_subset = {p for p, _ in core_data.subset(items, 4, params.seed)}
    victim = next(p for p, _ in items if p not in in_subset)
    Path(victim).write_bytes(Path(victim).read_bytes()[:60])  # truncated: signature and header intact
    touch_later(victim)
    with pytest.raises(UserError, match="cannot read image"):
        fetch(data, params)
    assert cache_files(data) == before  # neither the manifest nor any array was touched
    assert manifest(data)[os.path.relpath(victim, data)] != imagecache.file_stamp(victim)

    # Through train.py in this process: one line, exit code 2, nothing written. The cache holds whole splits, so
    # an image outside train_subset is checked too.
    exp = make_experiment("bad", num_epochs=1, train_subset=4)
    with pytest.raises(SystemExit) as exit_:
        run_cli(lambda: train.main(["--model_dir", exp, "--data_dir", str(data)]))
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"error: {victim}: cannot read image"]
    assert os.listdir(exp) == ["params.json"]


# ---------------------------------------------------------------- concurrency


BUILDER = """
import json, sys, time
import numpy as np
from PIL import Image
sys.path.insert(0, {root!r})
from core.data import imagecache

data_dir, items_file, count_file, out = sys.argv[1:]

def decode(item):
    path = item[0]
    with open(count_file, "a") as f:
        f.write(".")
    time.sleep(0.01)  # a build slow enough for the other process to arrive during it
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB").resize((8, 8)))

items = json.load(open(items_file))
print("ready", flush=True)
stamps = imagecache.item_stamps(data_dir, items, lambda item: [item[0]])
np.save(out, np.asarray(imagecache.split_array(data_dir, "train", items, stamps, decode, "recipe", (8, 8, 3))))
"""


def train_items(data):
    classification = TASKS["classification"]
    return classification.scan_split(str(data), "train", classification.find_classes(str(data)))


def test_two_processes_building_at_once_leave_one_valid_array(data, tmp_path):
    items = train_items(data)
    (tmp_path / "items.json").write_text(json.dumps(items))
    (tmp_path / "builder.py").write_text(BUILDER.format(root=str(ROOT)))
    folder = data / imagecache.CACHE_DIR
    folder.mkdir()
    lock = os.open(folder / (imagecache.array_stem("train", 8) + ".lock"), os.O_RDWR | os.O_CREAT)
    fcntl.flock(lock, fcntl.LOCK_EX)  # hold both builders at the lock, then let them race for it
    try:
        argv = [sys.executable, tmp_path / "builder.py", data, tmp_path / "items.json", tmp_path / "count"]
        procs = [subprocess.Popen([*argv, tmp_path / f"out{k}.npy"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for k in range(2)]
        for p in procs:
            assert p.stdout.readline().strip() == "ready", p.stderr.read()
        time.sleep(0.5)
        assert not arrays(data, "train")
    finally:
        os.close(lock)
    for p in procs:
        assert p.wait(timeout=60) == 0, p.stderr.read()
        p.stdout.close()
        p.stderr.close()

    assert (tmp_path / "count").read_text() == "." * len(items)  # decoded once, by one of them
    (name,) = arrays(data, "train")
    assert [n for n in cache_files(data) if n.startswith(".tmp-")] == []
    cached = np.load(folder / name)
    assert cached.shape == (len(items), 8, 8, 3)
    for k in range(2):
        assert np.array_equal(np.load(tmp_path / f"out{k}.npy"), cached)
    with Image.open(items[5][0]) as im:
        assert np.array_equal(cached[5], np.asarray(im.convert("RGB").resize((8, 8))))


# ---------------------------------------------------------------- same results


@pytest.mark.parametrize("augmentation, im_sz, train_subset", [("light", 32, 0), ("standard", 24, 25),
                                                                ("standard", 40, 0)])
def test_cached_and_decoded_images_give_identical_tensors(data, make_experiment, augmentation, im_sz, train_subset):
    """32 is the files' own size; 24 and 40 make the pipeline's Resize do real work."""
    loaders = {}
    for cache in (1, 0):
        params = make_params(make_experiment, cache_images=cache, augmentation=augmentation, im_sz=im_sz,
                             train_subset=train_subset, batch_size=8)
        loaders[cache] = fetch(data, params)
    assert isinstance(loaders[1]["train"].dataset.images, imagecache.Rows)
    for split in ("train", "valid"):
        for i in (0, 7, 13, len(loaders[0][split].dataset) - 1):  # same seed, same order: same random augmentation
            (x1, y1), (x0, y0) = loaders[1][split].dataset[i], loaders[0][split].dataset[i]
            assert y1 == y0 and torch.equal(x1, x0), (split, i)
    for (x1, y1), (x0, y0) in zip(loaders[1]["train"], loaders[0]["train"]):
        assert torch.equal(x1, x0) and torch.equal(y1, y0)


@pytest.mark.slow
def test_training_with_and_without_cache_is_identical(data, make_experiment):
    """End to end, the consequence of the test above (~20 s on 2 cores, mostly train.py's fixed costs)."""
    runs = {}
    for cache in (1, 0):
        exp = make_experiment(f"cache{cache}", cache_images=cache, num_epochs=1, train_subset=40, valid_subset=0,
                              batch_size=8)
        assert train.main(["--model_dir", exp, "--data_dir", str(data)]) == 0
        runs[cache] = load_checkpoint(os.path.join(exp, "last.pth.tar"))["model"]
    assert runs[1].keys() == runs[0].keys()
    assert all(torch.equal(runs[1][k], runs[0][k]) for k in runs[1])


# ---------------------------------------------------------------- read-only data


@pytest.mark.parametrize("how", ["chmod", "cache_folder_blocked"])
def test_read_only_data_dir_still_works(data, params, how):
    """chmod: the real case (skipped as root, who may write anyway); a file named .cache: the same failure, as root."""
    if how == "chmod":
        if os.geteuid() == 0:
            pytest.skip("root ignores permissions")
        for folder, _, _ in os.walk(data):
            os.chmod(folder, 0o555)
    else:
        (data / imagecache.CACHE_DIR).write_text("in the way")
    try:
        cached = fetch(data, params)
        for split in ("train", "valid"):
            assert not isinstance(cached[split].dataset.images, imagecache.Rows)  # decoded into memory
        params.cache_images = 0
        decoded = fetch(data, params)
        for i in (0, 9):
            assert torch.equal(cached["valid"].dataset[i][0], decoded["valid"].dataset[i][0])
    finally:
        for folder, _, _ in os.walk(data):
            os.chmod(folder, 0o755)
    assert not (data / imagecache.CACHE_DIR).is_dir()


def test_read_only_split_over_the_cap_is_decoded_when_read(data, params, make_experiment, calls, monkeypatch):
    """Held in memory, a split too large for IN_MEMORY_MAX would grow with the set: it is not held at all."""
    (data / imagecache.CACHE_DIR).write_text("in the way")  # nothing can be written: a read-only data set
    one_image = params.im_sz * params.im_sz * 3
    monkeypatch.setattr(imagecache, "IN_MEMORY_MAX", PER_SPLIT["valid"] * len(CLASSES) * one_image)  # valid fits
    loaders = fetch(data, params)
    assert loaders["train"].dataset.images is None and calls["decoded"] == PER_SPLIT["valid"] * len(CLASSES)
    assert isinstance(loaders["valid"].dataset.images, np.ndarray)
    decoded = fetch(data, make_params(make_experiment, cache_images=0))
    for a, b in zip(loaders["train"], decoded["train"]):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_no_array_written_without_room_on_the_disk(data, params, monkeypatch):
    monkeypatch.setattr(imagecache, "DISK_RESERVE", 1 << 62)  # no disk has that much left
    loaders = fetch(data, params)
    assert arrays(data, "train") == [] and arrays(data, "valid") == []
    assert len(manifest(data)) == N_IMAGES  # the check is still recorded
    assert isinstance(loaders["train"].dataset.images, np.ndarray)  # small: decoded into memory instead


def test_later_start_stats_each_file_once_and_checks_nothing(data, params, calls, monkeypatch):
    fetch(data, params)
    counts = {"stat": 0, "files": 0}
    monkeypatch.setattr(imagecache, "file_stamp", counting(counts, "stat", imagecache.file_stamp))
    monkeypatch.setattr(defaults, "item_files", counting(counts, "files", defaults.item_files))
    calls.update(checked=0, decoded=0)
    fetch(data, params)
    assert counts == {"stat": N_IMAGES, "files": N_IMAGES}  # once each: the check and the arrays' keys share them
    assert calls == {"checked": 0, "decoded": 0}


def test_checking_and_decoding_in_worker_processes_match_this_process(data, params, monkeypatch):
    """Many items are checked and decoded by forked workers: the same arrays, the same manifest, the same error."""
    built = []
    for parallel_from in (10**9, 1):  # this process, then workers for every split
        monkeypatch.setattr(imagecache, "PARALLEL_FROM", parallel_from)
        shutil.rmtree(data / imagecache.CACHE_DIR, ignore_errors=True)
        fetch(data, params)
        names = arrays(data, "train") + arrays(data, "valid")
        built.append(([np.load(data / imagecache.CACHE_DIR / n) for n in names], names, manifest(data)))
    (serial, names, listed), (parallel, names_p, listed_p) = built
    assert names_p == names and len(names) == 2 and listed_p == listed
    assert all(np.array_equal(a, b) for a, b in zip(serial, parallel))

    items = train_items(data)
    for path, _ in (items[30], items[3]):  # two bad images: the first in scan order is named
        Path(path).write_text("not a PNG")
    shutil.rmtree(data / imagecache.CACHE_DIR)
    with pytest.raises(UserError) as e:
        fetch(data, params)
    assert str(e.value) == f"{items[3][0]}: cannot read image"
    assert cache_files(data) == {}


def test_later_start_finds_its_array_by_content_without_reading_headers(data):
    """A task caching images as stored learns their shape from every file's header: only while building."""
    items, looked = train_items(data), []
    stamps = imagecache.item_stamps(str(data), items, lambda item: [item[0]])

    def row_shape(every):
        looked.append(len(every))
        return (32, 32, 3)

    def images():
        return imagecache.images_for(str(data), "train", items, stamps, [0, 5], lambda item: defaults.load_image(
            item[0]), "as stored", row_shape)

    first, second = images(), images()
    assert looked == [len(items)] and np.array_equal(first[1], second[1])
