"""Classification data: DATA_DIR/{train,valid,test}/<class>/*.png, one label per image, read through
albumentations.

Edit PRESETS to add augmentations; `params.augmentation` picks one by name, or is an albumentations dict
(`A.to_dict(...)` output) so a hyperparameter search can vary augmentation without code changes.

The machinery around this file (checking every item once per data set, subsets, overfit mode, the image cache, the
DataLoaders and their seeding) is core/data/loaders.py; it calls this file through model/task.py.

To use torchvision transforms instead of albumentations, change this file alone:
  - PRESETS and build_transforms: torchvision.transforms.v2 pipelines, starting with v2.ToImage() (takes the
    HxWx3 array) and resize_step, ending with v2.ToDtype(torch.float32, scale=True) and v2.Normalize(MEAN, STD);
  - decoder: decode must still return the resized image as an HxWx3 uint8 array (what the cache stores), and
    recipe any text that changes when the resize does (its repr);
  - ImageDataset.__getitem__: self.transform(image) (torchvision takes the image itself, not image=...);
  - ImageDataset.reseed: torchvision draws from torch's global generator, so torch.manual_seed(seed);
  - transforms_record: something JSON can hold, e.g. {"train": repr(train_tf), "eval": repr(eval_tf)}.
"""

import json
import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no network here: skip albumentations' version check

import albumentations as A  # noqa: E402
import torch  # noqa: E402
from albumentations.pytorch import ToTensorV2  # noqa: E402

from data.folders import IMAGE_EXTS  # noqa: E402
from model.images import MEAN, STD, ItemDataset, augmentation_steps, load_image, readable_size  # noqa: E402
from utils import UserError  # noqa: E402

PRESETS = {
    "none": lambda sz: [],
    # small shifts, zooms and turns: safe for digits and text, where flips would change the class
    "light": lambda sz: [A.Affine(scale=(0.9, 1.1), translate_percent=(-0.08, 0.08), rotate=(-10, 10), p=0.8)],
    # the usual recipe for photos
    "standard": lambda sz: [
        A.RandomResizedCrop(size=(sz, sz), scale=(0.6, 1.0)),
        A.HorizontalFlip(),
        A.ColorJitter(0.2, 0.2, 0.2, 0.05, p=0.5),
    ],
}


def build_transforms(params):
    """(train, eval) pipelines. Both resize and normalise; only train augments."""
    sz = params.im_sz
    augment = augmentation_steps(params, PRESETS)
    head, tail = [resize_step(sz)], [A.Normalize(mean=MEAN, std=STD), ToTensorV2()]
    return A.Compose(head + augment + tail, seed=params.seed), A.Compose(head + tail, seed=params.seed)


def build_batch_mix(params, n_clas):
    """MixUp / CutMix on whole training batches (torchvision.transforms.v2), or None when both are off.

    The returned mix(images, labels) -> (images, targets) runs in the training loop after the loader: with
    probability mix_prob it blends the batch and turns the labels into class probabilities [batch, n_clas]
    (otherwise they stay class indices). With both alphas on, each mixed batch gets one of the two at random.
    Its randomness is torch's global generator, which the checkpoint saves with the other RNG states."""
    if not (params.mixup_alpha or params.cutmix_alpha):
        return None
    from torchvision.transforms import v2  # only now: importing torchvision costs ~1 s

    mixers = [cls(alpha=alpha, num_classes=n_clas) for cls, alpha in
              ((v2.MixUp, params.mixup_alpha), (v2.CutMix, params.cutmix_alpha)) if alpha]
    return v2.RandomApply([v2.RandomChoice(mixers)], p=params.mix_prob)


def resize_step(sz):
    """The first step of both pipelines. `cache_images` stores its output, so a cached image enters the pipeline
    already sz x sz, where A.Resize returns it untouched: cached and decoded runs give identical tensors."""
    return A.Resize(sz, sz)


def decoder(params):
    """(decode, recipe, row_shape) for the image cache: decode(item) is its file as the pipelines' first step leaves
    it; recipe is that step in albumentations' serialisation (part of the cache key: a changed interpolation or
    version rebuilds the cache); row_shape(items) is the shape every decoded item has."""
    sz = params.im_sz
    resize = resize_step(sz)
    recipe = json.dumps(A.to_dict(resize), sort_keys=True)
    return (lambda item: resize(image=load_image(item[0]))["image"]), recipe, lambda items: (sz, sz, 3)


def transforms_record(train_tf, eval_tf):
    """The pipelines actually used, in albumentations' own serialisation (readable JSON, no pickle)."""
    return {"train": A.to_dict(train_tf), "eval": A.to_dict(eval_tf)}


# ---------------------------------------------------------------- the folders


def scan_image_folder(root):
    """{class: [image file names]} for root/<class>/<image>, classes and files sorted; a class folder without
    images maps to []: the layout of a split as training reads it (data/build_dataset.py --src reads raw class
    folders by its own rules, before they become splits)."""
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    return {c: sorted(f for f in os.listdir(os.path.join(root, c)) if f.lower().endswith(IMAGE_EXTS))
            for c in classes}


def find_classes(data_dir):
    """The class names: the sorted folder names of DATA_DIR/train."""
    return list(scan_image_folder(os.path.join(data_dir, "train")))


def scan_split(data_dir, split, classes):
    """[(path, label)] for DATA_DIR/split/<class>/<image>, labels indexing `classes`; a folder that is not a class
    or holds no image is an error."""
    split_dir = os.path.join(data_dir, split)
    found = scan_image_folder(split_dir)
    if not found:
        raise UserError(f"{split_dir}: no class folders (expected {split_dir}/<class>/<image>)")
    items = []
    for name, files in found.items():
        if name not in classes:
            raise UserError(f"{split_dir}: class folder '{name}' is not among the training classes")
        folder = os.path.join(split_dir, name)
        if not files:
            raise UserError(f"{folder}: class folder has no images")
        items += [(os.path.join(folder, f), classes.index(name)) for f in files]
    return items


def item_files(item):
    """The files an item is read from (what the image cache stamps); the first is the image the gallery shows."""
    return [item[0]]


def check_item(item, classes):
    """Decode the image once, so a broken or truncated file is reported before training starts (the result is
    kept: core/data/imagecache.py verify_once checks a file again only when it changes)."""
    readable_size(item[0])


def class_counts(dataset, n_clas):
    """Images per class in `dataset` (what class_weights "balanced" weighs by), from its labels."""
    return torch.bincount(torch.tensor(dataset.targets, dtype=torch.long), minlength=n_clas).tolist()


class ImageDataset(ItemDataset, torch.utils.data.Dataset):
    """(image tensor, label) for each (path, label) of items; targets are int class indices (the gallery and the
    confidently-wrong examples read them)."""

    def __getitem__(self, i):
        return self.transform(image=self.image(i))["image"], self.targets[i]


Dataset = ImageDataset
