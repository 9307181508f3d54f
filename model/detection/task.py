"""Detection (`"task": "detection"`): boxes with a class each, per image.

    COCO: DATA_DIR/{train,valid,test}/images/* + annotations.json;  YOLO: images/ + labels/NAME.txt  (data_loader.py)
"""

from model.task import IMAGE_LABEL_KEYS, WINDOW_KEYS, Task


class Detection(Task):
    name, data, arch, monitor = "detection", "data/digit_boxes", "small_fcos", "map"
    overfit_metric, split_layout = "map_50", "images/ and annotations.json (COCO) or labels/ (YOLO)"
    head = "the detector's box and class predictors (model/detection/net.py head_of)"
    trains_on = "the detector's own loss terms (weights: box_loss_weights)"
    export_tolerance = 1e-3  # on the head's raw outputs (class logits, box offsets), before the decoding
    # eval_window and eval_stride are honoured: tiled evaluation (tiles.py)
    refused = {**{k: v for k, v in IMAGE_LABEL_KEYS.items() if k not in WINDOW_KEYS},
               "compile": "compiles a fixed-shape model"}

    def build_data(self, dst, **options):
        from data.boxes import build_boxes

        build_boxes(dst, **options)

    def build_transforms(self, params):
        """data_loader.py's pipelines; with eval_window, evaluation keeps each image at its own size: the tiles are
        cut from it (tiles.py)."""
        train_tf, eval_tf = super().build_transforms(params)
        if params.eval_window:
            eval_tf = self.part("tiles").native(eval_tf, params.seed)
        return train_tf, eval_tf

    def dataset(self, items, transform, images=None):
        """Images at their own size (tiled evaluation) batch padded, which a plain stack cannot."""
        tiles = self.part("tiles")
        if tiles.is_native(transform):
            return tiles.WholeImages(items, transform, images)
        return super().dataset(items, transform, images)

    def preprocess(self, transform, image):
        """The evaluation transform also moves boxes: there are none to move."""
        return transform(image=image, bboxes=[], labels=[])["image"]

    def export_parts(self, model, params):
        """Backbone and head alone: decoding picks a data-dependent number of boxes (net.py DenseHeads)."""
        return self.part("net").export_parts(model, params)

    def forward(self, model, x, targets):
        """The detector computes its losses itself: it needs the boxes."""
        return model(x, targets)

    def check_params(self, params, classes, where):
        from utils import UserError

        super().check_params(params, classes, where)
        if params.eval_window and params.eval_stride > params.eval_window:
            raise UserError(f"{where}: key 'eval_stride' is {params.eval_stride}, more than eval_window "
                            f"{params.eval_window}: the tiles would leave gaps")
