import pytest
import torch

from pipa.config import ModelConfig
from pipa.models import Segmentor, build_segmentor, count_parameters


@pytest.mark.parametrize("kw", [
    dict(backbone="conv_small", decoder="daformer", decoder_channels=16, aspp_dilations=[1, 2]),
    dict(backbone="conv_small", decoder="daformer", decoder_channels=16, aspp_separable=False, aspp_squeeze=True, bottleneck_kernel=1),
    dict(backbone="conv_small", decoder="mlp", decoder_channels=16),
    dict(backbone="mit_tiny", decoder="daformer", decoder_channels=16),
])
def test_forward_shapes(kw):
    m = build_segmentor(ModelConfig(num_classes=5, **kw))
    out = m(torch.rand(2, 3, 64, 96))
    assert out.logits.shape == (2, 5, 64, 96)
    assert out.features.shape == (2, 16, 16, 24)  # fused map F at stride 4
    pred = m.predict(torch.rand(1, 3, 64, 96))
    assert pred.shape == (1, 64, 96) and pred.dtype == torch.int64
    assert m.training  # predict restores the mode


def test_save_load_roundtrip(tmp_path):
    cfg = ModelConfig(num_classes=3, decoder_channels=16, aspp_dilations=[1, 2])
    m = build_segmentor(cfg, ["a", "b", "c"]).eval()
    x = torch.rand(1, 3, 32, 64)
    m.save_pretrained(tmp_path / "w")
    assert {p.name for p in (tmp_path / "w").iterdir()} == {"model.safetensors", "config.json"}
    m2 = Segmentor.from_pretrained(tmp_path / "w").eval()
    assert m2.class_names == ["a", "b", "c"]
    assert torch.equal(m(x).logits, m2(x).logits)
    assert count_parameters(m) == count_parameters(m2)


def test_mit_from_local_pretrained_folder(tmp_path):
    """The real loading path (SegformerModel.from_pretrained) on a random-weight local folder."""
    from transformers import SegformerConfig, SegformerModel

    from pipa.models.encoders import MIT_PRESETS

    ref = SegformerModel(SegformerConfig(**MIT_PRESETS["mit_tiny"]))
    ref.save_pretrained(tmp_path / "mit")
    m = build_segmentor(ModelConfig(backbone="mit_tiny", pretrained=str(tmp_path / "mit"), decoder_channels=16))
    for (k, v), (k2, v2) in zip(ref.state_dict().items(), m.encoder.mit.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)


def test_missing_pretrained_is_one_clear_error(tmp_path):
    with pytest.raises(RuntimeError, match="cannot load MiT weights from"):
        build_segmentor(ModelConfig(backbone="mit_b0", pretrained=str(tmp_path / "nothing-here")))


def test_unknown_backbone():
    with pytest.raises(ValueError, match="model.backbone"):
        build_segmentor(ModelConfig(backbone="resnet9000"))


def test_from_pretrained_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        Segmentor.from_pretrained(tmp_path)
