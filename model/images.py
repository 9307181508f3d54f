"""What every image task shares: the normalisation pretrained weights expect, turning params.augmentation (a preset
name or an albumentations dict) into pipeline steps, and the Dataset's common parts. Reading an image file is
core/data/images.py's (load_image, image_size, readable_size, uniform_shape: the tasks import them from here too)."""

import os
import sys
import warnings

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no network here: skip albumentations' version check

import albumentations as A  # noqa: E402
import numpy as np  # noqa: E402

from core.data.images import image_size, load_image, readable_size, uniform_shape  # noqa: E402, F401  (for the tasks)
from utils import UserError  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # ImageNet statistics, which pretrained weights expect

# the augmentation presets of a task without its own (model/task.py presets): steps that move the image alone, so a
# task whose targets move with it (masks, boxes, points) writes its own
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


def augmentation_steps(params, presets):
    """The steps params.augmentation names: one of the task's presets, or an albumentations dict (`A.to_dict`
    output, so a search can vary augmentation without code changes)."""
    if isinstance(params.augmentation, dict):
        return [pipeline_from_dict(params.augmentation)]
    if params.augmentation in presets:
        return presets[params.augmentation](params.im_sz)
    raise UserError(f"params key 'augmentation': unknown preset '{params.augmentation}' "
                    f"(presets: {', '.join(presets)}; or an albumentations dict)")


def size_steps(params, objects=None, fill_mask=0):
    """The training pipeline's first steps: the image resized to im_sz x im_sz, or with crop_size a crop_size square
    cut at the image's own resolution, so a 2048-px scene trains in pieces whose small objects keep their pixels.
    What is smaller than a crop is padded first (images with 0, masks with fill_mask). crop_mode "objects" takes
    `objects(size)`, the task's albumentations crop that holds an object where the image has one; "random" any."""
    size = params.crop_size
    if not size:
        return [A.Resize(params.im_sz, params.im_sz)]
    pad = A.PadIfNeeded(size, size, border_mode=0, fill=0, fill_mask=fill_mask)
    crop = objects(size) if objects and params.crop_mode == "objects" else A.RandomCrop(size, size)
    return [pad, crop]


SAID = set()  # what albumentations said of a valid pipeline, said once a process (each stage and split rebuilds it)


def pipeline_from_dict(spec):
    """albumentations' pipeline of an `A.to_dict` dict (its "transform", or the whole output). Bad input is one
    line: what the library warns while reading a dict it then refuses is not printed; of a dict it accepts (a
    transform without 'p' gets 0.5), one line each."""
    if "transform" in spec and "__class_fullname__" not in spec:  # A.to_dict's whole output, pasted as it is
        spec = spec["transform"]
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        try:
            pipeline = A.from_dict({"transform": spec})
        except KeyError as e:  # the registry's lookup of a transform's name, or a step without a name
            what = "a step without '__class_fullname__'" if e.args[0] == "__class_fullname__" else f"unknown " \
                f"transform {e}"
            raise UserError(f"params key 'augmentation': not a valid albumentations dict ({what})") from None
        except Exception as e:
            raise UserError(f"params key 'augmentation': not a valid albumentations dict ({e})") from None
    for message in dict.fromkeys(str(w.message) for w in said):
        if message not in SAID:
            SAID.add(message)
            print(f"warning: params key 'augmentation': {message}", file=sys.stderr)
    return pipeline


def image_decoder():
    """(decode, recipe, row_shape) for the image cache of a task whose items are (image path, targets): the cache
    holds the image as stored, the targets stay in the item."""
    return (lambda item: load_image(item[0])), "rgb, as stored, v1", lambda items: uniform_shape(
        [image for image, _ in items], 3)


class ItemDataset:
    """What every task's Dataset shares: `items` are (image path, target) pairs, as the task's scan_split gives
    them; `images`, when given, holds the decoded images in item order (the image cache), else each file is decoded
    when read. A subclass writes __getitem__ (and collate, when batches are not a plain stack).

    What the code outside model/ relies on, so keep these when editing:
        paths      [image file path], one per item, in item order (the galleries show the files)
        targets    [what each item's target was read as: a label, a mask path, boxes, points], in item order
        transform  the pipeline, as build_transforms made it (train.py records it with transforms_record)
        reseed     see below
    """

    collate = None  # the DataLoader's default: a batch is a stack of images and of targets

    def __init__(self, items, transform, images=None):
        self.paths = [path for path, _ in items]
        self.targets = [target for _, target in items]
        self.transform = transform
        self.images = images

    def __len__(self):
        return len(self.paths)

    def image(self, i):
        """Item i's image, HxWxC uint8: a copy from the cache (a read-only memory map, and a transform may write
        into its input), or the file decoded."""
        return np.array(self.images[i]) if self.images is not None else load_image(self.paths[i])

    def reseed(self, seed):
        """Restart the augmentation's random stream at `seed`. core/data/loaders.py calls it before each epoch with
        that epoch's seed, so a resumed run augments as an uninterrupted one would, and in each DataLoader worker as
        it starts, so workers do not all draw the same numbers."""
        self.transform.set_random_seed(seed)
