"""The DINOv2 encoder (``transformers.Dinov2Backbone``): four maps at strides 4..32 for any input
size, weights from a local folder, and a full training step of PiPa++ on it."""

import pytest
import torch

from conftest import PRESET, tiny_overrides
from pipa.config import load_config
from pipa.models.encoders import build_encoder


@pytest.mark.parametrize("size", [(50, 100), (28, 42), (64, 64)])
def test_dinov2_maps_have_the_decoder_strides(size):
    """⌈H/s⌉ × ⌈W/s⌉ for s = 4, 8, 16, 32 whatever the input (padded to whole 14-pixel patches)."""
    enc = build_encoder("dinov2_tiny")
    H, W = size
    maps = enc(torch.rand(2, 3, H, W))
    assert [tuple(m.shape) for m in maps] == [(2, 32, -(-H // s), -(-W // s)) for s in (4, 8, 16, 32)]


def test_dinov2_weights_load_from_a_local_folder(tmp_path):
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(3)
    ref = Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=128,
                                   patch_size=14, image_size=518))
    ref.save_pretrained(tmp_path / "dino")
    enc = build_encoder("dinov2_tiny", pretrained=str(tmp_path / "dino"))
    want = ref.state_dict()["embeddings.patch_embeddings.projection.weight"]
    got = [v for k, v in enc.state_dict().items() if k.endswith("patch_embeddings.projection.weight")]
    assert len(got) == 1 and torch.equal(got[0], want)
    with pytest.raises(RuntimeError, match="cannot load DINOv2 weights"):
        build_encoder("dinov2_tiny", pretrained=str(tmp_path / "nowhere"))


def test_pipa_trains_on_dinov2(tmp_path):
    from pipa.engine.trainer import train

    cfg = load_config(PRESET, [*tiny_overrides(tmp_path / "run", iterations=2), "method.name=pipa",
                               "model.backbone=dinov2_tiny", "method.pipa.patch.start=0"])
    res = train(cfg, progress="none")
    assert res.iterations == 2 and 0 <= res.miou <= 100


def test_dinov2_preset_is_the_daformer_recipe_with_vit_large():
    from conftest import ROOT

    cfg = load_config(ROOT / "src" / "pipa" / "configs" / "gta2cs_daformer_dinov2.yaml")
    assert cfg.model.backbone == "dinov2_large" and cfg.model.pretrained == "facebook/dinov2-large"
    assert cfg.method.name == "daformer" and cfg.optim.lr == 6e-5 and cfg.data.source.crop == [512, 512]
