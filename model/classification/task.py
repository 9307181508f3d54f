"""Classification (`"task": "classification"`, the default): one label per image.

    DATA_DIR/{train,valid,test}/<class>/*.png       classes: the sorted folder names of train/

Every method of Task (model/task.py) that is not below calls the function of its name in this package's
data_loader.py, net.py, loss.py, metrics.py or report.py.
"""

from model.classification.loss import TERMS
from model.classification.metrics import METRICS
from model.task import Task


class Classification(Task):
    name = "classification"
    data = "data/digits"
    arch = "small_cnn"
    monitor = "accuracy"
    overfit_metric = "accuracy"
    split_layout = "<class>/"
    classes_are = "class folders"
    metrics = METRICS
    loss_terms = TERMS
    refused = {"eval_window": "tiles segmentation masks", "eval_stride": "tiles segmentation masks"}

    def build_data(self, dst, **options):
        from data.digits import build_digits

        build_digits(dst, **options)

    def build_batch_mix(self, params, n_clas):
        return self.part("data_loader").build_batch_mix(params, n_clas)

    def check_params(self, params, classes, where):
        from utils import UserError

        super().check_params(params, classes, where)
        metric = params.early_stopping.monitor_metric
        if len(classes) < METRICS[metric].min_classes:
            raise UserError(f"{where}: key 'early_stopping.monitor_metric' is {metric} but the data has only "
                            f"{len(classes)} classes (it needs {METRICS[metric].min_classes})")
