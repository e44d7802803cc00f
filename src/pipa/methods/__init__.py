"""UDA methods (orchestrators). ``build_method(cfg, model)`` picks one by ``cfg.method.name``."""

from __future__ import annotations

import difflib
from functools import partial
from typing import Callable

from ..config import Config, ConfigError
from ..models import Segmentor
from .base import UDAMethod
from .pipa import build_pipa
from .self_training import MIC, DAFormer, SelfTraining
from .source_only import SourceOnly, SourceOnlyAug

METHODS: dict[str, Callable[[Config, Segmentor], UDAMethod]] = {
    "source_only": SourceOnly,
    "source_only_aug": SourceOnlyAug,
    "oracle": SourceOnly,  # same loss; the config points data.source at labelled target data
    "self_training": SelfTraining,
    "daformer": DAFormer,
    "mic": MIC,
    "pipa": partial(build_pipa, clips=False),  # base recipe (method.pipa.base) + PiPa++ terms
    "pipa_video": partial(build_pipa, clips=True),  # the same, requiring target clips (L_temp)
}


def build_method(cfg: Config, model: Segmentor) -> UDAMethod:
    name = cfg.method.name
    if name not in METHODS:
        near = difflib.get_close_matches(name, list(METHODS), n=1)
        hint = f" (did you mean '{near[0]}'?)" if near else ""
        raise ConfigError(f"unknown config value method.name='{name}'{hint}; choose from {', '.join(METHODS)}")
    return METHODS[name](cfg, model)


__all__ = ["METHODS", "UDAMethod", "build_method"]
