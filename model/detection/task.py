"""Detection (`"task": "detection"`): boxes with a class each, per image.

    COCO: DATA_DIR/{train,valid,test}/images/* + annotations.json;  YOLO: images/ + labels/NAME.txt  (data_loader.py)
"""

from model.task import IMAGE_LABEL_KEYS, Task


class Detection(Task):
    name, data, arch, monitor = "detection", "data/digit_boxes", "small_fcos", "map"
    overfit_metric, split_layout = "map_50", "images/ and annotations.json (COCO) or labels/ (YOLO)"
    head = "the detector's box and class predictors (model/detection/net.py head_of)"
    trains_on = "the detector's own loss terms (weights: box_loss_weights)"
    export_tolerance = 1e-3  # on the head's raw outputs (class logits, box offsets), before the decoding
    refused = {**IMAGE_LABEL_KEYS, "compile": "compiles a fixed-shape model"}

    def build_data(self, dst, **options):
        from data.boxes import build_boxes

        build_boxes(dst, **options)

    def preprocess(self, transform, image):
        """The evaluation transform also moves boxes: there are none to move."""
        return transform(image=image, bboxes=[], labels=[])["image"]

    def export_parts(self, model, params):
        """Backbone and head alone: decoding picks a data-dependent number of boxes (net.py DenseHeads)."""
        return self.part("net").export_parts(model, params)

    def forward(self, model, x, targets):
        """The detector computes its losses itself: it needs the boxes."""
        return model(x, targets)
