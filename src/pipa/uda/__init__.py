"""Reusable self-training parts: EMA teacher, ClassMix, strong augmentation, rare class
sampling, masked image consistency, ImageNet feature distance, AdaBN."""
