"""How start-up, speed and memory grow with the data set: train.py and the bare loop on generated JPEG sets.

    python bench/bench_scale.py                     # 5,000, 10,000, 20,000 images of 256 px and 200 of 2048 px
    python bench/bench_scale.py --sets 100000x32 --startup_only          # start-up alone, on 100,000 small files

A set NxP is N training images of P x P pixels (JPEG, quality 90: blocks of colour with noise, ~27 KB at 256 px) in
10 class folders, and N/10 validation images; built once under /tmp/bench_scale/ and reused by later runs.

For each set, first the data start-up: fetch_dataloader in a fresh process (albumentations imported before the
clock starts), on a set never seen (DATA_DIR/.cache removed: every image checked, and decoded with the cache on)
and again (the manifest and the arrays read back); with cache_images 0 and 1, and on a read-only copy of the set
(hard links, .cache blocked), where every start is a first. Then, with cache_images 0 and 1, `train.py` and
`bench/bare_train.py` (the bare loop: same data, model, optimizer, schedule, workers, validation each epoch; no
bookkeeping) on experiments/base_model's params (small_cnn) with KEY=VALUE overrides, default im_sz 32, 2 epochs,
num_workers 2; in alternating order over --rounds. Each prints:
  - fetch: its own fetch_dataloader, timed inside the process;
  - epoch: from an epoch's start (reseed_epoch) to its validation's end (the epoch's line), the first and the last
    (train.py's figure helper imports matplotlib during the first: ~0.6 s once a run), and training images/s over
    the last;
  - wall: the whole process, start to exit;
  - memory: the peak over the process and its children (DataLoader workers, train.py's helpers) of the sum of
    their PSS (proportional set size: a page the forked workers share with the main process counts once), sampled
    every 0.1 s; beside it its anonymous part, the memory the run owns (the rest is file pages: libraries, shared
    with every process on the machine that maps them, so it varies with what else runs, and the memory-mapped
    cache, which the page cache serves and may drop), and the main process's own exact peak RSS (VmHWM).
Ratios are train.py / bare, medians over the rounds, measured in this one run.
"""

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

SETS_DIR = "/tmp/bench_scale"
CLASSES = 10
PARAMS = os.path.join(ROOT, "experiments", "base_model", "params.json")
DEFAULTS = {"im_sz": "32", "num_epochs": "2", "num_workers": "2"}
SCRIPTS = {"train.py": os.path.join(ROOT, "train.py"), "bare": os.path.join(ROOT, "bench", "bare_train.py")}
MB = 1 << 20

# ---------------------------------------------------------------- generated sets


def make_image(rng, px, label):
    """A P x P picture: 16 x 16 blocks of random colour, smoothed, tinted by its class, with pixel noise (so the
    JPEG's size and decoding cost are those of a photo, not of flat blocks)."""
    import numpy as np
    from PIL import Image

    blocks = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    blocks[..., label % 3] = 25 * label
    image = np.asarray(Image.fromarray(blocks).resize((px, px), Image.BILINEAR)).astype(np.int16)
    image += rng.integers(-12, 13, (px, px, 1), dtype=np.int16)
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))


def build_set(n, px):
    """DATA_DIR of set NxP, built in place on first use: {train,valid}/<class>/<index>.jpg."""
    import numpy as np

    from data.folders import build_in_place

    dst = os.path.join(SETS_DIR, f"{n}x{px}")
    if os.path.isdir(os.path.join(dst, "train")):
        return dst

    def fill(tmp):
        rng = np.random.default_rng(n * 7919 + px)
        for split, count in (("train", n), ("valid", max(n // 10, CLASSES))):
            for c in range(CLASSES):
                os.makedirs(os.path.join(tmp, split, f"c{c}"))
            for i in range(count):
                c = i % CLASSES
                make_image(rng, px, c).save(os.path.join(tmp, split, f"c{c}", f"{i:06d}.jpg"), quality=90)

    print(f"building {dst} ({n} + {max(n // 10, CLASSES)} images of {px} px)", flush=True)
    return build_in_place(dst, fill)


def read_only_copy(data_dir):
    """The same files under another DATA_DIR (hard links) whose .cache is a file: nothing can be written there, as in
    a read-only mount (root ignores permissions, so chmod would not do)."""
    dst = data_dir + "-readonly"
    if not os.path.isdir(dst):
        tmp = tempfile.mkdtemp(dir=SETS_DIR)
        shutil.copytree(data_dir, os.path.join(tmp, "set"), copy_function=os.link,
                        ignore=shutil.ignore_patterns(".cache"))
        with open(os.path.join(tmp, "set", ".cache"), "w") as f:
            f.write("in the way: a read-only data set\n")
        os.replace(os.path.join(tmp, "set"), dst)
        os.rmdir(tmp)
    return dst


def cache_mb(data_dir):
    folder = os.path.join(data_dir, ".cache")
    return sum(e.stat().st_size for e in os.scandir(folder) if e.is_file()) / MB if os.path.isdir(folder) else 0.0


# ---------------------------------------------------------------- start-up alone

STARTUP = r"""
import json, resource, sys, time
sys.path.insert(0, {root!r})
import model.tasks, model.defaults  # noqa  (the tasks, and albumentations: imports are not the data's start-up)
from core.config import load_params
from core.data import imagecache
from core.data.loaders import fetch_dataloader

data_dir, in_memory_max, overrides = sys.argv[1], sys.argv[2], sys.argv[3:]
if in_memory_max != "default":
    imagecache.IN_MEMORY_MAX = int(in_memory_max)
params = load_params({params!r}, overrides)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
loaders, _ = fetch_dataloader(["train", "valid"], data_dir, params)
seconds = time.perf_counter() - start
grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
held = [type(loaders[s].dataset.images).__name__ for s in ("train", "valid")]
print(json.dumps({{"s": seconds, "grown_mb": grown / 1024, "images": held}}))
"""


def startup(data_dir, overrides, fresh, in_memory_max="default"):
    """{s, grown_mb, images} of one fetch_dataloader in a fresh process; fresh: DATA_DIR/.cache removed first."""
    if fresh and os.path.isdir(os.path.join(data_dir, ".cache")):
        shutil.rmtree(os.path.join(data_dir, ".cache"))
    code = STARTUP.format(root=ROOT, params=PARAMS)
    proc = subprocess.run([sys.executable, "-c", code, data_dir, str(in_memory_max), *overrides], cwd=ROOT,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"start-up on {data_dir} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def startup_table(data_dir, overrides):
    """Prints and returns {row name: {first, later}} seconds."""
    rows = {}
    print(f"\n{'data start-up (s)':<40} {'first':>7} {'later':>7}   resident memory grown, images held")
    for cache in ("0", "1"):
        o = [*overrides, f"cache_images={cache}"]
        first, later = startup(data_dir, o, fresh=True), startup(data_dir, o, fresh=False)
        rows[f"cache_images {cache}"] = {"first": first["s"], "later": later["s"], "grown_mb": later["grown_mb"]}
        print(f"{'cache_images ' + cache:<40} {first['s']:7.2f} {later['s']:7.2f}   "
              f"{later['grown_mb']:6.0f} MB, {'/'.join(later['images'])}")
    print(f"cache on disk: {cache_mb(data_dir):.1f} MB (verified.json and the arrays of train and valid)")
    ro = read_only_copy(data_dir)
    for name, cap in (("read-only, cache_images 1", "default"), ("read-only, cache_images 1, over the cap", "0")):
        r = startup(ro, [*overrides, "cache_images=1"], fresh=False, in_memory_max=cap)
        rows[name] = {"first": r["s"], "later": r["s"], "grown_mb": r["grown_mb"]}
        print(f"{name:<40} {r['s']:7.2f} {'(same)':>7}   {r['grown_mb']:6.0f} MB, {'/'.join(r['images'])}")
    return rows


# ---------------------------------------------------------------- whole runs

CHILD = r"""
import runpy, sys, time
sys.path.insert(0, {root!r})
import core.data.loaders as loaders

fetch, reseed = loaders.fetch_dataloader, loaders.reseed_epoch


def timed_fetch(*args, **kwargs):
    start = time.perf_counter()
    out = fetch(*args, **kwargs)
    print("@bench fetch", time.perf_counter() - start, flush=True)
    return out


def marked_reseed(*args, **kwargs):
    print("@bench epoch_start", flush=True)
    return reseed(*args, **kwargs)


# both scripts import these names from the module, so they get the timed ones
loaders.fetch_dataloader, loaders.reseed_epoch = timed_fetch, marked_reseed
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def tree(pid):
    """pid and every process below it (DataLoader workers, helpers), from /proc's children lists."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except OSError:  # gone meanwhile
            pass
    return found


def rollup(pid):
    """{Pss, Pss_Anon} in kB of one process; {} when it is gone."""
    out = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("Pss", "Pss_Anon"):
                    out[key] = int(value.split()[0])
    except OSError:
        pass
    return out


def vm_hwm(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return 0


class Memory(threading.Thread):
    """Peaks of a process tree's summed PSS and anonymous PSS, and of its root's VmHWM, sampled every 0.1 s."""

    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid, self.done = pid, threading.Event()
        self.pss = self.anon = self.hwm = 0

    def run(self):
        while not self.done.wait(0.1):
            parts = [rollup(p) for p in tree(self.pid)]
            self.pss = max(self.pss, sum(r.get("Pss", 0) for r in parts))
            self.anon = max(self.anon, sum(r.get("Pss_Anon", 0) for r in parts))
            self.hwm = max(self.hwm, vm_hwm(self.pid))


def epoch_end(line):
    """Whether a line is the end of an epoch's validation: train.py's 'epoch 1/3  train: ...', bare's 'epoch 1: ...'."""
    head = line.split(" ", 2)
    return len(head) > 1 and head[0] == "epoch" and head[1].rstrip(":").split("/")[0].isdigit() and "(batch" not in line


def child_env(threads):
    """The environment of a run: unbuffered output (its lines are timed as they come), and with `threads`, torch's
    thread count (OpenMP's and MKL's)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return env


def children_cpu():
    """CPU seconds of every process this one has waited for, and of those they waited for (DataLoader workers)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(script, data_dir, overrides, scratch, threads=None):
    """One whole process of `script` on a fresh copy of the params: {wall, cpu, fetch, epoch (s, each epoch), pss,
    anon, hwm (MB)}. Exits on failure."""
    folder = tempfile.mkdtemp(dir=scratch)
    shutil.copy(PARAMS, folder)
    cmd = [sys.executable, "-c", CHILD.format(root=ROOT), SCRIPTS[script], "--model_dir", folder, "--data_dir",
           data_dir, *overrides]
    cpu, start = children_cpu(), time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=child_env(threads))
    memory = Memory(proc.pid)
    memory.start()
    lines, fetch, starts, epochs = [], None, [], []
    for line in proc.stdout:
        now = time.monotonic() - start
        lines.append(line.rstrip())
        if line.startswith("@bench fetch"):
            fetch = float(line.split()[2])
        elif line.startswith("@bench epoch_start"):
            starts.append(now)
        elif epoch_end(line) and len(epochs) < len(starts):
            epochs.append(now - starts[len(epochs)])
    proc.wait()
    wall, cpu = time.monotonic() - start, children_cpu() - cpu
    memory.done.set()
    memory.join()
    shutil.rmtree(folder)
    if proc.returncode != 0 or not epochs:
        sys.exit(f"{script} failed on {data_dir} (exit {proc.returncode}): " + "\n".join(lines[-5:]))
    return {"wall": wall, "cpu": cpu, "fetch": fetch, "epoch": epochs, "pss": memory.pss / 1024,
            "anon": memory.anon / 1024, "hwm": memory.hwm / 1024}


def n_train(data_dir):
    return sum(len(os.listdir(os.path.join(data_dir, "train", c))) for c in os.listdir(os.path.join(data_dir, "train")))


def compare(data_dir, overrides, rounds, scratch, threads=None):
    """train.py and bare alternating over `rounds`, for cache_images 0 and 1; prints a table; returns
    {cache: {script: medians}}."""
    n = n_train(data_dir)
    out = {}
    print(f"\n{'cache_images, script':<22} {'wall s':>7} {'cpu s':>7} {'fetch s':>8} {'epoch 1':>8} {'last':>6} "
          f"{'images/s':>9} {'peak MB':>8} {'anon MB':>8} {'main MB':>8}")
    for cache in ("0", "1"):
        o = [*overrides, f"cache_images={cache}"]
        runs = {script: [] for script in SCRIPTS}
        for r in range(rounds):
            for script in (SCRIPTS if r % 2 == 0 else reversed(SCRIPTS)):
                runs[script].append(run(script, data_dir, o, scratch, threads))
        out[cache] = {}
        for script, rs in runs.items():
            rs = [{**x, "first": x["epoch"][0], "epoch": x["epoch"][-1]} for x in rs]
            med = {k: statistics.median(x[k] for x in rs)
                   for k in ("wall", "cpu", "fetch", "first", "epoch", "pss", "anon", "hwm")}
            out[cache][script] = med
            print(f"{cache + ', ' + script:<22} {med['wall']:7.1f} {med['cpu']:7.1f} {med['fetch']:8.2f} "
                  f"{med['first']:8.1f} {med['epoch']:6.1f} {n / med['epoch']:9.0f} {med['pss']:8.0f} "
                  f"{med['anon']:8.0f} {med['hwm']:8.0f}")
        t, b = out[cache]["train.py"], out[cache]["bare"]
        print(f"{'':<22} train.py / bare: last epoch {t['epoch'] / b['epoch']:.3f} (target <= 1.05), first "
              f"{t['first'] / b['first']:.3f}, whole process {t['wall'] / b['wall']:.3f}, its CPU "
              f"{t['cpu'] / b['cpu']:.3f}")
    return out


# ---------------------------------------------------------------- main


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", nargs="+", default=["5000x256", "10000x256", "20000x256", "200x2048"])
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--startup_only", action="store_true", help="only the data start-up of each set")
    ap.add_argument("--threads", type=int, help="torch threads of both scripts (default: torch's, one a core)")
    ap.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=f"to both scripts; defaults {DEFAULTS}")
    args = ap.parse_args()
    given = {o.split("=", 1)[0] for o in args.overrides}
    overrides = [f"{k}={v}" for k, v in DEFAULTS.items() if k not in given] + args.overrides
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        for spec in args.sets:
            n, px = map(int, spec.split("x"))
            data_dir = build_set(n, px)
            print(f"\n== {spec}: {n} + {max(n // 10, CLASSES)} JPEGs of {px} px; {' '.join(overrides)}"
                  + (f"; {args.threads} torch thread(s)" if args.threads else ""))
            results[spec] = {"startup": startup_table(data_dir, overrides)}
            if not args.startup_only:
                results[spec]["runs"] = compare(data_dir, overrides, args.rounds, scratch, args.threads)
    summary(results)


def summary(results):
    """Targets: start-up of a verified set, memory without the cache flat in the set's size, train.py / bare."""
    print("\n== summary")
    for spec, r in results.items():
        s = r["startup"]
        c0, c1 = s["cache_images 0"], s["cache_images 1"]
        line = (f"{spec}: start-up later {c0['later']:.2f} s (cache 0), {c1['later']:.2f} s (cache 1); first "
                f"{c0['first']:.1f} s, {c1['first']:.1f} s")
        if "runs" in r:
            line += "; train.py / bare last epoch " + ", ".join(
                f"{r['runs'][c]['train.py']['epoch'] / r['runs'][c]['bare']['epoch']:.3f} (cache {c})" for c in "01")
        print(line)
    runs = {spec: r["runs"]["0"] for spec, r in results.items() if "runs" in r and spec.endswith("x256")}
    if len(runs) > 1:
        low, high = (f(runs, key=lambda s: int(s.split("x")[0])) for f in (min, max))
        for script in SCRIPTS:
            a, b = runs[low][script], runs[high][script]
            print(f"{script} without the cache, {low} -> {high}: peak anonymous memory {a['anon']:.0f} -> "
                  f"{b['anon']:.0f} MB ({100 * (b['anon'] / a['anon'] - 1):+.1f} %), main process {a['hwm']:.0f} -> "
                  f"{b['hwm']:.0f} MB ({100 * (b['hwm'] / a['hwm'] - 1):+.1f} %); target within 10 %")


if __name__ == "__main__":
    main()
