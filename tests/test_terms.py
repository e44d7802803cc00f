"""Composition: a method is a recipe plus weighted terms. The example term of docs/architecture.md
(entropy minimisation) is added by writing one module and one config entry, and trains."""

import math

import pytest
import torch

from pipa.core.tensors import read_scalars
import torch.nn.functional as F

from conftest import PRESET, tiny_overrides
from pipa.config import ConfigError, load_config
from pipa.engine.trainer import train
from pipa.methods import METHODS, StepContext, Term, build_method, register_term
from pipa.models import build_segmentor, count_parameters


# -- the docs' example term, verbatim -------------------------------------------------------------
class EntropyTerm(Term):
    """Entropy minimisation (ADVENT) on the student's prediction of the mixed image:
    ``L_ent = mean_p  -Σ_k p_k log p_k``."""

    name = "entropy"

    def applies(self, ctx: StepContext) -> bool:
        return ctx.out_mixed is not None and super().applies(ctx)

    def forward(self, ctx: StepContext) -> tuple[torch.Tensor, dict[str, float]]:
        p = ctx.out_mixed.logits.float().softmax(1)
        loss = -(p * p.clamp_min(1e-12).log()).sum(1).mean()
        return loss, {"loss/entropy": loss.detach()}  # logs stay on the device


register_term("entropy", lambda cfg, model, shared, weight, start: EntropyTerm(weight, start))
# ------------------------------------------------------------------------------------------------


def _batch(B=2, H=32, W=64):
    g = torch.Generator().manual_seed(0)
    return {"source": {"image": torch.rand(B, 3, H, W, generator=g), "label": torch.randint(0, 8, (B, H, W), generator=g)},
            "target": {"image": torch.rand(B, 3, H, W, generator=g)}}


def test_example_term_adds_its_weighted_loss_on_any_base():
    for base in ("self_training", "mic"):
        cfg = load_config(PRESET, [f"method.name={base}", "model.dropout=0.0",
                                   "method.terms=[{name: entropy, weight: 0.3, start: 2}]"])
        torch.manual_seed(0)
        method = build_method(cfg, build_segmentor(cfg.model))
        assert list(method.terms)[-1] == "entropy"
        _, logs = method.step(_batch(), 1)
        logs = read_scalars(logs)
        assert "loss/entropy" not in logs  # before its start iteration
        total, logs = method.step(_batch(), 2)
        logs = read_scalars(logs)
        # oracle: the entropy of a plain student forward on the same mixed image, by hand
        probs = F.softmax(method.model(method.debug["mixed"]).logits, 1)
        by_hand = float(sum(-(q * math.log(q)) for q in probs.permute(0, 2, 3, 1).reshape(-1).tolist() if q > 0))
        by_hand /= probs.shape[0] * probs.shape[2] * probs.shape[3]
        assert logs["loss/entropy"] == pytest.approx(by_hand, rel=1e-4)
        others = sum(float(v) for k, v in logs.items() if k in ("loss/source_ce", "loss/mix_ce"))
        others += cfg.method.fd.weight * float(logs.get("loss/feature_distance", 0.0))
        others += cfg.method.mic.weight * float(logs.get("loss/mic_ce", 0.0))
        assert total.item() == pytest.approx(others + 0.3 * by_hand, rel=1e-5)


def test_example_term_trains_and_leaves_the_exported_model_alone(tmp_path):
    cfg = load_config(PRESET, tiny_overrides(tmp_path / "e", iterations=3, **{
        "method.name": "self_training", "method.terms": "[{name: entropy, weight: 0.1}]"}))
    res = train(cfg, progress="none")
    assert res.iterations == 3 and 0 <= res.miou <= 100
    from pipa.models import Segmentor

    exported = Segmentor.from_pretrained(tmp_path / "e")
    assert count_parameters(exported) == count_parameters(build_segmentor(cfg.model))


def test_pipa_terms_plug_into_mic_without_a_new_class():
    cfg = load_config(PRESET, ["method.name=mic", "method.terms=[{name: pixel_contrast, weight: 0.1},"
                                                   " {name: patch_contrast, weight: 0.1}]"])
    method = build_method(cfg, build_segmentor(cfg.model))
    assert type(method).__name__ == "UDAMethod"
    assert list(method.terms) == ["feature_distance", "masked_consistency", "pixel_contrast", "patch_contrast"]
    assert method.rare_class_sampling
    as_pipa = build_method(load_config(PRESET, ["method.name=pipa", "method.pipa.base=mic",
                                                "method.pipa.temporal.weight=0"]), build_segmentor(cfg.model))
    assert list(as_pipa.terms) == list(method.terms)


def test_a_term_of_the_method_cannot_be_added_twice():
    cfg = load_config(PRESET, ["method.name=mic", "method.terms=[{name: masked_consistency}]"])
    with pytest.raises(ConfigError, match="already a term of method 'mic'"):
        build_method(cfg, build_segmentor(cfg.model))


def test_zero_weight_terms_are_not_built():
    cfg = load_config(PRESET, ["method.name=pipa", "method.pipa.patch.weight=0", "method.pipa.temporal.weight=0"])
    method = build_method(cfg, build_segmentor(cfg.model))
    assert list(method.terms) == ["pixel_contrast"] and list(method.shared) == ["pixel_embedding"]


@pytest.mark.parametrize("name", METHODS)
def test_every_method_name_builds(name):
    cfg = load_config(PRESET, [f"method.name={name}"])
    method = build_method(cfg, build_segmentor(cfg.model))
    assert method.export_model() is method.model
    assert method.uses_target == (name not in ("source_only", "source_only_aug", "oracle"))
