"""Segmentation (`"task": "segmentation"`): a class index per pixel.

    DATA_DIR/{train,valid,test}/images/NAME.png + masks/NAME.png (255 = ignore), DATA_DIR/classes.json
"""

from model.task import Task


class Segmentation(Task):
    name, data, arch, monitor = "segmentation", "data/digit_scenes", "unet", "miou"
    overfit_metric, split_layout = "pixel_accuracy", "images/ and masks/"
    head = "the layers that score classes (model/segmentation/net.py head_of)"
    own_size = True
    refused = {"mixup_alpha": "mixes labels per image (masks cannot be mixed so)",
               "cutmix_alpha": "mixes labels per image (masks cannot be mixed so)"}

    def build_data(self, dst, **options):
        from data.scenes import build_scenes

        build_scenes(dst, **options)

    def export_parts(self, model, params):
        return self.part("net").export_parts(model, params)

    def predictor(self, params, tta=None, classes=None):
        return self.part("report").predictor(params, tta, classes)

    def check_params(self, params, classes, where):
        from utils import UserError

        super().check_params(params, classes, where)
        if params.eval_window and params.eval_stride > params.eval_window:
            raise UserError(f"{where}: key 'eval_stride' is {params.eval_stride}, more than eval_window "
                            f"{params.eval_window}: the tiles would leave gaps")
        named = params.keep_regions if isinstance(params.keep_regions, dict) else {}
        for name in named:
            if name not in classes[1:]:
                raise UserError(f"{where}: key 'keep_regions' names class {name!r}, not a foreground class of the "
                                f"data ({', '.join(classes[1:])})")
        self.part("loss").check_terms({k: v for k, v in vars(params.loss).items() if k in self.loss_keys()},
                                      len(classes))
