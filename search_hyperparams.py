"""Train one child folder per cell of PARENT_DIR/params.json's "hyper_search" block, then tabulate and plot.

    python search_hyperparams.py --parent_dir experiments/learning_rate [--workers 2] [--gpus 0,1] [--dry_run]

Rerunning is always safe and cheap: finished cells are skipped, interrupted cells resume from last.pth.tar,
failed cells rerun only with --retry_failed, and new grid values run only the new cells.
"""

import argparse
import os
import shlex
import sys

from tabulate import tabulate

import model.tasks  # noqa: F401  (registers the tasks in core/tasks.py)
from core.config import KEYS
from core.rundir.folder import Status, read_status
from core.search import cluster
from core.search.asha import Asha
from core.search.cells import FAILED, LOCKED, read_statuses, resumes, wants_training
from core.search.container import RUNTIMES, find_container
from core.search.pool import (
    Queue,
    cell_command,
    cell_data,
    cell_env,
    estimate_hours,
    load_search,
    prepare,
    procs_per_cell,
    run_pool,
)
from core.search.progress import OK
from core.search.results import budget_line
from core.search.smoke import smoke_cells
from core.tasks import TASKS
from core.trackers.search import close_search, open_search, search_files
from utils import UserError, run_cli

NOT_HERE = "not in this search (kept)"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parent_dir", required=True, help="folder with a params.json holding 'hyper_search'")
    ap.add_argument("--data_dir", help="one data set for every cell (default: each cell's params data_dir, a key "
                                       "hyper_search may vary, else its task's own: " +
                    ", ".join(t.data for t in TASKS.values() if t.data) + ")")
    ap.add_argument("--launcher", default="local", choices=["local", "slurm", "ray"])
    ap.add_argument("--fail_fast", action="store_true", help="local: stop at the first failed cell")
    ap.add_argument("--retry_failed", action="store_true", help="run failed and diverged cells again")
    ap.add_argument("--dry_run", action="store_true", help="print the plan and a cost estimate; write nothing")
    ap.add_argument("--smoke", action="store_true",
                    help="first train and validate one batch of every cell (in seconds); stop if any fails")
    ap.add_argument("--print_commands", action="store_true",
                    help="prepare the cell folders and print one train.py command per cell to run")
    ap.add_argument("--promote", type=int, default=0, metavar="N",
                    help="successive halving: also train the N best cells of the search (highest rung, then metric) "
                         "to num_epochs")
    local = ap.add_argument_group("local launcher")
    local.add_argument("--workers", type=int, help="cells trained at once (default: one per --gpus entry, else 1)")
    local.add_argument("--gpus", default="", help="comma-separated GPU ids; each running cell gets one")
    local.add_argument("--cold", action="store_true",
                       help="start each cell in a fresh Python interpreter (3-6 s of imports each) instead of forking "
                            "it from a server that has imported torch once")
    cluster = ap.add_argument_group("slurm and ray launchers")
    cluster.add_argument("--gpus_per_cell", type=int, default=0)
    cluster.add_argument("--cpus_per_cell", type=int, default=1, help="slurm: CPUs per task (a DDP cell: per rank)")
    cluster.add_argument("--nodes_per_cell", type=int, default=1,
                         help="slurm: nodes a DDP cell (params nproc) spreads its processes over")
    cluster.add_argument("--partition", help="slurm partition (default: the cluster's default)")
    cluster.add_argument("--time_min", type=int, default=60, help="slurm time limit per task, minutes")
    cluster.add_argument("--mem_gb", type=float, help="slurm memory per task")
    cluster.add_argument("--array_parallelism", type=int, default=32, help="slurm: tasks running at once")
    cluster.add_argument("--max_requeues", type=int, default=3, help="slurm: requeues allowed per cell")
    cluster.add_argument("--no_wait", action="store_true", help="slurm: submit and return; rerun later to collect")
    cluster.add_argument("--ray_address", help="ray: 'auto' or HOST:PORT of a running cluster (default: start one)")
    image = ap.add_argument_group("containers (docs/containers.md)")
    image.add_argument("--container", metavar="IMAGE",
                       help="train each cell as one run of this image (make image builds it), its folder at /cell")
    image.add_argument("--container_runtime", choices=RUNTIMES,
                       help="default: podman, else docker; apptainer for a .sif file")
    args = ap.parse_args(argv)
    for name in ("workers", "cpus_per_cell", "nodes_per_cell", "time_min", "array_parallelism"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UserError(f"--{name} {value}: must be >= 1")
    for name in ("gpus_per_cell", "max_requeues", "promote"):
        if getattr(args, name) < 0:
            raise UserError(f"--{name} {getattr(args, name)}: must be >= 0")
    if args.mem_gb is not None and args.mem_gb <= 0:
        raise UserError(f"--mem_gb {args.mem_gb}: must be > 0")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.container:  # before anything runs: a missing runtime or image is a one-line error
        args.container = find_container(args.container, args.container_runtime)
    cells, schedule, sampler, others = load_search(args.parent_dir)
    read_statuses(cells)
    todo = [c for c in cells if wants_training(c, args.retry_failed)]
    if args.promote and not schedule:
        raise UserError("--promote: only for a search with a successive-halving \"schedule\"")
    # successive halving decides which cell trains how far as results come in; a plain search trains `todo`
    if schedule:
        source = Asha(cells, schedule, retry_failed=args.retry_failed, promote=args.promote, sampler=sampler)
    else:
        source = Queue(cells, todo, sampler)

    if args.dry_run:
        check_presets(cells)
        print_plan(cells, todo, args, source, others)
        return 0
    if args.print_commands and (schedule or sampler):
        raise UserError("--print_commands: this search decides its next cells (or rungs) as results come in; run "
                        "it with a launcher (local, slurm or ray)")
    if args.print_commands:
        open_search(args.parent_dir)  # the cells' tracker runs are its children
        for cell in todo:
            prepare(cell)
            print(shlex.join(cell_command(cell, args.data_dir, cell_env(), args.container)))
        return 0

    report_skipped(cells, todo, args.parent_dir, others)
    if args.launcher != "local":
        cluster.need(cluster.PACKAGE[args.launcher])  # before any work: a missing extra is a one-line error
    check_data(todo, args.data_dir)  # defaults built once here, not raced by parallel cells; bad paths refused
    if args.smoke and smoke_test(todo, args.data_dir):
        print("smoke test failed: nothing trained; fix the cells above and rerun")
        return 1
    print(plan_line(cells, todo, schedule, sampler, args.launcher))
    open_search(args.parent_dir)  # MLflow's and W&B's parent run, before any cell starts
    try:
        failed = launch_cells(source, args)
    except KeyboardInterrupt:
        close_search(args.parent_dir, Status.INTERRUPTED, [])
        raise
    cells += source.added  # method "tpe": the cells proposed while it ran
    if args.launcher == "slurm" and args.no_wait:
        return 0
    if schedule and not (failed and args.fail_fast):
        source.prune_rest()
    print_summary(cells)
    summarize(args.parent_dir)
    close_search(args.parent_dir, Status.COMPLETED, search_files(args.parent_dir))
    return 1 if failed else 0


def launch_cells(source, args):
    """Train the source's jobs on the chosen engine; every launcher returns the number of jobs that failed.
    Slurm and Ray take them in waves (all jobs ready now, then the promotions their results allow)."""
    if args.launcher == "local":
        gpus, nproc = parse_gpus(args.gpus), procs_per_cell(source.cells)
        if gpus and len(gpus) < nproc:
            raise UserError(f"--gpus {args.gpus}: fewer GPUs than the {nproc} processes each cell trains on (nproc)")
        return run_pool(source, args.data_dir, args.workers or max(1, len(gpus) // nproc), gpus,
                        fail_fast=args.fail_fast, warm=not args.cold, meanwhile=import_summary,
                        container=args.container)
    # TPE learns from finished cells: waves of array_parallelism, not every proposal at once
    limit = args.array_parallelism if getattr(source, "sampler", None) else float("inf")
    failed, locked = 0, set()
    while wave := ready_jobs(source, limit, locked):
        if args.launcher == "slurm":
            failed += cluster.run_slurm(wave, args.data_dir, args.parent_dir, args)
        else:
            failed += cluster.run_ray(wave, args.data_dir, args)
        for cell in wave:
            source.refresh(cell)
            if cell.result == LOCKED:  # trained elsewhere now: not offered to the next wave again
                locked.add(cell.name)
        if args.launcher == "slurm" and args.no_wait:
            break  # the rest is decided by a rerun, once these results are in
    return failed


def ready_jobs(source, limit, skip):
    """Every job that can start now, at most `limit`, none of the cells named in `skip`."""
    jobs = []
    while len(jobs) < limit and (cell := source.next_job({c.name for c in jobs} | skip)):
        jobs.append(cell)
    return jobs


def check_data(cells, data_dir):
    """Each data set the cells train on exists (a task's default is built now): a bad path, searched or not, is one
    line before any cell starts."""
    for path in sorted({cell_data(c, data_dir) for c in cells}):
        if not os.path.isdir(path):
            raise UserError(f"data set {path}: not found (params data_dir, or --data_dir)")


def plan_line(cells, todo, schedule, sampler, launcher):
    n = n_cells(cells, sampler)
    existing = "existing " if sampler else ""
    line = f"{len(todo)} of {len(cells)} {existing}cells to train ({launcher})" if not schedule else \
        f"{n} cells, {schedule.describe(n)}"
    if sampler:
        line += f"\ntpe: {len(cells)} of {sampler.n_samples} cells exist; Optuna proposes the rest as results come in"
    return line


def parse_gpus(text):
    try:
        return [int(g) for g in text.split(",") if g.strip()]
    except ValueError:
        raise UserError(f"--gpus {text}: expected comma-separated integers, e.g. 0,1") from None


def smoke_test(cells, data_dir):
    """--smoke: one batch of every cell through model/loop.py's loop; the failures. Imports torch: only here."""
    from model.loop import evaluate, train_one_epoch

    return smoke_cells(cells, data_dir, train_one_epoch, evaluate)


def check_presets(cells):
    """An augmentation preset name is checked against the task's data_loader.py, which only a dry run imports: it
    costs the seconds of importing torch and albumentations that the search itself avoids."""
    from core import tasks

    for cell in cells:
        name = cell.params.get("augmentation")
        presets = tasks.load(cell.params.get("task", KEYS["task"].default)).presets
        if isinstance(name, str) and name not in presets:
            raise UserError(f"cell {cell.name}: params key 'augmentation': unknown preset '{name}' "
                            f"(presets: {', '.join(presets)}; or an albumentations dict)")


def print_plan(cells, todo, args, source, others):
    rows = [[c.name, action(c, todo, source)] for c in cells] + [[name, NOT_HERE] for name in others]
    if rows:
        print(tabulate(rows, headers=["cell folder", "action"], tablefmt="github"))
        counts = {a: sum(r[1] == a for r in rows) for a in dict.fromkeys(r[1] for r in rows)}
        print(f"{len(cells)} cells: " + ", ".join(f"{n} {a}" for a, n in counts.items() if a != NOT_HERE)
              + (f"; {len(others)} folders {NOT_HERE}" if others else ""))
    schedule, sampler = getattr(source, "schedule", None), source.sampler
    print(plan_line(cells, todo, schedule, sampler, args.launcher))
    if schedule:
        print(budget_line(*search_budget(cells, sampler)))
        epochs = max(0, schedule.planned_epochs(n_cells(cells, sampler)) - source.epochs_trained())
    else:
        epochs = sum(max(0, num_epochs(c.params) - read_status(c.folder).get("epoch", 0)) for c in todo)
        epochs += epochs_to_propose(cells, sampler)
    hours, basis = estimate_hours(cells, epochs)
    per_cell = max(1, args.gpus_per_cell) if args.launcher != "local" else 1
    unit = "GPU" if args.gpus_per_cell or args.gpus else "CPU-worker"
    print(f"estimated compute: {hours * per_cell:.2f} {unit} hours ({basis})" if hours is not None
          else f"estimated compute: unknown ({basis})")
    if args.launcher == "slurm":
        print(cluster.describe_slurm(todo, args))
    if args.container:
        print(f"each cell runs in {args.container.runtime} image {args.container.image}, for example:")
        for cell in todo[:3]:
            print("  " + shlex.join(cell_command(cell, args.data_dir, cell_env(), args.container)))


def action(cell, todo, source):
    """What the search would do with a cell now (a scheduled one: to which epoch it goes next)."""
    if cell.status == LOCKED:
        return "skip (running elsewhere)"
    if cell.status == Status.COMPLETED:
        return "skip (done)"
    if cell.status in FAILED:
        return "retry (failed before)" if cell in todo else "skip (failed; --retry_failed)"
    if not isinstance(source, Asha):
        return "resume" if resumes(cell) else "run"
    p, rungs = source.progress[cell.name], source.rungs
    if p.epochs == 0:
        return f"run to epoch {rungs[0]}"
    if p.epochs in rungs:
        return f"{p.status} at epoch {p.epochs} (goes on if in the top 1/{source.schedule.reduction_factor})"
    return f"resume to epoch {min(r for r in rungs if r > p.epochs)}"


def search_budget(cells, sampler):
    """(epochs trained so far, epochs of every cell trained to the end, those TPE is still to propose included)."""
    return (sum(read_status(c.folder).get("epoch", 0) or 0 for c in cells),
            sum(num_epochs(c.params) for c in cells) + epochs_to_propose(cells, sampler))


def n_cells(cells, sampler):
    """The cells of the search: those that exist, or all n_samples TPE will have proposed."""
    return max(len(cells), sampler.n_samples) if sampler else len(cells)


def epochs_to_propose(cells, sampler):
    """Epochs of the cells TPE has still to propose, each trained to the end."""
    return (n_cells(cells, sampler) - len(cells)) * num_epochs(sampler.base) if sampler else 0


def num_epochs(params):
    return params.get("num_epochs", KEYS["num_epochs"].default)


def report_skipped(cells, todo, parent_dir, others):
    for c in cells:
        if c.status == LOCKED or (c.status in FAILED and c not in todo):
            job = read_status(c.folder).get("slurm_job_id") if c.status == LOCKED else None
            print(f"{c.folder}: {action(c, todo, None)}" + (f" (Slurm job {job})" if job else ""), file=sys.stderr)
    if others:
        print(f"{len(others)} folders in {parent_dir} are {NOT_HERE}: {', '.join(others)}", file=sys.stderr)


def print_summary(cells):
    ran = [c for c in cells if c.result]
    failed = [c for c in ran if c.result not in OK]
    done = sum(c.result == Status.COMPLETED for c in ran)
    paused = sum(c.result == Status.PAUSED for c in ran)
    print(f"search finished: {done} completed, " + (f"{paused} paused at a rung, " if paused else "")
          + f"{len(failed)} not completed")
    for c in failed:
        print(f"  {c.result}: {os.path.join(c.folder, 'train.log')}")
    print(budget_line(*search_budget(cells, None)))


def import_summary():
    """The modules of the final table and plots (matplotlib: 0.2 s), imported here rather than at the top: a dry run
    or a Slurm submission never needs them."""
    import plot_results
    import synthesize_results

    return synthesize_results, plot_results


def summarize(parent_dir):
    """Tables and plots, as synthesize_results.py and plot_results.py would make them."""
    synthesize_results, plot_results = import_summary()
    try:
        print(synthesize_results.synthesize(parent_dir))
        plot_results.plot(parent_dir)
    except UserError as e:  # e.g. every cell failed before its first epoch: nothing to plot, still a summary
        print(f"no plots: {e}")


if __name__ == "__main__":
    run_cli(main)
