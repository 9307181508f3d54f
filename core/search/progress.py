"""The progress bar over a search's cells, shared by every launcher (the local pool, Slurm, Ray)."""

from tqdm import tqdm

from core.rundir.folder import Status
from core.search.cells import LOCKED

OK = (Status.COMPLETED, Status.PAUSED, LOCKED)  # job results that are not failures


class Progress:
    """A bar over cells (a line per finished cell where there is no terminal), shared by every launcher."""

    def __init__(self, total):
        self.total, self.done, self.failed, self.jobs = total, 0, 0, 0
        self.bar = tqdm(total=total, desc="cells", unit="cell", dynamic_ncols=True, disable=None)

    def update(self, running):
        self.bar.set_postfix(running=running, failed=self.failed)

    def started(self, running):
        """A job began; successive halving hands out more jobs than it planned when promotions come early."""
        self.jobs += 1
        if self.jobs > self.bar.total:
            self.total = self.bar.total = self.jobs
            self.bar.refresh()
        self.update(running)

    def finished(self, cell, running):
        self.done += 1
        self.failed += cell.result not in OK
        self.bar.update()
        self.update(running)
        tqdm.write(f"[{self.done}/{self.total}] {cell.name}: {cell.result}")

    def close(self):
        self.bar.close()
