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
and concurrent writers cannot corrupt one. Each file is stat'ed once a start; the check and the decoding of many
images run in one forked process per core.

Neither file is ever required. When the array cannot be written (a read-only data set, a disk without room for it),
a split is decoded into memory if it takes at most IN_MEMORY_MAX bytes; a larger one is not held at all: each image
is decoded when read, in the DataLoader's workers, as without the cache, so memory does not grow with the set. No
torch or albumentations here: the caller passes the check and the decoder.
"""

import fcntl
import glob
import hashlib
import json
import multiprocessing
import os
import shutil
import signal
from concurrent.futures import ProcessPoolExecutor
from contextlib import suppress

import numpy as np

from utils import atomic_write

CACHE_DIR, MANIFEST = ".cache", "verified.json"
IN_MEMORY_MAX = 1 << 30  # bytes of decoded split held in memory without a cache file: ~7,000 images at 224 px
DISK_RESERVE = 1 << 30  # bytes an array leaves free on its disk: a cache must not fill the disk the data is on
# fewer items and bytes than these are checked or decoded faster in this process than by starting workers
PARALLEL_FROM, PARALLEL_BYTES = 2000, 64 << 20


# ---------------------------------------------------------------- stamps


def file_stamp(path):
    """[size, mtime_ns] (a list, as JSON reads it back), or None when the file cannot be stat'ed."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def relative_paths(data_dir, paths):
    """Each path's key in the cache: relative to DATA_DIR, however DATA_DIR was spelled."""
    prefix = os.path.join(data_dir, "")
    # paths are DATA_DIR joined with more parts: cutting the prefix is 50x cheaper than relpath, run per image
    return [p[len(prefix):] if p.startswith(prefix) else os.path.relpath(p, data_dir) for p in paths]


def item_stamps(data_dir, items, files_of):
    """[[(relative path, stamp) of each of the item's files (files_of(item): an image, its mask)] for each item]:
    what both the check and the array's key read, so a start calls files_of once an item and os.stat once a file
    (each was done twice, files_of four times: at 110,000 images that was 2 of a later start's 4 s)."""
    files = [files_of(item) for item in items]
    rels = iter(relative_paths(data_dir, [f for fs in files for f in fs]))
    return [[(next(rels), file_stamp(f)) for f in fs] for fs in files]


# ---------------------------------------------------------------- many items: one process a core


_JOB = None  # what a worker process runs on each item: set in the worker only (start_worker), never in the caller


def start_worker(job):
    global _JOB
    _JOB = job
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the caller's to handle: it stops the workers


def run_job(item):
    return _JOB(item)


def worker_count(n_items, n_bytes):
    """1 (this process) for a few small files, or where fork is not the way to start processes (Linux has
    sched_getaffinity), else one process for each core this process may run on."""
    small = n_items < PARALLEL_FROM and n_bytes < PARALLEL_BYTES  # 220 JPEGs of 2048 px: 300 MB, 19 s in one
    if n_items < 2 or small or not hasattr(os, "sched_getaffinity"):
        return 1
    return len(os.sched_getaffinity(0))


def mapped(job, items, stamps, block=4096):
    """job(item) for each of `items`, in order, as a generator. Many items or bytes (stamps: their item_stamps): in
    forked worker processes (so job may be any function, a lambda too: it is inherited, never pickled), `block`
    items at a time, so only that many results are held at once. A failure is raised at its item, the first in
    order, and no block starts after it."""
    n = worker_count(len(items), sum(stamp[0] for pairs in stamps for _, stamp in pairs if stamp))
    if n == 1:
        yield from map(job, items)
        return
    pool = ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("fork"), initializer=start_worker,
                               initargs=(job,))
    try:
        for start in range(0, len(items), block):
            chunk = items[start:start + block]
            yield from pool.map(run_job, chunk, chunksize=max(1, len(chunk) // (4 * n)))
    finally:
        pool.shutdown(cancel_futures=True)


# ---------------------------------------------------------------- verified once


def read_manifest(path):
    """{relative path: stamp}; {} when missing or unreadable (the cost is only checking everything again)."""
    try:
        with open(path) as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return {}
    return manifest if isinstance(manifest, dict) else {}


def needs_check(pairs, manifest):
    """Whether one of an item's files (pairs: its (relative path, stamp)) is unknown or differs from the stamp
    recorded when it last passed."""
    return any(stamp is None or manifest.get(rel) != stamp for rel, stamp in pairs)


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


def verify_once(data_dir, items, stamps, check):
    """Run check(item) on each of `items` one of whose files is new or changed since it last passed; return how
    many were checked. stamps: item_stamps of `items`.

    check raises on a bad item: that happens before anything is written, so a bad file never enters the manifest.
    Stamps are taken before checking, so a file changed during the check looks changed next time, never the reverse.
    """
    manifest = read_manifest(os.path.join(data_dir, CACHE_DIR, MANIFEST))
    todo = [(item, pairs) for item, pairs in zip(items, stamps) if needs_check(pairs, manifest)]
    del manifest  # 100,000 entries: not kept while checking
    for _ in mapped(check, [item for item, _ in todo], [pairs for _, pairs in todo]):
        pass
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


def existing_array(folder, split, key, n):
    """The array of this split's content (its key) from an earlier start, whatever its row shape, or None. Found
    by key, a later start needs no row_shape: a task caching images as stored reads every image's header for it
    (3.4 s at 20,000 images, 13 s at 100,000)."""
    for path in glob.glob(os.path.join(glob.escape(folder), f"{glob.escape(split)}-*-{key}.npy")):
        try:
            shape = np.load(path, mmap_mode="r", allow_pickle=False).shape
        except (OSError, ValueError):
            continue
        if len(shape) == 4 and shape[0] == n and path.endswith(f"{os.sep}{array_stem(split, shape[1:3])}-{key}.npy"):
            return load_array(path, shape)
    return None


def decoded(decode, item, shape):
    """decode(item), checked to fit its row of the array."""
    image = decode(item)
    if image.shape != shape or image.dtype != np.uint8:  # a decoder edited out of step with the pipeline
        raise ValueError(f"{item}: decoded to {image.dtype} {image.shape}, expected uint8 {shape}")
    return image


def decode_all(items, stamps, decode, shape):
    """Every item decoded into one in-memory array (no cache file to use; at most IN_MEMORY_MAX bytes)."""
    images = np.empty(shape, np.uint8)
    for i, image in enumerate(mapped(lambda item: decoded(decode, item, shape[1:]), items, stamps)):
        images[i] = image
    return images


def write_array(path, items, stamps, decode, shape):
    """An .npy file written one item at a time, so building never holds the whole array in memory."""
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False, "shape": shape}

    def write(f):
        np.lib.format.write_array_header_1_0(f, header)
        rows = mapped(lambda item: np.ascontiguousarray(decoded(decode, item, shape[1:])).tobytes(), items, stamps)
        for row in rows:
            f.write(row)

    atomic_write(path, write, mode="wb")


def room_for(folder, nbytes):
    """Whether `folder`'s disk keeps DISK_RESERVE bytes free after nbytes more (a cache larger than the disk's free
    space would fail only once written, after filling it for everyone)."""
    try:
        return shutil.disk_usage(folder).free - nbytes >= DISK_RESERVE
    except OSError:
        return False


def remove_stale(folder, stem, keep):
    """Older arrays of this split and size, and temp files of builds that were killed. Called under the lock, so no
    build of ours is in progress. Safe for a process that has an old array mapped: its pages outlive the name."""
    for prefix in ("", ".tmp-*"):  # atomic_write's temp files are named .tmp-<pid>-<random><final name>
        for path in glob.glob(os.path.join(glob.escape(folder), f"{prefix}{glob.escape(stem)}-*.npy")):
            if path != keep:
                with suppress(OSError):
                    os.remove(path)


def split_array(data_dir, split, items, stamps, decode, recipe, row):
    """The cached uint8 array N x row (row: H x W x C) of decode(item) for each of `items`, in order (stamps: their
    item_stamps); None when DATA_DIR/.cache cannot be written (a read-only data set) or its disk has no room for it.

    Read from DATA_DIR/.cache when it holds this exact content; otherwise built there by the first process to take
    the split's lock, while others starting at the same time wait, then read its file instead of decoding again.
    """
    folder = os.path.join(data_dir, CACHE_DIR)
    shape = (len(items), *row)
    stem = array_stem(split, tuple(row[:2]))
    path = os.path.join(folder, f"{stem}-{content_key(stamps, recipe)}.npy")
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
        if images is None and room_for(folder, int(np.prod(shape))):
            write_array(path, items, stamps, decode, shape)
            remove_stale(folder, stem, keep=path)
            images = load_array(path, shape)
    except OSError:  # a folder we may lock but not write in, a disk filled meanwhile
        images = None
    finally:
        os.close(lock)
    return images


def images_for(data_dir, split, every, stamps, rows, decode, recipe, row_shape):
    """The decoded images of every[r] for r in `rows` (every: the whole split; stamps: its item_stamps), in order:
    rows of the split's cached array, which all subsets share. Without that array (split_array is None): the images
    decoded into memory when they take at most IN_MEMORY_MAX bytes, else None, as when the items do not decode to one
    shape (row_shape(every) is None: images of several sizes): each image is then decoded when read."""
    found = existing_array(os.path.join(data_dir, CACHE_DIR), split, content_key(stamps, recipe), len(every))
    if found is not None:
        return Rows(found, rows)
    row = row_shape(every)
    if row is None:
        return None
    cached = split_array(data_dir, split, every, stamps, decode, recipe, row)
    if cached is not None:
        return Rows(cached, rows)
    if len(rows) * int(np.prod(row)) > IN_MEMORY_MAX:
        return None  # held in memory, it would grow with the set: decoded in the loader's workers instead
    return decode_all([every[r] for r in rows], [stamps[r] for r in rows], decode, (len(rows), *row))


class Rows:
    """images[rows[i]]: a subset (train_subset) read from its split's array."""

    def __init__(self, images, rows):
        self.images, self.rows = images, rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.images[self.rows[i]]
