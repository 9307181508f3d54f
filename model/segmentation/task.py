"""Segmentation (`"task": "segmentation"`): a class index per pixel.

    DATA_DIR/{train,valid,test}/images/NAME.png + masks/NAME.png (255 = ignore), DATA_DIR/classes.json
"""

from model.task import Task


class Segmentation(Task):
    name, data, arch, monitor = "segmentation", "data/digit_scenes", "unet", "miou"
    overfit_metric, split_layout = "pixel_accuracy", "images/ and masks/"
    head = "the layers that score classes (model/segmentation/net.py head_of)"
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
