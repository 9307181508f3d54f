"""search_hyperparams.py --smoke: one training batch and one validation batch of every cell, in this process,
before any real training. A bug common to all cells costs seconds instead of hours; nothing is written. The loop
(model/loop.py's train_one_epoch and evaluate) is handed in by search_hyperparams.py: core/ imports no model/."""

import time

from utils import one_line


def smoke_cell(cell, data_dir, train_one_epoch, evaluate):
    """None if one batch of `cell` trains and validates to a finite loss, else a one-line reason."""
    from core.config import Params, fixed_overrides, resolve
    from core.data.loaders import fetch_dataloader
    from core.rundir.folder import is_finite
    from core.search.pool import cell_data
    from core.training.engine import pick_runtime, seed_everything
    from core.training.state import build_state

    try:
        params = Params(resolve(cell.params, cell.name, fixed_overrides("smoke")))
        params.train_subset, params.valid_subset = max(2, params.batch_size), max(2, params.bs_test)  # one batch
        rt = pick_runtime(params.cuda)
        seed_everything(params.seed)
        loaders, classes = fetch_dataloader(["train", "valid"], cell_data(cell, data_dir), params, rt.pin_memory)
        state, _ = build_state(params, classes, rt, loaders["train"], cell.name)
        train_m = train_one_epoch(state, loaders["train"], rt, summary_steps=1, desc="smoke")
        val_m, _ = evaluate(state.eval_model, loaders["valid"], rt, state.task, len(classes),
                            state.task.predictor(params, classes=classes), desc="smoke")
        if not (is_finite({"loss": train_m["loss"]}) and is_finite(val_m)):
            return f"non-finite loss on the first batch (train {train_m['loss']}, valid {val_m['loss']})"
    except Exception as e:  # any failure is the finding; report it in one line and go on to the next cell
        return f"{type(e).__name__}: {one_line(e)}"
    return None


def smoke_cells(cells, data_dir, train_one_epoch, evaluate):
    """[(cell, reason)] for the cells that fail, after trying every one with the loop given; prints a line per
    failure."""
    start = time.perf_counter()
    failures = []
    for cell in cells:
        reason = smoke_cell(cell, data_dir, train_one_epoch, evaluate)
        if reason:
            failures.append((cell, reason))
            print(f"smoke: {cell.name}: {reason}")
    verdict = f"{len(failures)} failed" if failures else "all passed"
    print(f"smoke test of {len(cells)} cell(s): {verdict} ({time.perf_counter() - start:.1f} s)")
    return failures
