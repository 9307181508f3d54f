"""Reading an image file, for the machinery and the tasks alike: the decoded pixels, the size from the header, and
whether the file decodes whole. Every failure is one UserError naming the file."""

import numpy as np
from PIL import Image, UnidentifiedImageError

from utils import UserError

BOMB = "more pixels than PIL decodes safely (its decompression-bomb limit)"


def load_image(path):
    """The file as an HxWx3 uint8 RGB array."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except Image.DecompressionBombError:
        raise UserError(f"{path}: cannot read image: {BOMB}") from None
    except (OSError, UnidentifiedImageError, ValueError):
        raise UserError(f"{path}: cannot read image") from None


def image_size(path):
    """(width, height) from the file's header."""
    try:
        with Image.open(path) as im:
            return im.size
    except Image.DecompressionBombError:
        raise UserError(f"{path}: cannot read image: {BOMB}") from None
    except (OSError, UnidentifiedImageError, ValueError):
        raise UserError(f"{path}: cannot read image") from None


def readable_size(path):
    """(width, height) of an image that decodes whole: what a task's check_item starts from. Decoding it all, as
    training will, catches what PIL's verify() lets through (a JPEG cut short inside its pixel data)."""
    try:
        with Image.open(path) as im:
            im.load()
            return im.size
    except Image.DecompressionBombError:
        raise UserError(f"{path}: cannot read image: {BOMB}") from None
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
        raise UserError(f"{path}: cannot read image") from None


def uniform_shape(paths, channels):
    """(H, W, channels) when every image shares one size, else None: the image cache's row shape (a split of
    several sizes is read from its files)."""
    sizes = {image_size(p) for p in paths}
    return (*next(iter(sizes))[::-1], channels) if len(sizes) == 1 else None
