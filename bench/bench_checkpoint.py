"""What checkpoints within an epoch and a preemption cost (core/training/within_epoch.py).

    python bench/bench_checkpoint.py [--experiments base_model] [--rounds 3] [--blocking resnet18] [KEY=VALUE ...]

1. The whole `train.py` command, start to exit, with `checkpoint_every_s: 600` against without, alternating
   (target <= 1.02): on a short run no such checkpoint falls due, so this is what watching for one, and for a
   stopping signal, costs every batch.
2. How long a checkpoint blocks the training loop, for the --blocking experiment's model (resnet18): the state
   copied off the model as an epoch's end does (state.checkpoint + detached_copy) against a checkpoint within the
   epoch (the same, plus where the epoch stands: its metric sums and the gradient monitor's start weights). The file
   is written by the background writer in both cases. Median of 20.
3. SIGTERM in the middle of an epoch: seconds from the signal to last.pth.tar on disk (status.json's
   signal_to_checkpoint_s) against one batch's time (history.json: time_s / batches of the epoch before).
"""

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import ROOT, parse_args, run_script  # noqa: E402


def whole_runs(args, scratch):
    train, on, off = os.path.join(ROOT, "train.py"), ["checkpoint_every_s=600"], []
    for experiment in args.experiments:
        ratios = []
        for r in range(args.rounds):
            order = [on, off] if r % 2 else [off, on]
            times = {id(o): run_script(train, experiment, scratch, args.data_dir, args.overrides + o)[0] for o in order}
            ratios.append(times[id(on)] / times[id(off)])
            print(f"  round {r + 1}: without {times[id(off)]:.1f} s, with {times[id(on)]:.1f} s: {ratios[-1]:.3f}x")
        print(f"{experiment}: train.py with checkpoint_every_s 600 / without = {statistics.median(ratios):.3f}x "
              f"(median of {args.rounds}; target <= 1.02)")


def blocking(experiment):
    import model.tasks  # noqa: F401
    from core.config import load_params
    from core.data.loaders import fetch_dataloader
    from core.rundir.outputs import within_snapshot
    from core.training.engine import pick_runtime
    from core.training.monitor import GradMonitor
    from core.training.state import build_state, detached_copy
    from core.training.within_epoch import position

    path = os.path.join(ROOT, "experiments", experiment, "params.json")
    params = load_params(path)
    loaders, classes = fetch_dataloader(["train"], os.path.join(ROOT, "data", "digits"), params)
    rt = pick_runtime(0)
    state, _ = build_state(params, classes, rt, loaders["train"], path)
    monitor = GradMonitor(state.model, params.save_summary_steps)
    monitor.start_epoch()
    metrics = state.task.epoch_metrics(state.n_classes, rt.device)
    end, within = [], []
    for _ in range(20):
        t = time.perf_counter()
        detached_copy(state.checkpoint(1, params, classes))
        end.append(time.perf_counter() - t)
        t = time.perf_counter()
        ckpt = state.checkpoint(0, params, classes)
        ckpt["within"] = position(1, 5, metrics, monitor, state.ranks)
        within_snapshot(ckpt)
        within.append(time.perf_counter() - t)
    size = sum(p.numel() * p.element_size() for p in state.model.parameters()) / 2**20
    e, w = statistics.median(end), statistics.median(within)
    print(f"{experiment} ({size:.0f} MB of weights): the loop blocked {1000 * e:.1f} ms at an epoch's end, "
          f"{1000 * w:.1f} ms within an epoch ({w / e:.2f}x; median of 20)")


def sigterm(experiment, scratch, data_dir, overrides):
    folder = tempfile.mkdtemp(dir=scratch)
    with open(os.path.join(ROOT, "experiments", experiment, "params.json")) as f:
        params = json.load(f)
    with open(os.path.join(folder, "params.json"), "w") as f:
        json.dump({**params, "num_epochs": 20}, f)
    cmd = [sys.executable, "train.py", "--model_dir", folder, *(["--data_dir", data_dir] if data_dir else []),
           *overrides]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    status = os.path.join(folder, "status.json")
    while not os.path.exists(status) or json.load(open(status)).get("epoch", 0) < 2:
        time.sleep(0.01)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    proc.wait()
    with open(os.path.join(folder, "history.json")) as f:
        row = json.load(f)["epochs"][-1]
    with open(status) as f:
        took = json.load(f)["signal_to_checkpoint_s"]
    batches = max(1, round(row["images_per_s"] * row["time_s"] / params["batch_size"]))
    print(f"{experiment}: SIGTERM mid-epoch -> last.pth.tar on disk in {took:.3f} s; one batch takes "
          f"{row['time_s'] / batches:.3f} s")


def main():
    args = parse_args(__doc__, rounds=3, experiments=["base_model"], more=lambda ap: ap.add_argument(
        "--blocking", default="resnet18", help="the experiment whose model's checkpoint blocking is timed"))
    with tempfile.TemporaryDirectory() as scratch:
        whole_runs(args, scratch)
        blocking(args.blocking)
        for experiment in args.experiments:
            sigterm(experiment, scratch, args.data_dir, args.overrides)


if __name__ == "__main__":
    main()
