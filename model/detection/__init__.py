"""Object detection: boxes and classes per image. The machinery reads task.py; metrics.py and loss.py stay
torch-free."""
