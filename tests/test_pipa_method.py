"""The pipa / pipa_video methods: parameter-free deployment, the total objective, gradients of
each term reaching the encoder, video-only temporal term, memory in the checkpoint."""

import pytest
import torch

from pipa.core.tensors import read_scalars

from conftest import PRESET, tiny_overrides
from pipa.config import load_config
from pipa.engine.checkpoint import load_checkpoint
from pipa.engine.trainer import train
from pipa.methods import build_method
from pipa.models import build_segmentor, count_parameters


def _batch(B=4, H=32, W=64, clips=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    lab = torch.randint(0, 8, (B, H // 8, W // 8), generator=g).repeat_interleave(8, 1).repeat_interleave(8, 2)
    b = {"source": {"image": torch.rand(B, 3, H, W, generator=g), "label": lab},
         "target": {"image": torch.rand(B, 3, H, W, generator=g)}}
    if clips:
        b["target"]["prev_image"] = torch.rand(B, 3, H, W, generator=g)
        b["target"]["flow"] = torch.full((B, 2, H, W), 4.0)
        b["target"]["flow_valid"] = torch.ones(B, H, W, dtype=torch.bool)
    return b


def _method(name="pipa", *extra):
    cfg = load_config(PRESET, [f"method.name={name}", "model.dropout=0.0", "method.teacher.pseudo_threshold=0.0",
                               "method.pipa.pixel.target_threshold=0.0", "method.pipa.pixel.min_pixels=1", *extra])
    torch.manual_seed(0)
    return cfg, build_method(cfg, build_segmentor(cfg.model))


@pytest.mark.parametrize("base", ["self_training", "daformer", "mic"])
def test_exported_model_has_exactly_the_base_parameters(base):
    cfg, method = _method("pipa", f"method.pipa.base={base}")
    plain = build_segmentor(cfg.model)
    assert count_parameters(method.export_model()) == count_parameters(plain)
    assert set(method.export_model().state_dict()) == set(plain.state_dict())
    pix_head, patch_head = method.shared["pixel_embedding"].head, method.terms["patch_contrast"].head
    heads = count_parameters(pix_head) + count_parameters(patch_head)
    assert heads > 0  # the training-only heads exist, outside the exported model
    trained = {id(p) for g in method.param_groups(1e-3, 1.0) for p in g["params"]}
    assert all(id(p) in trained for p in [*pix_head.parameters(), *patch_head.parameters()])


def test_total_is_base_plus_weighted_terms():
    _, method = _method("pipa", "method.pipa.pixel.weight=0.3", "method.pipa.patch.weight=0.2")
    total, logs = method.step(_batch(), 5)
    logs = read_scalars(logs)
    base = logs["loss/source_ce"] + logs["loss/mix_ce"]
    assert logs["loss/pixel"] > 0 and logs["loss/patch"] > 0
    assert total.item() == pytest.approx(base + 0.3 * logs["loss/pixel"] + 0.2 * logs["loss/patch"], rel=1e-5)
    assert "memory/fill" in logs and logs["sampler/pixel/anchors"] > 0


def test_terms_respect_their_start_iteration():
    _, method = _method("pipa", "method.pipa.patch.start=10")
    _, logs = method.step(_batch(), 3)
    logs = read_scalars(logs)
    assert "loss/pixel" in logs and "loss/patch" not in logs
    _, logs = method.step(_batch(), 10)
    logs = read_scalars(logs)
    assert "loss/patch" in logs


@pytest.mark.parametrize("views", ["student_teacher", "student_student"])
def test_patch_term_gradient_reaches_the_encoder(views):
    """Published defect 1: patch contrast on teacher features only never trained the backbone."""
    _, method = _method("pipa", f"method.pipa.patch.views={views}")
    batch = _batch()
    ctx, _, _ = method.recipe(batch, 0, method.model, method.student)
    method.model.zero_grad(set_to_none=True)
    loss, logs = method.terms["patch_contrast"](ctx)
    assert logs["loss/patch"] == loss.item()
    loss.backward()
    grads = [p.grad for p in method.model.encoder.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for p in method.recipe.teacher.ema.parameters())


def test_pipa_video_adds_the_temporal_term_and_needs_clips():
    _, method = _method("pipa_video")
    total, logs = method.step(_batch(clips=True), 2)
    logs = read_scalars(logs)
    assert logs["loss/temporal"] > 0 and "sampler/temporal/flow_matched" in logs
    assert torch.isfinite(total)
    with pytest.raises(ValueError, match="clip"):
        method.step(_batch(), 2)
    # pipa on image data simply has no temporal term
    _, image = _method("pipa")
    _, logs = image.step(_batch(), 2)
    logs = read_scalars(logs)
    assert "loss/temporal" not in logs


def test_pipa_trains_and_checkpoints_the_memory(tmp_path):
    cfg = load_config(PRESET, tiny_overrides(tmp_path / "p", iterations=2, **{"method.name": "pipa"}))
    res = train(cfg, progress="none")
    assert 0 <= res.miou <= 100
    state = load_checkpoint(tmp_path / "p" / "checkpoint.pt")
    mem = "shared.pixel_embedding.memory."
    assert mem + "features" in state["method"] and int(state["method"][mem + "count"].sum()) > 0
    assert "shared.pixel_embedding.head_ema.ema.fc1.weight" in state["method"]
