"""The DINOv2 encoder (``transformers.Dinov2Backbone``): four maps at strides 4..32 for any input
size, weights from a local folder, and a full training step of PiPa++ on it."""

import pytest
import torch

from conftest import PRESET, tiny_overrides
from pipa.config import load_config
from pipa.models.encoders import build_encoder


@pytest.mark.parametrize("size", [(50, 100), (28, 42), (64, 64)])
@pytest.mark.parametrize("name,neck,widths", [("dinov2_tiny", "fpn", (8, 16, 32, 32)),
                                              ("dinov2_tiny", "resample", (32, 32, 32, 32)),
                                              ("dinov2reg_tiny", "fpn", (8, 16, 32, 32))])
def test_dinov2_maps_have_the_decoder_strides(size, name, neck, widths):
    """⌈H/s⌉ × ⌈W/s⌉ for s = 4, 8, 16, 32 whatever the input (padded to whole 14-pixel patches);
    the feature pyramid's widths are D/4, D/2, D, D (ViTDet), the plain resampling keeps D."""
    enc = build_encoder(name, vit_neck=neck)
    H, W = size
    maps = enc(torch.rand(2, 3, H, W))
    assert [tuple(m.shape) for m in maps] == [(2, c, -(-H // s), -(-W // s)) for c, s in zip(widths, (4, 8, 16, 32))]
    assert list(enc.channels) == list(widths)


def test_registers_backbone_has_its_register_tokens_and_loads_a_local_folder(tmp_path):
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    enc = build_encoder("dinov2reg_tiny")
    assert enc.vit.config.num_register_tokens == 4
    assert enc.vit.embeddings.register_tokens.shape[1] == 4
    torch.manual_seed(5)
    ref = Dinov2WithRegistersModel(Dinov2WithRegistersConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                                                             intermediate_size=128, patch_size=14, image_size=518,
                                                             num_register_tokens=4))
    ref.save_pretrained(tmp_path / "reg")
    enc = build_encoder("dinov2reg_tiny", pretrained=str(tmp_path / "reg"))
    want = ref.state_dict()["embeddings.register_tokens"]
    got = [v for k, v in enc.state_dict().items() if k.endswith("register_tokens")]
    assert len(got) == 1 and torch.equal(got[0], want)


def test_the_pyramid_is_trained_at_the_head_rate_and_gets_gradients():
    from pipa.config import ModelConfig, merge
    from pipa.models import build_segmentor

    model = build_segmentor(merge(ModelConfig(), {"backbone": "dinov2_tiny", "num_classes": 4, "decoder_channels": 16}))
    head_ids = {id(p) for p in model.head_parameters()}
    neck = list(model.encoder.neck.parameters())
    assert neck and all(id(p) in head_ids for p in neck)
    assert not any(id(p) in head_ids for p in model.encoder.vit.parameters())
    model(torch.rand(2, 3, 56, 84)).logits.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in neck)


def test_layer_decay_gives_each_block_its_rate():
    """optim.layer_decay = 0.5 on a 4-block ViT: block i at lr·0.5^(3-i), the stem (embeddings,
    tokens, final norm) at lr·0.5^4, head parameters at lr·head_lr_mult; the trainer's schedule keeps
    the factors (apply_optim_settings after a resume)."""
    from pipa.config import load_config
    from pipa.engine.trainer import apply_optim_settings
    from pipa.methods import build_method
    from pipa.models import build_segmentor

    cfg = load_config(PRESET, ["model.backbone=dinov2_tiny", "method.name=self_training", "optim.layer_decay=0.5",
                               "optim.lr=1.0", "optim.head_lr_mult=10"])
    method = build_method(cfg, build_segmentor(cfg.model))
    groups = method.param_groups(1.0, 10.0, 0.01, decay_norms=False, layer_decay=0.5)
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    head_ids = {id(p) for p in method.model.head_parameters()}
    for name, p in method.model.named_parameters():
        if id(p) in head_ids:
            want = 10.0
        elif ".encoder.layer." in name:
            want = 0.5 ** (3 - int(name.split(".encoder.layer.")[1].split(".")[0]))
        else:  # embeddings, register/cls/mask tokens, the final layernorm
            want = 0.5 ** 4
        assert lr_of[id(p)] == pytest.approx(want), name
    optim = torch.optim.AdamW(groups, lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(optim, lambda it: 1.0)
    for g in optim.param_groups:
        g["lr"] = 123.0  # a loaded optimiser state's rates
    apply_optim_settings(optim, sched, cfg)
    assert [g["lr"] for g in optim.param_groups] == pytest.approx([g["lr"] for g in groups])


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


def test_dinov2_pipa_presets_carry_vfm_udas_hyper_parameters():
    """gta2cs_dinov2_pipa (ViT-B) and gta2cs_dinov2l_pipa (ViT-L): the numbers of tue-mps/vfm-uda's
    uda_vit_vanilla.yaml / uda_vit_generic.py (lr 5e-5·sqrt(8) for the head, x0.1 for the encoder,
    40k iterations, batch 8, 1024 crops, warm-up 1500 from 1e-3, masking 0.7, EMA 0.999, τ 0.968,
    ignore margins 3/25/3/3 % of a 1024x2048 frame)."""
    import math

    from conftest import ROOT

    for name, backbone, hub in (("gta2cs_dinov2_pipa", "dinov2_base", "facebook/dinov2-base"),
                                ("gta2cs_dinov2l_pipa", "dinov2_large", "facebook/dinov2-large")):
        cfg = load_config(ROOT / "src" / "pipa" / "configs" / f"{name}.yaml")
        assert (cfg.model.backbone, cfg.model.pretrained, cfg.model.vit_neck) == (backbone, hub, "fpn")
        assert cfg.method.name == "pipa" and cfg.method.pipa.base == "mic"
        assert cfg.optim.lr * cfg.optim.head_lr_mult == pytest.approx(5e-5 * math.sqrt(8), rel=1e-4)
        assert cfg.optim.lr == pytest.approx(0.1 * 5e-5 * math.sqrt(8), rel=1e-4)
        assert (cfg.optim.weight_decay, cfg.optim.warmup_iters, cfg.optim.warmup_ratio, cfg.optim.poly_power) == \
            (0.01, 1500, 1e-3, 1.0)
        assert cfg.optim.layer_decay == 1.0 and cfg.train.iterations == 40000 and cfg.data.batch_size == 8
        assert cfg.data.source.crop == [1024, 1024] and cfg.data.target.crop == [1024, 1024]
        assert cfg.data.target.pseudo_margins == [int(0.03 * 1024), int(0.25 * 1024), int(0.03 * 2048),
                                                  int(0.03 * 2048)]
        assert (cfg.method.mic.mask_ratio, cfg.method.teacher.alpha, cfg.method.teacher.pseudo_threshold) == \
            (0.7, 0.999, 0.968)
        assert cfg.method.fd.weight == 0.0


def test_dinov2_preset_is_the_daformer_recipe_with_vit_large():
    from conftest import ROOT

    cfg = load_config(ROOT / "src" / "pipa" / "configs" / "gta2cs_daformer_dinov2.yaml")
    assert cfg.model.backbone == "dinov2_large" and cfg.model.pretrained == "facebook/dinov2-large"
    assert cfg.method.name == "daformer" and cfg.optim.lr == 6e-5 and cfg.data.source.crop == [512, 512]


def test_dinov2_segmentor_exports(tmp_path):
    """``torch.export`` of a DINOv2 + pyramid segmentor: the saved graph gives the model's logits."""
    from pipa.config import ModelConfig, merge
    from pipa.models import build_segmentor
    from pipa.models.program import export_program

    torch.manual_seed(0)
    model = build_segmentor(merge(ModelConfig(), {"backbone": "dinov2_tiny", "num_classes": 4,
                                                  "decoder_channels": 16})).eval()
    done = export_program(model, tmp_path, 70, 98)
    x = torch.rand(3, 3, 70, 98)
    got = torch.export.load(str(done.paths[0])).module()(x)
    with torch.no_grad():
        want = model(x).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert done.dynamic_size or done.why  # a fixed-size graph says why
