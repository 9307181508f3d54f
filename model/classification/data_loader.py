"""Classification data: DATA_DIR/{train,valid,test}/<class>/*.png, one label per image: an item is (image path,
class index). The rest of the data is the defaults' (model/defaults.py): the pipelines (resize, a preset of
model/images.py PRESETS or an albumentations dict, normalise), the image cache's resized images, the Dataset, the
start-up check and the counts of "balanced" class weights. A function of the same name here replaces one.

The machinery around this file (checking every item once per data set, subsets, overfit mode, the image cache, the
DataLoaders and their seeding) is core/data/loaders.py; it calls this file through model/task.py.

To use torchvision transforms instead of albumentations, write here:
  - build_transforms(params): torchvision.transforms.v2 pipelines, starting with v2.ToImage() (takes the HxWx3
    array) and a resize, ending with v2.ToDtype(torch.float32, scale=True) and v2.Normalize(MEAN, STD);
  - Dataset(items, transform, images): model/defaults.py's, calling self.transform(image) (torchvision takes the
    image itself, not image=...) and reseeding torch's global generator (torchvision draws from it);
  - transforms_record(train_tf, eval_tf): something JSON can hold, e.g. {"train": repr(train_tf), "eval": ...};
the image cache then holds the images as stored (model/defaults.py decoder).
"""

import os

from data.folders import IMAGE_EXTS
from utils import UserError


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
