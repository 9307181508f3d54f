"""Data: an ImageFolder layout (DATA_DIR/{train,valid,test}/<class>/*.png) read through albumentations.

Edit PRESETS to add augmentations; `params.augmentation` picks one by name, or is an albumentations dict
(`A.to_dict(...)` output) so a hyperparameter search can vary augmentation without code changes.
"""

import json
import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no network here: skip albumentations' version check

import albumentations as A  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from albumentations.pytorch import ToTensorV2  # noqa: E402
from PIL import Image, UnidentifiedImageError  # noqa: E402

from core import imagecache  # noqa: E402
from utils import UserError  # noqa: E402

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet statistics, which pretrained weights expect

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
    if isinstance(params.augmentation, dict):
        try:
            augment = [A.from_dict({"transform": params.augmentation})]
        except Exception as e:
            raise UserError(f"params key 'augmentation': not a valid albumentations dict ({e})") from None
    elif params.augmentation in PRESETS:
        augment = PRESETS[params.augmentation](sz)
    else:
        raise UserError(f"params key 'augmentation': unknown preset '{params.augmentation}' "
                        f"(presets: {', '.join(PRESETS)}; or an albumentations dict)")
    head, tail = [resize_step(sz)], [A.Normalize(mean=MEAN, std=STD), ToTensorV2()]
    return A.Compose(head + augment + tail, seed=params.seed), A.Compose(head + tail, seed=params.seed)


def resize_step(sz):
    """The first step of both pipelines. `cache_images` stores its output, so a cached image enters the pipeline
    already sz x sz, where A.Resize returns it untouched: cached and decoded runs give identical tensors."""
    return A.Resize(sz, sz)


def decoder(sz):
    """(decode, recipe) for the image cache: a file as the pipelines' first step leaves it, and that step in
    albumentations' serialisation (part of the cache key: a changed interpolation or version rebuilds the cache)."""
    resize = resize_step(sz)
    return (lambda path: resize(image=load_image(path))["image"]), json.dumps(A.to_dict(resize), sort_keys=True)


def transforms_record(train_tf, eval_tf):
    """The pipelines actually used, in albumentations' own serialisation (readable JSON, no pickle)."""
    return {"train": A.to_dict(train_tf), "eval": A.to_dict(eval_tf)}


def scan_split(split_dir, classes=None):
    """[(path, label)] for split_dir/<class>/<image>. Labels follow `classes` (train's sorted folder names)."""
    found = sorted(d for d in os.listdir(split_dir) if os.path.isdir(os.path.join(split_dir, d)))
    if not found:
        raise UserError(f"{split_dir}: no class folders (expected {split_dir}/<class>/<image>)")
    classes = classes or found
    items = []
    for name in found:
        if name not in classes:
            raise UserError(f"{split_dir}: class folder '{name}' is not among the training classes")
        folder = os.path.join(split_dir, name)
        files = sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTS))
        if not files:
            raise UserError(f"{folder}: class folder has no images")
        items += [(os.path.join(folder, f), classes.index(name)) for f in files]
    return classes, items


def check_readable(path):
    """Check the file's structure without decoding pixels (cheap), so a broken or truncated file is reported
    before training starts."""
    try:
        with Image.open(path) as im:
            im.verify()
    except (OSError, UnidentifiedImageError):
        raise UserError(f"{path}: cannot read image") from None


def load_image(path):
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, UnidentifiedImageError):
        raise UserError(f"{path}: cannot read image") from None


class ImageDataset(torch.utils.data.Dataset):
    """(image tensor, label) for each (path, label) of items. `images`, when given, holds the decoded images in
    the same order (the image cache); otherwise each file is decoded when read."""

    def __init__(self, items, transform, images=None):
        self.paths = [p for p, _ in items]
        self.labels = [y for _, y in items]
        self.transform = transform
        self.images = images

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        # a copy: the cache is a read-only memory map, and a transform may write into its input
        image = np.array(self.images[i]) if self.images is not None else load_image(self.paths[i])
        return self.transform(image=image)["image"], self.labels[i]


def seed_worker(worker_id):
    """Each worker augments with its own seed, derived from the loader's seeded generator."""
    info = torch.utils.data.get_worker_info()
    info.dataset.transform.set_random_seed(info.seed % 2**32)


def subset(items, n, seed):
    if not n or n >= len(items):
        return items
    keep = torch.randperm(len(items), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    return [items[i] for i in keep.tolist()]


def fetch_dataloader(splits, data_dir, params, pin_memory=False, training=True):
    """{split: DataLoader} and the class names. When training, 'train' shuffles and augments; other splits, and
    every split when evaluating (training=False), do neither.

    The train loader's `generator` is reseeded each epoch by the training loop, so data order is reproducible
    and a resumed run sees the same order an uninterrupted run would.
    """
    if not os.path.isdir(data_dir):
        raise UserError(f"data_dir {data_dir}: not found")
    for split in ("train",) + tuple(splits):
        if not os.path.isdir(os.path.join(data_dir, split)):
            raise UserError(f"data_dir {data_dir}: missing the '{split}' folder (expected {data_dir}/{split}/<class>/)")
    classes, _ = scan_split(os.path.join(data_dir, "train"))
    train_tf, eval_tf = build_transforms(params)
    limits = {"train": params.train_subset, "valid": params.valid_subset}
    sources = {split: split for split in splits}
    if params.overfit_batches:  # debug mode: a few fixed training batches, not augmented, validated on themselves
        limits = {"train": params.overfit_batches * params.batch_size}
        sources["valid"] = "train"
        train_tf = eval_tf
    chosen = {}  # split -> (every image of its source folder, the ones used)
    for split in splits:
        _, every = scan_split(os.path.join(data_dir, sources[split]), classes)
        items = subset(every, limits.get(sources[split], 0), params.seed)
        if training and split == "train" and len(items) < 2:
            raise UserError(f"{data_dir}/train: {len(items)} image(s) to train on (train_subset "
                            f"{params.train_subset}); need at least 2")
        chosen[split] = every, items
    # The cache holds whole splits (so cells with different subsets share one file): then every image is checked.
    to_check = [p for every, items in chosen.values() for p, _ in (every if params.cache_images else items)]
    imagecache.verify_once(data_dir, to_check, check_readable)
    decode, recipe = decoder(params.im_sz)
    loaders = {}
    for split, (every, items) in chosen.items():
        is_train = training and split == "train"
        images = (imagecache.images_for(data_dir, sources[split], every, items, params.im_sz, decode, recipe)
                  if params.cache_images else None)
        dataset = ImageDataset(items, train_tf if is_train else eval_tf, images)
        loaders[split] = torch.utils.data.DataLoader(
            dataset,
            batch_size=params.batch_size if is_train else params.bs_test,
            shuffle=is_train,
            # a final batch of one breaks BatchNorm in train mode; drop it only then
            drop_last=is_train and len(dataset) % params.batch_size == 1,
            num_workers=params.num_workers,
            pin_memory=pin_memory,
            persistent_workers=params.num_workers > 0,
            worker_init_fn=seed_worker if params.num_workers > 0 else None,
            generator=torch.Generator().manual_seed(params.seed),
        )
    return loaders, classes
