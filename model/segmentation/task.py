"""Segmentation (`"task": "segmentation"`): a class index per pixel.

    DATA_DIR/{train,valid,test}/images/NAME.png + masks/NAME.png (255 = ignore), DATA_DIR/classes.json

Every method of Task (model/task.py) that is not below calls the function of its name in this package's
data_loader.py, net.py, loss.py, metrics.py or report.py.
"""

from model.segmentation.loss import TERMS
from model.segmentation.metrics import METRICS
from model.task import Task


class Segmentation(Task):
    name = "segmentation"
    data = "data/digit_scenes"
    arch = "unet"
    monitor = "miou"
    overfit_metric = "pixel_accuracy"
    split_layout = "images/ and masks/"
    head = "the layers that score classes (model/segmentation/net.py head_of)"
    metrics = METRICS
    loss_terms = TERMS
    refused = {"mixup_alpha": "mixes labels per image (masks cannot be mixed so)",
               "cutmix_alpha": "mixes labels per image (masks cannot be mixed so)"}

    def build_data(self, dst, **options):
        from data.scenes import build_scenes

        build_scenes(dst, **options)

    def check_params(self, params, classes, where):
        from utils import UserError

        super().check_params(params, classes, where)
        if params.eval_window and params.eval_stride > params.eval_window:
            raise UserError(f"{where}: key 'eval_stride' is {params.eval_stride}, more than eval_window "
                            f"{params.eval_window}: the tiles would leave gaps")
        self.part("loss").check_terms({k: v for k, v in vars(params.loss).items() if k in self.loss_keys()},
                                      len(classes))
