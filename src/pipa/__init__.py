"""pipa: unsupervised domain adaptive semantic segmentation (PiPa++), for images and video."""

__version__ = "0.1.0"
