"""From a data folder to DataLoaders, for any task: the machinery around model/<task>/data_loader.py, which a
user rarely needs to read.

    loaders, classes = fetch_dataloader(["train", "valid"], data_dir, params)
    for epoch ...:
        reseed_epoch(loaders["train"], epoch_seed(params.seed, epoch))

Here: checking every item before training starts (once per data set, core/data/imagecache.py), subsets, overfit
mode, the image cache, batch sizes, the BatchNorm drop_last rule and the seeding that makes data order and
augmentation reproducible. What a split holds, how it is checked and how an item becomes tensors is the task's
(model/<task>/data_loader.py).
"""

import os

import numpy as np
import torch

from core import tasks
from core.data import imagecache
from core.training.distributed import Ranks
from core.training.engine import rank_seed
from utils import UserError


def fetch_dataloader(splits, data_dir, params, pin_memory=False, training=True, ranks=None):
    """{split: DataLoader} and the class names. When training, 'train' shuffles and augments; other splits, and
    every split when evaluating (training=False), do neither.

    The train loader is reseeded before each epoch by the training loop (reseed_epoch), so data order and
    augmentation are reproducible and a resumed run sees what an uninterrupted run would. With `ranks` (several
    processes: core/training/distributed.py), 'train' gives this rank its share of each batch.
    """
    task = tasks.load(params.task)
    check_folders(data_dir, splits, task.split_layout)
    classes = task.find_classes(data_dir)
    train_tf, eval_tf = task.build_transforms(params)
    if params.overfit_batches:
        train_tf = eval_tf  # the overfit check learns a few fixed batches: no augmentation
    chosen = choose_items(task, splits, data_dir, classes, params, training)
    checked = items_to_check(chosen, whole=bool(params.cache_images))
    # each file stat'ed once a start, its stamp read by both the check and the cache's key (100,000 images: 0.2 s)
    stamps = {source: imagecache.item_stamps(data_dir, items, task.item_files) for source, items in checked.items()}
    imagecache.verify_once(data_dir, [item for items in checked.values() for item in items],
                           [pairs for each in stamps.values() for pairs in each],
                           lambda item: task.check_item(item, classes))
    decode, recipe, row_shape = task.decoder(params)
    loaders = {}
    for split, (source, every, rows) in chosen.items():
        is_train = training and split == "train"
        images = (imagecache.images_for(data_dir, source, every, stamps[source], rows, decode, recipe, row_shape)
                  if params.cache_images else None)
        loaders[split] = make_loader(task.dataset([every[r] for r in rows], train_tf if is_train else eval_tf, images),
                                     params, is_train, pin_memory, ranks if is_train else None)
    return loaders, classes


def reseed_epoch(loader, seed, skip=0):
    """Restart the loader's shuffling and its dataset's augmentation at `seed`, before an epoch; with `skip`, this
    pass of the loader starts at that batch (a resume from a checkpoint written within the epoch).

    Both streams then depend only on the seed, never on the epochs before: a run resumed at epoch k gets the
    batches and augmentations an uninterrupted run gets at epoch k; and each batch's augmentation depends only on
    the seed and the batch (SeededBatches), so the batches after `skip` are those of the uninterrupted epoch.
    """
    loader.generator.manual_seed(seed)  # the order: the same on every rank, each takes its share
    loader.dataset.reseed(rank_seed(seed, getattr(loader.dataset, "rank", 0)))
    loader.batch_sampler.skip = skip


# ---------------------------------------------------------------- which items


def check_folders(data_dir, splits, layout):
    """DATA_DIR and the folder of each split (and train's, which names the classes) exist."""
    if not os.path.isdir(data_dir):
        raise UserError(f"data_dir {data_dir}: not found")
    for split in ("train",) + tuple(splits):
        if not os.path.isdir(os.path.join(data_dir, split)):
            raise UserError(f"data_dir {data_dir}: missing the '{split}' folder (expected {data_dir}/{split}/{layout})")


def subset_rows(n_items, n, seed):
    """A seeded choice of n of range(n_items), sorted; all of them when n is 0 or not smaller."""
    if not n or n >= n_items:
        return list(range(n_items))
    return torch.randperm(n_items, generator=torch.Generator().manual_seed(seed))[:n].sort().values.tolist()


def subset(items, n, seed):
    """A seeded choice of n of `items`, in their order; all of them when n is 0 or not smaller."""
    return [items[r] for r in subset_rows(len(items), n, seed)]


def choose_items(task, splits, data_dir, classes, params, training):
    """{split: (source folder, every item of that folder, the row numbers in it of the ones used)}.

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
        every = task.scan_split(data_dir, sources[split], classes)
        rows = subset_rows(len(every), limits.get(sources[split], 0), params.seed)
        if training and split == "train" and len(rows) < 2:
            raise UserError(f"{data_dir}/train: {len(rows)} image(s) to train on (train_subset "
                            f"{params.train_subset}); need at least 2")
        chosen[split] = sources[split], every, rows
    return chosen


def items_to_check(chosen, whole):
    """{source folder: [item]}, each item once: every item of a folder a split uses when the image cache holds whole
    splits (so cells with different subsets share one file), else only the ones used."""
    used = {}
    for source, every, rows in chosen.values():
        used.setdefault(source, (every, set()))[1].update(range(len(every)) if whole else rows)
    return {source: [every[r] for r in sorted(rows)] for source, (every, rows) in used.items()}


# ---------------------------------------------------------------- loaders


def make_loader(dataset, params, is_train, pin_memory, ranks=None):
    """The DataLoader of one split: shuffled only for training, with a generator of its own (see reseed_epoch);
    with several ranks, each rank's share of every training batch (ShardBatchSampler)."""
    generator = torch.Generator().manual_seed(params.seed)
    # a final batch of one image a rank breaks BatchNorm in train mode; drop it only then
    world = ranks.world if ranks is not None else 1
    drop_last = is_train and 0 < len(dataset) % params.batch_size <= world
    batching = {"batch_size": params.batch_size if is_train else params.bs_test, "shuffle": False}
    if is_train:
        ranks = ranks if ranks is not None and ranks.active else Ranks(0, 1)
        dataset.rank = ranks.rank
        dataset = SeededBatches(dataset)
        batching = {"batch_sampler": ShardBatchSampler(len(dataset), params.batch_size, ranks, generator, drop_last)}
    return torch.utils.data.DataLoader(
        dataset,
        **batching,
        num_workers=params.num_workers,
        collate_fn=dataset.collate,
        pin_memory=pin_memory,
        # training's workers start afresh each epoch, seeded from the generator reseed_epoch set: kept alive, they
        # would augment on from where the last epoch left them, which a resumed run's new workers cannot know
        persistent_workers=params.num_workers > 0 and not is_train,
        worker_init_fn=seed_worker if params.num_workers > 0 else None,
        generator=generator,
    )


class ShardBatchSampler:
    """The training batches: this rank's share of each batch of one shuffled order (the order a single process
    draws, DataLoader's shuffle=True: the same generator, seeded alike on every rank): batch b is split in `world`
    equal slices, rank r takes slice r (one process: the whole batch). A last batch that does not split evenly is
    topped up from the start of the order, as DistributedSampler pads. A pass starts at batch `skip` (then 0 again):
    the order is drawn whole, so the batches after it are those of a pass from the start."""

    def __init__(self, n, batch_size, ranks, generator, drop_last):
        self.n, self.batch_size, self.ranks, self.generator = n, batch_size, ranks, generator
        self.batches = n // batch_size if drop_last else -(-n // batch_size)
        self.skip = 0

    def __len__(self):
        return self.batches  # the epoch's, whatever it skips: step numbers and schedules count in whole epochs

    def __iter__(self):
        order = torch.randperm(self.n, generator=self.generator).tolist()
        world, rank = self.ranks.world, self.ranks.rank
        start, self.skip = self.skip, 0
        for b in range(start, self.batches):
            batch = order[b * self.batch_size:(b + 1) * self.batch_size]
            share = -(-len(batch) // world)
            batch += order[:share * world - len(batch)]
            yield batch[rank * share:(rank + 1) * share]


def seed_worker(worker_id):
    """A worker's own seed for Python's and NumPy's global generators, derived from the loader's seeded generator
    (torch's it sets itself); the training augmentation is seeded per batch (SeededBatches), whichever worker
    draws it."""
    import random

    seed = torch.utils.data.get_worker_info().seed % 2**32
    random.seed(seed)
    np.random.seed(seed)


class SeededBatches(torch.utils.data.Dataset):
    """The training set, its augmentation reseeded at each batch from the epoch's seed and the batch's first item
    (unique within an epoch): what a batch looks like depends on nothing drawn before it, so a run resumed within an
    epoch skips the batches done without loading them, with any number of workers. One reseed a batch: ~60 us,
    where one a sample would cost half as much as augmenting a 32-px image. Every other attribute is the task's
    Dataset's."""

    def __init__(self, dataset):
        self.inner, self.seed = dataset, 0

    def __getattr__(self, name):
        if name == "inner":  # not yet set (unpickling in a spawned worker)
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __len__(self):
        return len(self.inner)

    def __getitem__(self, i):
        return self.inner[i]

    def __getitems__(self, indices):
        self.inner.reseed(int(np.random.SeedSequence([self.seed, indices[0]]).generate_state(1)[0]))
        return [self.inner[i] for i in indices]

    def reseed(self, seed):
        self.seed = seed
