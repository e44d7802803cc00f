"""UDA methods (orchestrators). ``build_method(cfg, model)`` picks one by ``cfg.method.name``."""

from __future__ import annotations

import difflib

from ..config import Config, ConfigError
from ..models import Segmentor
from .base import UDAMethod
from .self_training import MIC, DAFormer, SelfTraining
from .source_only import SourceOnly, SourceOnlyAug

METHODS: dict[str, type[UDAMethod]] = {
    "source_only": SourceOnly,
    "source_only_aug": SourceOnlyAug,
    "oracle": SourceOnly,  # same loss; the config points data.source at labelled target data
    "self_training": SelfTraining,
    "daformer": DAFormer,
    "mic": MIC,
}


def build_method(cfg: Config, model: Segmentor) -> UDAMethod:
    name = cfg.method.name
    if name not in METHODS:
        near = difflib.get_close_matches(name, list(METHODS), n=1)
        hint = f" (did you mean '{near[0]}'?)" if near else ""
        raise ConfigError(f"unknown config value method.name='{name}'{hint}; choose from {', '.join(METHODS)}")
    return METHODS[name](cfg, model)


__all__ = ["METHODS", "UDAMethod", "build_method"]
