"""Keypoints (`"task": "keypoints"`): K named (x, y) points per image; the point names play the part of classes
(n_clas is K).

    DATA_DIR/{train,valid,test}/images/NAME.png + keypoints.json (or keypoints.csv): see data_loader.py
"""

from model.task import IMAGE_LABEL_KEYS, Task


class Keypoints(Task):
    name, data, arch, monitor = "keypoints", "data/digit_points", "heatmap_unet", "point_error"
    overfit_metric, split_layout, classes_are = "pck", "images/ and keypoints.json", "points"
    head = "a heatmap head (heatmap_unet) or a final nn.Linear (torchvision)"
    trains_on = "point_loss (smooth_l1, l1 or mse) over the labelled points"
    refused = IMAGE_LABEL_KEYS

    def build_data(self, dst, **options):
        from data.points import build_points

        build_points(dst, **options)
