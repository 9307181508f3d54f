"""Segmentation data: an image and a mask of class indices per sample, augmented together through albumentations.

    DATA_DIR/classes.json                          ["background", "cat", ...]: class names in index order
    DATA_DIR/{train,valid,test}/images/NAME.png    (or .jpg, ...)
    DATA_DIR/{train,valid,test}/masks/NAME.png     same stem; one channel (8-bit grey or a palette PNG, as in
                                                   Pascal VOC): each pixel's class index, 255 = ignore

Without classes.json the classes are 0..K-1, K one more than the largest index in the training masks.

Edit PRESETS to add augmentations. Geometric steps move the mask with the image (nearest-neighbour, so indices stay
indices, and what they uncover is IGNORE); colour steps leave it alone. Training resizes to im_sz x im_sz;
evaluation sees every image at its own size (larger test images are what eval_window tiles), and a batch of images
of several sizes is padded: images with 0, masks with IGNORE, so padding counts in no metric.
"""

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no network here: skip albumentations' version check

import albumentations as A  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from albumentations.pytorch import ToTensorV2  # noqa: E402
from PIL import Image, UnidentifiedImageError  # noqa: E402

from data.folders import IMAGE_EXTS  # noqa: E402
from model.images import (  # noqa: E402
    MEAN,
    STD,
    ItemDataset,
    augmentation_steps,
    load_image,
    readable_size,
    size_steps,
    uniform_shape,
)
from model.segmentation.metrics import IGNORE  # noqa: E402
from utils import UserError, read_json  # noqa: E402

PRESETS = {
    "none": lambda sz: [],
    # small shifts, zooms and turns: digits and text stay what they are (flips would change them)
    "light": lambda sz: [A.Affine(scale=(0.9, 1.1), translate_percent=(-0.08, 0.08), rotate=(-10, 10),
                                  fill_mask=IGNORE, p=0.8)],
    # the usual recipe for photos and scans
    "standard": lambda sz: [
        A.RandomResizedCrop(size=(sz, sz), scale=(0.5, 1.0)),
        A.HorizontalFlip(),
        A.ColorJitter(0.2, 0.2, 0.2, 0.05, p=0.5),
    ],
}


def build_transforms(params):
    """(train, eval) pipelines over image and mask together. Train resizes to im_sz, or with crop_size cuts a crop
    at the image's resolution (crop_mode "objects": one holding a pixel of a class other than background, index 0,
    where the mask has one), and augments; eval only normalises, at each image's own size."""
    augment = augmentation_steps(params, PRESETS)
    tail = [A.Normalize(mean=MEAN, std=STD), ToTensorV2()]
    head = size_steps(params, lambda size: A.CropNonEmptyMaskIfExists(size, size, ignore_values=[0, IGNORE]),
                      fill_mask=IGNORE)
    return A.Compose(head + augment + tail, seed=params.seed), A.Compose(tail, seed=params.seed)


def decoder(params):
    """(decode, recipe, row_shape) for the image cache: an item as an H x W x 4 array, the image's RGB and its mask
    as a fourth channel, both as stored (the pipelines resize, not the cache, so evaluation keeps each image's
    size). row_shape is None when a split's images differ in size: such a split is read from its files."""

    def decode(item):
        return np.dstack([load_image(item[0]), load_mask(item[1])])

    return decode, "rgb+mask, as stored, v1", lambda items: uniform_shape([image for image, _ in items], 4)


# ---------------------------------------------------------------- the folders


def find_classes(data_dir):
    """The class names: DATA_DIR/classes.json, else "0".."K-1" with K from the training masks."""
    path = os.path.join(data_dir, "classes.json")
    if os.path.exists(path):
        names = read_json(path)
        if not (isinstance(names, list) and len(names) >= 2 and all(isinstance(n, str) for n in names)
                and len(set(names)) == len(names)):
            raise UserError(f"{path}: expected a list of at least 2 distinct class names, in index order")
        return names
    largest = max(int(indices.max(initial=0)) for indices in (labelled(load_mask(m)) for _, m in
                                                              scan_split(data_dir, "train", None)))
    return [str(k) for k in range(max(largest + 1, 2))]


def scan_split(data_dir, split, classes):
    """[(image path, mask path)] of DATA_DIR/split, paired by file stem; an image without its mask, or a mask
    without its image, is an error."""
    folders = {kind: os.path.join(data_dir, split, kind) for kind in ("images", "masks")}
    for kind, folder in folders.items():
        if not os.path.isdir(folder):
            raise UserError(f"{os.path.join(data_dir, split)}: no {kind}/ folder (expected {split}/images/NAME.png "
                            f"beside {split}/masks/NAME.png)")
    images = stems(folders["images"], IMAGE_EXTS)
    masks = stems(folders["masks"], (".png",))
    for stem in sorted(set(images) ^ set(masks)):
        has, lacks = ("images", "masks") if stem in images else ("masks", "images")
        found = os.path.join(folders[has], (images if has == "images" else masks)[stem])
        raise UserError(f"{found}: no matching file in {folders[lacks]}/ (images and masks pair by name)")
    if not images:
        raise UserError(f"{folders['images']}: no images")
    return [(os.path.join(folders["images"], images[s]), os.path.join(folders["masks"], masks[s]))
            for s in sorted(images)]


def stems(folder, exts):
    """{file stem: file name} of the folder's files with one of `exts`."""
    out = {}
    for name in sorted(os.listdir(folder)):
        stem, ext = os.path.splitext(name)
        if ext.lower() in exts:
            if stem in out:
                raise UserError(f"{os.path.join(folder, name)}: two files named {stem} (which one is the sample?)")
            out[stem] = name
    return out


def item_files(item):
    """The files a sample is read from (what the image cache stamps); the first is the image the gallery shows."""
    return list(item)


def check_item(item, classes):
    """The image is readable and its mask is a one-channel map of known class indices, of the image's size."""
    image, mask = item
    size = readable_size(image)
    indices = load_mask(mask)
    if indices.shape[::-1] != size:
        raise UserError(f"{mask}: {indices.shape[1]}x{indices.shape[0]} pixels, but its image {image} is "
                        f"{size[0]}x{size[1]}")
    bad = labelled(indices)
    if bad.size and bad.max() >= len(classes):
        raise UserError(f"{mask}: class index {int(bad.max())}, but there are {len(classes)} classes (0.."
                        f"{len(classes) - 1}, and {IGNORE} for ignore)")


def labelled(indices):
    """The pixels of a mask that carry a class (not IGNORE)."""
    return indices[indices != IGNORE]


def load_mask(path):
    """The mask as an H x W uint8 array of class indices. A palette PNG's indices are its classes; an RGB or RGBA
    mask (colours, not indices) is refused rather than guessed at."""
    try:
        with Image.open(path) as im:
            if im.mode not in ("L", "P"):
                raise UserError(f"{path}: mask is {im.mode}, expected one channel of class indices (8-bit grey or "
                                f"a palette PNG)")
            return np.array(im)  # a copy: writable, as the transforms and torch.from_numpy want
    except (OSError, UnidentifiedImageError):
        raise UserError(f"{path}: cannot read mask") from None


def class_counts(dataset, n_clas):
    """Labelled pixels per class in `dataset`'s masks (what class_weights "balanced" weighs by)."""
    counts = np.zeros(n_clas, dtype=np.int64)
    for i in range(len(dataset)):
        counts += np.bincount(labelled(dataset.mask(i)), minlength=n_clas)[:n_clas]
    return counts.tolist()


class SegmentationDataset(ItemDataset, torch.utils.data.Dataset):
    """(image tensor [3,H,W], mask tensor [H,W] int64) for each (image path, mask path) of items. `images`, when
    given, holds the decoded samples (H x W x 4: RGB and mask) in the same order (the image cache).

    targets: the mask files, in item order.
    """

    def sample(self, i):
        if self.images is None:
            return load_image(self.paths[i]), load_mask(self.targets[i])
        both = self.image(i)
        return both[..., :3], both[..., 3]

    def mask(self, i):
        return self.sample(i)[1]

    def __getitem__(self, i):
        image, mask = self.sample(i)
        out = self.transform(image=image, mask=mask)
        return out["image"], out["mask"].long()

    @staticmethod
    def collate(batch):
        """A batch of images of one size is stacked; of several sizes, padded at the bottom and right to the largest
        (images with 0, masks with IGNORE)."""
        h = max(x.shape[1] for x, _ in batch)
        w = max(x.shape[2] for x, _ in batch)
        images = torch.zeros(len(batch), 3, h, w, dtype=batch[0][0].dtype)
        masks = torch.full((len(batch), h, w), IGNORE, dtype=torch.long)
        for k, (x, y) in enumerate(batch):
            images[k, :, :x.shape[1], :x.shape[2]] = x
            masks[k, :y.shape[0], :y.shape[1]] = y
        return images, masks


Dataset = SegmentationDataset
