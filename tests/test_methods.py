import pytest
import torch

from pipa.core.tensors import read_scalars
import torch.nn.functional as F

from conftest import PRESET, tiny_overrides
from pipa.config import load_config
from pipa.engine.trainer import train
from pipa.methods import build_method
from pipa.models import build_segmentor, count_parameters


def _batch(K=8, B=2, H=32, W=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "source": {"image": torch.rand(B, 3, H, W, generator=g), "label": torch.randint(0, K, (B, H, W), generator=g)},
        "target": {"image": torch.rand(B, 3, H, W, generator=g)},
    }


@pytest.mark.parametrize("name", ["self_training", "daformer", "mic"])
def test_loss_is_sum_of_parts(name):
    cfg = load_config(PRESET, [f"method.name={name}", "model.dropout=0.0", "method.fd.weight=0.5",
                                 "method.mic.weight=0.7", "method.teacher.pseudo_threshold=0.0"])  # q = 1: every term non-zero
    torch.manual_seed(0)
    method = build_method(cfg, build_segmentor(cfg.model))
    with torch.no_grad():  # move the student away from the frozen initial encoder (FD > 0)
        for p in method.model.encoder.parameters():
            p.add_(0.05 * torch.randn_like(p))
    batch = _batch()
    batch["source"]["label"][:, :, : 32] = 5  # a thing class filling whole feature cells (FD)
    total, logs = method.step(batch, iteration=3)
    logs = read_scalars(logs)
    # the source term recomputed independently: a plain CE of the student on the source batch
    # (BN in train mode on the same batch gives the same forward)
    src_ce = F.cross_entropy(method.model(batch["source"]["image"]).logits, batch["source"]["label"])
    assert logs["loss/source_ce"] == pytest.approx(src_ce.item(), rel=1e-5)
    # logs hold each term unweighted; the total weighs them (λ_fd = 0.5, λ_mic = 0.7)
    parts = (src_ce.item() + logs["loss/mix_ce"] + 0.5 * logs.get("loss/feature_distance", 0)
             + 0.7 * logs.get("loss/mic_ce", 0))
    assert total.item() == pytest.approx(parts, rel=1e-5)
    if name != "self_training":
        assert logs["loss/feature_distance"] > 0
    if name == "mic":
        assert logs["loss/mic_ce"] > 0
    assert 0 <= logs["pseudo/weight"] <= 1


def test_step_does_not_touch_gradients_and_teacher_follows_student():
    cfg = load_config(PRESET, ["method.name=self_training"])
    method = build_method(cfg, build_segmentor(cfg.model))
    total, _ = method.step(_batch(), 0)
    assert all(p.grad is None for p in method.model.parameters())  # no backward inside
    total.backward()
    with torch.no_grad():
        for p in method.model.parameters():
            p.add_(1.0)
    method.after_step(0)  # α_0 = 0: the teacher becomes the student
    for pt, ps in zip(method.recipe.teacher.ema.parameters(), method.model.parameters()):
        assert torch.equal(pt, ps)
    # the deployable model has exactly the segmentor's parameters
    assert count_parameters(method.export_model()) == count_parameters(build_segmentor(cfg.model))


@pytest.mark.parametrize("name", ["self_training", "mic", "source_only_aug"])
def test_methods_train_end_to_end(tmp_path, name):
    cfg = load_config(PRESET, tiny_overrides(tmp_path / name, iterations=3, **{"method.name": name,
                                                                                "train.debug_interval": 3}))
    res = train(cfg, progress="none")
    assert res.iterations == 3
    if name != "source_only_aug":
        assert len(list((tmp_path / name / "debug").glob("*.png"))) == 1
