"""What a tracker costs a whole run: train.py, start to exit, with loggers ["mlflow"] against none.

    python bench/bench_trackers.py [--experiments base_model] [--rounds 3] [--loggers mlflow] [KEY=VALUE ...]

Each round trains a fresh copy of the experiment twice, once without trackers and once with, in alternating order
(so a machine that slows down over the rounds weighs on both), into one scratch folder whose MLflow store (a
sqlite file beside the runs, as by default) was created by a first run left out of the timing: what every run
after a user's first one pays. Prints the median of the ratios (target <= 1.03) and each round's times.
"""

import json
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import ROOT, parse_args, run_script  # noqa: E402


def main():
    args = parse_args(__doc__, rounds=3, experiments=["base_model"], more=lambda ap: ap.add_argument(
        "--loggers", default="mlflow", help="comma-separated trackers to time (default: mlflow)"))
    loggers = args.loggers.split(",")
    on, off = [f"loggers={json.dumps(loggers)}"], ["loggers=[]"]
    train = os.path.join(ROOT, "train.py")
    with tempfile.TemporaryDirectory() as scratch:
        for experiment in args.experiments:
            run_script(train, experiment, scratch, args.data_dir, args.overrides + on)  # creates the store
            ratios = []
            for r in range(args.rounds):
                order = [on, off] if r % 2 else [off, on]
                times = {id(o): run_script(train, experiment, scratch, args.data_dir, args.overrides + o)[0]
                         for o in order}
                ratios.append(times[id(on)] / times[id(off)])
                print(f"  round {r + 1}: without {times[id(off)]:.1f} s, with {'+'.join(loggers)} "
                      f"{times[id(on)]:.1f} s: {ratios[-1]:.3f}x")
            print(f"{experiment}: train.py with {'+'.join(loggers)} / without = {statistics.median(ratios):.3f}x "
                  f"(median of {args.rounds} rounds; target <= 1.03)")


if __name__ == "__main__":
    main()
