"""core/data/loaders.py: the folder layout read one way everywhere, and per-epoch reseeding that depends only on
the seed."""

import os
import subprocess
import sys

import torch

from conftest import ROOT
from core.config import load_params
from core.data.loaders import fetch_dataloader, reseed_epoch
from data.build_dataset import list_images


def test_loader_and_build_dataset_list_the_same_images(digits_dir):
    train = os.path.join(digits_dir, "train")
    from core.tasks import TASKS
    from model.classification.data_loader import scan_image_folder

    classification = TASKS["classification"]

    classes = classification.find_classes(digits_dir)
    items = classification.scan_split(digits_dir, "train", classes)
    assert classes == list(scan_image_folder(train)) == [str(d) for d in range(10)]
    assert [p for p, _ in items] == [p for p, _ in list_images(train)]


def test_build_dataset_imports_without_torch():
    """`python data/build_dataset.py` stays quick: the shared scanner must not pull torch in."""
    code = f"import sys; sys.path.insert(0, {str(ROOT)!r}); import data.build_dataset; print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "False", proc.stderr


def first_batch(loader, seed):
    reseed_epoch(loader, seed)
    return next(iter(loader))


def test_reseed_epoch_restarts_order_and_augmentation(make_experiment, digits_dir):
    exp = make_experiment(augmentation="standard", train_subset=64, batch_size=16)
    loader = fetch_dataloader(["train"], digits_dir, load_params(os.path.join(exp, "params.json")))[0]["train"]
    x5, y5 = first_batch(loader, 5)
    x6, y6 = first_batch(loader, 6)
    again_x5, again_y5 = first_batch(loader, 5)  # after another epoch, as a resumed run would be
    assert torch.equal(x5, again_x5) and torch.equal(y5, again_y5)
    assert not torch.equal(y5, y6) and not torch.equal(x5, x6)
