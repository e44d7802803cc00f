"""PiPa++ self-supervised terms (training only): losses, samplers (miners), memory, heads, views.

- ``losses``: :class:`PixelContrastLoss`, :class:`PatchContrastLoss`, :class:`TemporalContrastLoss`
- ``samplers``: task-smart sampling, :class:`ImageSampler`, :class:`VideoSampler`, :class:`PatchSampler`
- ``memory``: :class:`SemanticMemory`, class-wise FIFO queues
- ``heads``: :class:`ProjectionHead`
- ``views``: crop geometry, label pooling, flow warping
"""

from .heads import ProjectionHead
from .losses import PatchContrastLoss, PixelContrastLoss, TemporalContrastLoss
from .memory import SemanticMemory, all_gather_rows
from .samplers import ImageSampler, PatchSample, PatchSampler, Sample, VideoSampler, class_balanced, pair_counts
from .views import (Box, block_ids, box_iou, flow_to_cells, overlap_cells, pool_labels, sample_boxes, sample_view_pair,
                    warp_backward)

__all__ = [
    "Box", "ImageSampler", "PatchContrastLoss", "PatchSample", "PatchSampler", "PixelContrastLoss", "ProjectionHead", "Sample", "SemanticMemory",
    "TemporalContrastLoss", "VideoSampler", "all_gather_rows", "block_ids", "box_iou", "class_balanced", "flow_to_cells",
    "overlap_cells", "pair_counts", "pool_labels", "sample_boxes", "sample_view_pair", "warp_backward",
]
