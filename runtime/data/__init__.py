"""Bundled data: the demo model, photos and ImageNet labels."""
