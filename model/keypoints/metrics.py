"""The metrics of a keypoint epoch: one entry each in METRICS, over every labelled point of the epoch.

    point_error   mean distance between predicted and true point, in pixels of the image as stored (lower is better)
    pck           the share of points within PCK_RADIUS of the image diagonal of the truth (higher is better)

Points that are not labelled (visibility 0, or pushed out of the image by augmentation) count nowhere.
No torch import at module level: params validation and the result tables read METRICS cheaply.
"""

from model.task import LOSS, EpochSums, Metric

PCK_RADIUS = 0.05  # of the image diagonal: PCK@0.05


def point_error(s):
    return s["error"] / max(s["points"], 1)


def pck(s):
    return s["within"] / max(s["points"], 1)


METRICS = {
    "loss": LOSS,
    "point_error": Metric(point_error, minimize=True, min_classes=1),
    "pck": Metric(pck, min_classes=1),
}


def point_distances(pred, target):
    """(distances in pixels [B,K], labelled [B,K] bool, image diagonals [B,K]) of predicted points [B,K,2]
    (fractions of the image) against targets [B,K,5] (x, y fractions, visibility, width, height)."""
    size = target[..., 3:5]
    dist = ((pred.float() - target[..., :2]) * size).norm(dim=-1)
    return dist, target[..., 2] > 0, size.norm(dim=-1)


class EpochMetrics(EpochSums):
    """Sums over an epoch on the device (one sync, in `compute`): the loss, the labelled points, their summed
    error and how many fall within PCK_RADIUS. With keep_details, each sample's predicted points and errors too."""

    def __init__(self, n_clas, device, keep_details=False):
        import torch

        super().__init__(device)
        self.points = torch.zeros(3, dtype=torch.float64, device=device)  # error, points, within
        self.kept = {"prediction": [], "error": [], "labelled": []} if keep_details else None

    def update(self, pred, target, loss):
        import torch

        with torch.no_grad():
            if not self.add_loss(loss, pred.shape[0], target):
                return
            dist, labelled, diagonal = point_distances(pred, target)
            within = (dist <= PCK_RADIUS * diagonal) & labelled
            self.points += torch.stack([(dist * labelled).sum(), labelled.sum(), within.sum()]).double()
            if self.kept is not None:
                self.kept["prediction"].append((pred.float() * target[..., 3:5]).cpu())  # pixels of the image
                self.kept["error"].append(dist.cpu())
                self.kept["labelled"].append(labelled.cpu())

    def compute(self):
        if (alone := self.loss_alone()) is not None:
            return alone
        error, points, within = self.points.tolist()
        sums = {**self.sums(), "error": error, "points": points, "within": within}
        return {name: m.formula(sums) for name, m in METRICS.items()}

    def details(self):
        """Per sample, in loader order: its predicted points in pixels [K,2], each point's error [K] and whether
        it was labelled [K]."""
        import torch

        return {key: torch.cat(parts) for key, parts in self.kept.items()}
