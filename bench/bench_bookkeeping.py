"""What train.py spends per epoch beyond training and validating: metrics files, checkpoints, status, figures.

    python bench/bench_bookkeeping.py [--experiments base_model resnet18] [--rounds 2] [KEY=VALUE ...]

Runs `train.py` on a fresh copy of each experiment and reads what the run recorded about itself:
history.json's `epoch_s` (train + valid compute of each epoch) and record.json's `wall_time_s` (first epoch to exit
of the loop, end of run included) and `closing_s` (after the last epoch: waiting for its writes and the figures).

    per-epoch bookkeeping = (wall_time_s - closing_s - sum(epoch_s)) / epochs      target: <= 3 % of an epoch
    end of run            = closing_s                                              (reported as % of all epochs)

Prints the median over rounds.
"""

import json
import os
import shutil
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import ROOT, parse_args, run_script  # noqa: E402


def one_run(experiment, scratch, data_dir, overrides):
    _, folder = run_script(os.path.join(ROOT, "train.py"), experiment, scratch, data_dir, overrides)
    with open(os.path.join(folder, "history.json")) as f:
        compute = [r["epoch_s"] for r in json.load(f)["epochs"]]
    with open(os.path.join(folder, "record.json")) as f:
        session = json.load(f)["sessions"][-1]
    shutil.rmtree(folder)
    per_epoch = (session["wall_time_s"] - session["closing_s"] - sum(compute)) / len(compute)
    return per_epoch / statistics.fmean(compute), session["closing_s"], session["closing_s"] / sum(compute)


def main():
    args = parse_args(__doc__, rounds=2)
    with tempfile.TemporaryDirectory() as scratch:
        for experiment in args.experiments:
            runs = [one_run(experiment, scratch, args.data_dir, args.overrides) for _ in range(args.rounds)]
            share, closing, closing_share = (statistics.median(x) for x in zip(*runs))
            print(f"{experiment}: per-epoch bookkeeping {100 * share:.2f} % of an epoch (target <= 3 %); "
                  f"end of run {closing:.2f} s ({100 * closing_share:.1f} % of all epochs); "
                  f"median of {args.rounds} runs")


if __name__ == "__main__":
    main()
