"""A bare inference script, what a user would write by hand: the baseline of bench/bench_predict.py.

    python bench/bare_predict.py --model_dir DIR --source FOLDER

Loads the checkpoint, decodes each image of FOLDER with PIL, puts it through the run's evaluation transform, and runs
the model in batches of bs_test; keeps each image's top class in memory and writes nothing.
"""

import argparse
import glob
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

import model.tasks  # noqa: E402, F401  (registers the tasks in core/tasks.py)
from core.training.trained import trained_model, trained_run  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model_dir", required=True)
    ap.add_argument("--source", required=True)
    args = ap.parse_args()
    path = os.path.join(args.model_dir, "best.pth.tar")
    ckpt, params, task = trained_run(path)
    model = trained_model(ckpt, params, task, path).eval()
    transform = task.build_transforms(params)[1]
    paths = sorted(glob.glob(os.path.join(args.source, "**", "*.png"), recursive=True))
    top = []
    with torch.inference_mode():
        for start in range(0, len(paths), params.bs_test):
            images = [np.asarray(Image.open(p).convert("RGB")) for p in paths[start:start + params.bs_test]]
            x = torch.stack([transform(image=im)["image"] for im in images])
            top += model(x).argmax(1).tolist()
    print(len(top))


if __name__ == "__main__":
    main()
