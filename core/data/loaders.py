"""From a data folder to DataLoaders: the machinery around model/data_loader.py, which a user rarely needs to read.

    loaders, classes = fetch_dataloader(["train", "valid"], data_dir, params)
    for epoch ...:
        reseed_epoch(loaders["train"], epoch_seed(params.seed, epoch))

Here: checking the folders and every image before training starts (once per data set, core/data/imagecache.py),
subsets, overfit mode, the image cache, batch sizes, the BatchNorm drop_last rule and the seeding that makes data
order and augmentation reproducible. How an image becomes a tensor (augmentation, decoding, the Dataset) is
model/data_loader.py; what counts as a class folder or an image file is data/build_dataset.py's scan_image_folder.
"""

import os

import torch
from PIL import Image, UnidentifiedImageError

from core.data import imagecache
from data.build_dataset import scan_image_folder
from model.data_loader import ImageDataset, build_transforms, decoder
from utils import UserError


def fetch_dataloader(splits, data_dir, params, pin_memory=False, training=True):
    """{split: DataLoader} and the class names. When training, 'train' shuffles and augments; other splits, and
    every split when evaluating (training=False), do neither.

    The train loader is reseeded before each epoch by the training loop (reseed_epoch), so data order and
    augmentation are reproducible and a resumed run sees what an uninterrupted run would.
    """
    check_folders(data_dir, splits)
    classes, _ = scan_split(os.path.join(data_dir, "train"))
    train_tf, eval_tf = build_transforms(params)
    if params.overfit_batches:
        train_tf = eval_tf  # the overfit check learns a few fixed batches: no augmentation
    chosen = choose_items(splits, data_dir, classes, params, training)
    # The cache holds whole splits (so cells with different subsets share one file): then every image is checked.
    to_check = [p for _, every, items in chosen.values() for p, _ in (every if params.cache_images else items)]
    imagecache.verify_once(data_dir, to_check, check_readable)
    decode, recipe = decoder(params.im_sz)
    loaders = {}
    for split, (source, every, items) in chosen.items():
        is_train = training and split == "train"
        images = (imagecache.images_for(data_dir, source, every, items, params.im_sz, decode, recipe)
                  if params.cache_images else None)
        loaders[split] = make_loader(ImageDataset(items, train_tf if is_train else eval_tf, images), params,
                                     is_train, pin_memory)
    return loaders, classes


def class_counts(dataset, n_clas):
    """Images per class in `dataset` (what class_weights "balanced" weighs by), from its labels."""
    return torch.bincount(torch.tensor(dataset.labels, dtype=torch.long), minlength=n_clas).tolist()


def reseed_epoch(loader, seed):
    """Restart the loader's shuffling and its dataset's augmentation at `seed`, before an epoch.

    Both streams then depend only on the seed, never on the epochs before: a run resumed at epoch k gets the
    batches and augmentations an uninterrupted run gets at epoch k.
    """
    loader.generator.manual_seed(seed)
    loader.dataset.reseed(seed)


# ---------------------------------------------------------------- which images


def check_folders(data_dir, splits):
    """DATA_DIR and the folder of each split (and train's, which names the classes) exist."""
    if not os.path.isdir(data_dir):
        raise UserError(f"data_dir {data_dir}: not found")
    for split in ("train",) + tuple(splits):
        if not os.path.isdir(os.path.join(data_dir, split)):
            raise UserError(f"data_dir {data_dir}: missing the '{split}' folder (expected {data_dir}/{split}/<class>/)")


def scan_split(split_dir, classes=None):
    """(classes, [(path, label)]) for split_dir/<class>/<image>. Labels follow `classes` (train's sorted folder
    names); without them, this split's folders are the classes."""
    found = scan_image_folder(split_dir)
    if not found:
        raise UserError(f"{split_dir}: no class folders (expected {split_dir}/<class>/<image>)")
    classes = classes or list(found)
    items = []
    for name, files in found.items():
        if name not in classes:
            raise UserError(f"{split_dir}: class folder '{name}' is not among the training classes")
        folder = os.path.join(split_dir, name)
        if not files:
            raise UserError(f"{folder}: class folder has no images")
        items += [(os.path.join(folder, f), classes.index(name)) for f in files]
    return classes, items


def subset(items, n, seed):
    """A seeded choice of n of `items`, in their order; all of them when n is 0 or not smaller."""
    if not n or n >= len(items):
        return items
    keep = torch.randperm(len(items), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    return [items[i] for i in keep.tolist()]


def choose_items(splits, data_dir, classes, params, training):
    """{split: (source folder, every image of that folder, the ones used)}.

    The source is the split's own folder, except in overfit mode (a debug check that the model can learn at all):
    overfit_batches fixed training batches, validated on themselves.
    """
    limits = {"train": params.train_subset, "valid": params.valid_subset}
    sources = {split: split for split in splits}
    if params.overfit_batches:
        limits = {"train": params.overfit_batches * params.batch_size}
        sources["valid"] = "train"
    chosen = {}
    for split in splits:
        _, every = scan_split(os.path.join(data_dir, sources[split]), classes)
        items = subset(every, limits.get(sources[split], 0), params.seed)
        if training and split == "train" and len(items) < 2:
            raise UserError(f"{data_dir}/train: {len(items)} image(s) to train on (train_subset "
                            f"{params.train_subset}); need at least 2")
        chosen[split] = sources[split], every, items
    return chosen


def check_readable(path):
    """Check the file's structure without decoding pixels (cheap), so a broken or truncated file is reported
    before training starts."""
    try:
        with Image.open(path) as im:
            im.verify()
    except (OSError, UnidentifiedImageError):
        raise UserError(f"{path}: cannot read image") from None


# ---------------------------------------------------------------- loaders


def make_loader(dataset, params, is_train, pin_memory):
    """The DataLoader of one split: shuffled only for training, with a generator of its own (see reseed_epoch)."""
    return torch.utils.data.DataLoader(
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


def seed_worker(worker_id):
    """Each worker augments with its own seed, derived from the loader's seeded generator."""
    info = torch.utils.data.get_worker_info()
    info.dataset.reseed(info.seed % 2**32)
