"""UDA methods: a base recipe (``recipes``) plus weighted terms (``terms``), composed by
``build_method(cfg, model)`` into a :class:`UDAMethod` with ``step(batch, iteration) -> (loss, logs)``.
The recipe fills a typed :class:`StepContext` that the terms read."""

from __future__ import annotations

from .build import METHODS, build_method, method_terms
from .context import Batch, StepContext
from .method import UDAMethod
from .recipes import Recipe, SelfTraining, SourceOnly
from .terms import TERMS, SharedModule, Term, register_term

__all__ = ["METHODS", "TERMS", "Batch", "Recipe", "SelfTraining", "SharedModule", "SourceOnly", "StepContext", "Term",
           "UDAMethod", "build_method", "method_terms", "register_term"]
