"""Semantic segmentation: a class index per pixel. task.py is what the machinery calls; data_loader.py, net.py,
loss.py, metrics.py and report.py are what you edit. Nothing is imported here, so reading metrics.py and loss.py
stays cheap."""
