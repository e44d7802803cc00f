"""The bottom layer: constants, distributed helpers, atomic file writing and RNG state.

Everything else may import from here; ``pipa.core`` imports nothing of pipa's."""

from .constants import IGNORE_INDEX

__all__ = ["IGNORE_INDEX"]
