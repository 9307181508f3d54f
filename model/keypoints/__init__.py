"""Keypoint regression: K named (x, y) points per image. The machinery reads task.py; metrics.py and loss.py stay
torch-free."""
