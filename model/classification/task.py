"""Classification (`"task": "classification"`, the default): one label per image.

    DATA_DIR/{train,valid,test}/<class>/*.png       classes: the sorted folder names of train/
"""

from model.task import CROP_KEYS, MASK_KEYS, Task


class Classification(Task):
    name, data, arch, monitor = "classification", "data/digits", "small_cnn", "accuracy"
    overfit_metric, split_layout, classes_are = "accuracy", "<class>/", "class folders"
    head = "a final nn.Linear classifier head"
    refused = {**MASK_KEYS, **CROP_KEYS}

    def build_data(self, dst, **options):
        from data.digits import build_digits

        build_digits(dst, **options)

    def build_batch_mix(self, params, n_clas):
        return self.part("data_loader").build_batch_mix(params, n_clas)

    def check_params(self, params, classes, where):
        from utils import UserError

        super().check_params(params, classes, where)
        metric = params.early_stopping.monitor_metric
        if len(classes) < self.metrics[metric].min_classes:
            raise UserError(f"{where}: key 'early_stopping.monitor_metric' is {metric} but the data has only "
                            f"{len(classes)} classes (it needs {self.metrics[metric].min_classes})")
