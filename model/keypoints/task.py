"""Keypoints (`"task": "keypoints"`): K named (x, y) points per image; the point names play the part of classes
(n_clas is K).

    DATA_DIR/{train,valid,test}/images/NAME.png + keypoints.json (or keypoints.csv): see data_loader.py

Every method of Task (model/task.py) that is not below calls the function of its name in this package's
data_loader.py, net.py, loss.py, metrics.py or report.py.
"""

from model.keypoints.loss import TERMS
from model.keypoints.metrics import METRICS
from model.task import IMAGE_LABEL_KEYS, Task


class Keypoints(Task):
    name = "keypoints"
    data = "data/digit_points"
    arch = "heatmap_unet"
    monitor = "point_error"
    overfit_metric = "pck"
    split_layout = "images/ and keypoints.json"
    head = "a heatmap head (heatmap_unet) or a final nn.Linear (torchvision)"
    classes_are = "points"
    metrics = METRICS
    loss_terms = TERMS
    trains_on = "point_loss (smooth_l1, l1 or mse) over the labelled points"
    refused = IMAGE_LABEL_KEYS

    def build_data(self, dst, **options):
        from data.points import build_points

        build_points(dst, **options)
