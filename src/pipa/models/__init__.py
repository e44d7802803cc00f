"""Segmentation models: encoders (conv, MiT), decoders (DAFormer, MLP) and the segmentor."""

from .segmentor import SegOutput, Segmentor, build_segmentor, count_parameters

__all__ = ["SegOutput", "Segmentor", "build_segmentor", "count_parameters"]
