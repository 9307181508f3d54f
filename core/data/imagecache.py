"""Start-up work done once per data set instead of once per run: which images passed the readability check, and
every split's images decoded and resized.

Both live in DATA_DIR/.cache/ (delete the folder to start over):

    verified.json                   {path relative to DATA_DIR: [size, mtime_ns]} of images that passed the check
    <split>-<im_sz>px-<key>.npy     uint8 array N x H x W x C: every item of the split, decoded, in scan order
    <split>-<im_sz>px.lock          held while one process builds that array, so others wait and reuse it

A file counts as unchanged while its size and modification time are (the rule make and rsync use). <key> hashes
each item's files (relative path, size and mtime: an image, and a mask where the task has one) and the decoder's
recipe, so editing, adding or removing an image, or changing the resize, gives a new key: the array is rebuilt
and the old one removed. Every write goes to a temp file renamed into place, so a reader never sees half a file
and concurrent writers cannot corrupt one.

Neither file is ever required: when DATA_DIR is not writable, images are checked and decoded in memory, as without
a cache. No torch or albumentations here: the caller passes the check and the decoder.
"""

import fcntl
import glob
import hashlib
import json
import os
from contextlib import suppress

import numpy as np

from utils import atomic_write

CACHE_DIR, MANIFEST = ".cache", "verified.json"


# ---------------------------------------------------------------- stamps


def file_stamp(path):
    """[size, mtime_ns] (a list, as JSON reads it back), or None when the file cannot be stat'ed."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def relative(data_dir, path):
    """The key a file has in the cache: its path relative to DATA_DIR, however DATA_DIR was spelled."""
    prefix = os.path.join(data_dir, "")
    # paths are DATA_DIR joined with more parts: cutting the prefix is 50x cheaper than relpath, run per image
    return path[len(prefix):] if path.startswith(prefix) else os.path.relpath(path, data_dir)


# ---------------------------------------------------------------- verified once


def read_manifest(path):
    """{relative path: stamp}; {} when missing or unreadable (the cost is only checking everything again)."""
    try:
        with open(path) as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return {}
    return manifest if isinstance(manifest, dict) else {}


def needs_check(stamps, manifest):
    """Relative paths whose stamp is unknown or differs from the one recorded when they last passed."""
    return [rel for rel, stamp in stamps.items() if stamp is None or manifest.get(rel) != stamp]


def record_verified(data_dir, stamps):
    """Merge `stamps` into the manifest; best effort, silent when DATA_DIR is read-only.

    Re-read just before writing, so entries another process added meanwhile are kept. Two processes doing this at
    once: the last rename wins, and the entries it lacks are only checked again on a later start.
    """
    path = os.path.join(data_dir, CACHE_DIR, MANIFEST)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        merged = {**read_manifest(path), **stamps}
        # forget files that are gone, so the manifest does not grow with every data set edit
        merged = {rel: s for rel, s in merged.items() if rel in stamps or os.path.exists(os.path.join(data_dir, rel))}
        atomic_write(path, lambda f: json.dump(merged, f, separators=(",", ":"), sort_keys=True))
    except OSError:
        pass


def verify_once(data_dir, items, files_of, check):
    """Run check(item) on each of `items` one of whose files (files_of(item): an image, its mask) is new or changed
    since it last passed; return how many were checked.

    check raises on a bad item: that happens before anything is written, so a bad file never enters the manifest.
    Stamps are taken before checking, so a file changed during the check looks changed next time, never the reverse.
    """
    files = [[(relative(data_dir, f), file_stamp(f)) for f in files_of(item)] for item in items]
    changed = set(needs_check(dict(pair for pairs in files for pair in pairs),
                              read_manifest(os.path.join(data_dir, CACHE_DIR, MANIFEST))))
    todo = [(item, pairs) for item, pairs in zip(items, files) if any(rel in changed for rel, _ in pairs)]
    for item, _ in todo:
        check(item)
    if todo:
        record_verified(data_dir, {rel: stamp for _, pairs in todo for rel, stamp in pairs})
    return len(todo)


# ---------------------------------------------------------------- decoded once


def content_key(entries, recipe):
    """Hash of everything that decides an array's content: one entry per item (its files' relative paths and
    stamps) and the decoder's recipe."""
    text = json.dumps([recipe, [list(e) for e in entries]], separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def array_stem(split, size):
    """Files of one split at one size (im_sz, or (height, width)) share this prefix: the lock, and the arrays that
    replace each other."""
    h, w = size if isinstance(size, tuple) else (size, size)
    return f"{split}-{h}px" if h == w else f"{split}-{h}x{w}px"


def load_array(path, shape):
    """The array at `path` memory-mapped read-only, or None when it is missing or not of `shape` (damaged).

    Memory-mapped rather than read: concurrent runs on one data set share its pages, and a subset touches only its
    own images.
    """
    try:
        images = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError):
        return None
    if images.shape != shape or images.dtype != np.uint8:
        return None
    return images.view(np.ndarray)  # the same pages; a plain array is indexed twice as fast as np.memmap


def decoded(decode, item, shape):
    """decode(item), checked to fit its row of the array."""
    image = decode(item)
    if image.shape != shape or image.dtype != np.uint8:  # a decoder edited out of step with the pipeline
        raise ValueError(f"{item}: decoded to {image.dtype} {image.shape}, expected uint8 {shape}")
    return image


def decode_all(items, decode, shape):
    """Every item decoded into one in-memory array (no cache folder to use)."""
    images = np.empty(shape, np.uint8)
    for i, item in enumerate(items):
        images[i] = decoded(decode, item, shape[1:])
    return images


def write_array(path, items, decode, shape):
    """An .npy file written one item at a time, so building never holds the whole array in memory."""
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False, "shape": shape}

    def write(f):
        np.lib.format.write_array_header_1_0(f, header)
        for item in items:
            f.write(np.ascontiguousarray(decoded(decode, item, shape[1:])).tobytes())

    atomic_write(path, write, mode="wb")


def remove_stale(folder, stem, keep):
    """Older arrays of this split and size, and temp files of builds that were killed. Called under the lock, so no
    build of ours is in progress. Safe for a process that has an old array mapped: its pages outlive the name."""
    for prefix in ("", ".tmp-*"):  # atomic_write's temp files are named .tmp-<pid>-<random><final name>
        for path in glob.glob(os.path.join(glob.escape(folder), f"{prefix}{glob.escape(stem)}-*.npy")):
            if path != keep:
                with suppress(OSError):
                    os.remove(path)


def split_array(data_dir, split, items, files_of, decode, recipe, row):
    """The cached uint8 array N x row (row: H x W x C) of decode(item) for each of `items`, in order; None when
    DATA_DIR/.cache cannot be written (a read-only data set).

    Read from DATA_DIR/.cache when it holds this exact content; otherwise built there by the first process to take
    the split's lock, while others starting at the same time wait, then read its file instead of decoding again.
    """
    folder = os.path.join(data_dir, CACHE_DIR)
    shape = (len(items), *row)
    stem = array_stem(split, tuple(row[:2]))
    key = content_key([[(relative(data_dir, f), file_stamp(f)) for f in files_of(item)] for item in items], recipe)
    path = os.path.join(folder, f"{stem}-{key}.npy")
    images = load_array(path, shape)
    if images is not None:
        return images
    try:
        os.makedirs(folder, exist_ok=True)
        lock = os.open(os.path.join(folder, stem + ".lock"), os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:
        return None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the OS releases it if we die, so a killed build never blocks others
        images = load_array(path, shape)  # built by whoever held the lock before us
        if images is None:
            write_array(path, items, decode, shape)
            remove_stale(folder, stem, keep=path)
            images = load_array(path, shape)
    except OSError:  # a folder we may lock but not write in, a full disk
        images = None
    finally:
        os.close(lock)
    return images


def images_for(data_dir, split, every, items, files_of, decode, recipe, row_shape):
    """Decoded `items`, a subset of `every` (the whole split), in order: rows of the split's cached array, which all
    subsets share; or, when the data set is read-only, `items` decoded into memory as without a cache. None when
    the items do not decode to one shape (row_shape(every) is None: images of several sizes, read as they are)."""
    row = row_shape(every)
    if row is None:
        return None
    cached = split_array(data_dir, split, every, files_of, decode, recipe, row)
    if cached is None:
        return decode_all(items, decode, (len(items), *row))
    return Rows(cached, [files_of(item)[0] for item in every], [files_of(item)[0] for item in items])


class Rows:
    """images[rows[i]]: a subset (train_subset) read from its split's array."""

    def __init__(self, images, all_keys, keys):
        index = {k: i for i, k in enumerate(all_keys)}
        self.images, self.rows = images, [index[k] for k in keys]

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.images[self.rows[i]]
