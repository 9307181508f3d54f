"""The tasks this template trains, one line each: the `task` params key picks one.

A task is a package of model/ whose task.py subclasses model/task.py's Task (adding one: docs/extending.md).
Importing this module registers them in core/tasks.py, where the
machinery looks a task up (every script imports it first); it imports no torch: params validation, the search and
the result tables read the tasks' facts (metrics, loss terms, defaults) cheaply.
"""

from core.tasks import register

REGISTRY = (  # one line per task: model/<name>/task.py and its Task subclass
    "model.classification.task.Classification",
    "model.segmentation.task.Segmentation",
    "model.keypoints.task.Keypoints",
    "model.detection.task.Detection",
    "model.multilabel.task.Multilabel",
)

register(*REGISTRY)
