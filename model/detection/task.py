"""Detection (`"task": "detection"`): boxes with a class each, per image.

    COCO: DATA_DIR/{train,valid,test}/images/* + annotations.json;  YOLO: images/ + labels/NAME.txt  (data_loader.py)

Every method of Task (model/task.py) that is not below calls the function of its name in this package's
data_loader.py, net.py, loss.py, metrics.py or report.py.
"""

from model.detection.loss import TERMS
from model.detection.metrics import METRICS
from model.task import IMAGE_LABEL_KEYS, Task


class Detection(Task):
    name = "detection"
    data = "data/digit_boxes"
    arch = "small_fcos"
    monitor = "map"
    overfit_metric = "map_50"
    split_layout = "images/ and annotations.json (COCO) or labels/ (YOLO)"
    head = "the detector's box and class predictors (model/detection/net.py head_of)"
    metrics = METRICS
    loss_terms = TERMS
    trains_on = "the detector's own loss terms (weights: box_loss_weights)"
    refused = {**IMAGE_LABEL_KEYS, "compile": "compiles a fixed-shape model"}

    def build_data(self, dst, **options):
        from data.boxes import build_boxes

        build_boxes(dst, **options)

    def forward(self, model, x, targets):
        """The detector computes its losses itself: it needs the boxes."""
        return model(x, targets)
