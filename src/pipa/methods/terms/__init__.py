"""Terms: additional objectives on top of a base recipe, each a small module (see ``base.py``).

``TERMS`` maps a term name to its builder ``(cfg, model, shared, weight, start) -> Term``. The
built-in ones read their settings from their config section:

| name                 | objective (paper symbol)                       | settings             |
|----------------------|------------------------------------------------|----------------------|
| feature_distance     | DAFormer ImageNet feature distance (λ_fd)      | ``method.fd``        |
| masked_consistency   | MIC masked image consistency (λ_mic)           | ``method.mic``       |
| pixel_contrast       | PiPa++ L_pix                                   | ``method.pipa.pixel``|
| patch_contrast       | PiPa++ L_patch                                 | ``method.pipa.patch``|
| temporal_contrast    | PiPa++ L_temp (target clips)                   | ``method.pipa.temporal`` |

A new term: write a :class:`Term` subclass and call :func:`register_term` (``docs/architecture.md``).
"""

from __future__ import annotations

from typing import Callable

from ... import config as config_module
from ...config import Config
from ...models import Segmentor
from .base import Logs, SharedModule, SharedModules, Term
from .distance import FeatureDistanceTerm
from .embedding import PixelEmbedding
from .masking import MaskedConsistencyTerm
from .patch import PatchContrastTerm
from .pixel import PixelContrastTerm
from .temporal import TemporalContrastTerm

TermBuilder = Callable[[Config, Segmentor, SharedModules, float, int], Term]
TERMS: dict[str, TermBuilder] = {}


def register_term(name: str, builder: TermBuilder) -> None:
    """Make ``name`` a term that ``method.terms`` may list (and that methods can build)."""
    TERMS[name] = builder
    config_module.KNOWN_TERMS.add(name)


def pixel_embedding(cfg: Config, model: Segmentor, shared: SharedModules) -> PixelEmbedding:
    """The shared ``h_pix`` + EMA + memory, created on first use."""
    p = cfg.method.pipa

    def make() -> PixelEmbedding:
        return PixelEmbedding(model.cfg.decoder_channels, p.embed_dim, p.hidden_dim or None, model.num_classes,
                              cfg.method.teacher, p.memory, p.pixel.target_threshold)

    emb = shared.get_or_create("pixel_embedding", make)
    assert isinstance(emb, PixelEmbedding)
    return emb


def _patch(cfg: Config, model: Segmentor, shared: SharedModules, weight: float, start: int) -> Term:
    p = cfg.method.pipa
    return PatchContrastTerm(model.cfg.decoder_channels, p.embed_dim, p.hidden_dim or None, p.patch,
                             cfg.method.teacher, model.num_classes, weight, start)


register_term("feature_distance", lambda cfg, model, shared, w, s: FeatureDistanceTerm(model, cfg.method.fd, w, s))
register_term("masked_consistency", lambda cfg, model, shared, w, s: MaskedConsistencyTerm(cfg.method.mic, w, s))
register_term("pixel_contrast", lambda cfg, model, shared, w, s: PixelContrastTerm(
    pixel_embedding(cfg, model, shared), cfg.method.pipa.pixel, model.num_classes, w, s))
register_term("patch_contrast", _patch)
register_term("temporal_contrast", lambda cfg, model, shared, w, s: TemporalContrastTerm(
    pixel_embedding(cfg, model, shared), cfg.method.pipa.temporal, cfg.method.pipa.pixel, model.num_classes, w, s))

__all__ = ["TERMS", "FeatureDistanceTerm", "Logs", "MaskedConsistencyTerm", "PatchContrastTerm", "PixelContrastTerm",
           "PixelEmbedding", "SharedModule", "SharedModules", "TemporalContrastTerm", "Term", "pixel_embedding", "register_term"]
