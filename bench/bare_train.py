"""The yardstick for train.py: a bare PyTorch script over the same data, model, optimizer and schedule.

    python bench/bare_train.py --model_dir experiments/base_model [--data_dir data/digits] [KEY=VALUE ...]

What anyone would write by hand: seed, load the data, build the model and the training loss of the experiment's
task, then per epoch train and validate (the loss and the task's metrics, the monitored one printed), and save the
final weights once. No history,
metrics files, figures, checkpoints per epoch, record, status or lock. bench/bench_train_process.py times this
script against train.py, start to exit.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import model.tasks  # noqa: E402, F401  (registers the tasks in core/tasks.py)
from core import tasks  # noqa: E402
from core.config import load_params  # noqa: E402
from core.data.loaders import fetch_dataloader, reseed_epoch  # noqa: E402
from core.tasks import ensure_data  # noqa: E402
from core.training.engine import epoch_seed, pick_runtime, seed_everything  # noqa: E402
from core.training.optim import PER_BATCH, build_optimizer, build_scheduler  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model_dir", required=True)
    ap.add_argument("--data_dir")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    params = load_params(os.path.join(args.model_dir, "params.json"), args.overrides)
    rt = pick_runtime(params.cuda)
    seed_everything(params.seed)
    task = tasks.load(params.task)
    data_dir = ensure_data(args.data_dir or task.data)
    loaders, classes = fetch_dataloader(["train", "valid"], data_dir, params, rt.pin_memory)
    model = rt.prepare(task.build_model(params, len(classes)))
    optimizer = build_optimizer(params, model, task)
    scheduler = build_scheduler(params, optimizer, len(loaders["train"]))
    loss_fn = task.build_loss(params, [1] * len(classes))  # class_weights off: the counts do not matter
    for epoch in range(1, params.num_epochs + 1):
        reseed_epoch(loaders["train"], epoch_seed(params.seed, epoch))  # as train.py: same batches
        model.train()
        for x, y in loaders["train"]:
            x, y = rt.to_device(x, y)
            with rt.autocast():
                loss = loss_fn(task.forward(model, x, y), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if params.grad_clip:  # the experiment's recipe, as its optimizer is: not bookkeeping
                torch.nn.utils.clip_grad_norm_(model.parameters(), params.grad_clip)
            optimizer.step()
            if params.scheduler in PER_BATCH:
                scheduler.step()
        if scheduler is not None and params.scheduler not in PER_BATCH + ("plateau",):
            scheduler.step()
        model.eval()
        metrics, predict = task.epoch_metrics(len(classes), rt.device), task.predictor(params)
        with torch.inference_mode(), rt.autocast():
            for x, y in loaders["valid"]:
                x, y = rt.to_device(x, y)
                outputs = predict(model, x, y)
                metrics.update(outputs, y, task.loss_fn(outputs, y))
        monitored = params.early_stopping.monitor_metric
        print(f"epoch {epoch}: valid {monitored} {metrics.compute()[monitored]:.4f}")
    torch.save(model.state_dict(), os.path.join(args.model_dir, "bare_final.pt"))


if __name__ == "__main__":
    main()
