"""HRDA (``models/hrda.py``, ``model.hrda``) against independent oracles: the reference's crop rule,
hand computations of the fusion and the loss, a translation-equivariant model for sliding windows,
and the published recipe's values (``shared/reference/hrda.md``, lhoyer/HRDA configs)."""

import pytest
import torch
import torch.nn.functional as F

from conftest import PRESET, ROOT, tiny_overrides
from pipa.config import load_config
from pipa.core.constants import IGNORE_INDEX as IGN
from pipa.models import build_segmentor, count_parameters
from pipa.models.hrda import Detail, ScaleAttentionHead, draw_box, fuse, seg_loss, slide

CONFIGS = ROOT / "src" / "pipa" / "configs"
TINY_HRDA = ["model.hrda.enabled=true", "model.hrda.detail_crop=[32,64]", "model.hrda.attention_channels=16"]


@pytest.mark.parametrize("size,crop,d", [((1024, 1024), (512, 512), 8), ((96, 192), (48, 96), 8), ((64, 64), (64, 64), 8)])
def test_detail_box_offsets_follow_the_reference_rule(size, crop, d):
    """lhoyer/HRDA get_crop_bbox: offset = randint(0, (margin + 1) // d) * d; a crop as large as the
    image is the image."""
    g = torch.Generator().manual_seed(0)
    seen_y, seen_x = set(), set()
    for _ in range(3000):
        y1, y2, x1, x2 = draw_box(*size, crop, d, g)
        assert (y2 - y1, x2 - x1) == crop and y1 % d == 0 and x1 % d == 0
        seen_y.add(y1)
        seen_x.add(x1)
    want_y = {k * d for k in range(max(1, (size[0] - crop[0] + 1) // d))}
    want_x = {k * d for k in range(max(1, (size[1] - crop[1] + 1) // d))}
    assert seen_y == want_y and seen_x == want_x


def test_fusion_equals_a_hand_computation():
    """Constant context logits c and attention a (bilinear upsampling keeps constants): fused =
    a·HR + (1 − a)·c over the whole input; with a crop, inside it (away from its one-cell blurred
    edge) the same, far outside it c alone."""
    g = torch.Generator().manual_seed(0)
    K, a = 3, 0.3
    c = torch.tensor([1.0, -2.0, 0.5]).view(1, K, 1, 1)
    lr = c.expand(2, K, 8, 12).clone()
    att = torch.full((2, K, 8, 12), a)
    hr_full = torch.randn(2, K, 16, 24, generator=g)
    torch.testing.assert_close(fuse(lr, att, hr_full, None, (16, 24)), a * hr_full + (1 - a) * c)
    box = (4, 12, 8, 20)  # detail-grid cells: (y1, y2, x1, x2), even (context cells 2..6, 4..10)
    hr = torch.randn(2, K, 8, 12, generator=g)
    out = fuse(lr, att, hr, box, (16, 24))
    torch.testing.assert_close(out[..., 5:11, 9:19], a * hr[..., 1:7, 1:11] + (1 - a) * c.expand(2, K, 6, 10))
    torch.testing.assert_close(out[..., :2, :], c.expand(2, K, 2, 24))
    torch.testing.assert_close(out[..., :, 22:], c.expand(2, K, 16, 2))


def test_detail_crop_lands_on_its_own_cells():
    """A known shift: with the context at 0 and full attention, the fused map inside the crop is the
    detail prediction moved by the crop's offset (a one-cell error would move a ramp)."""
    K = 2
    ramp = torch.arange(8 * 12, dtype=torch.float32).view(1, 1, 8, 12).expand(1, K, 8, 12)
    lr, att = torch.zeros(1, K, 8, 12), torch.ones(1, K, 8, 12)
    box = (6, 14, 4, 16)
    out = fuse(lr, att, ramp[..., :8, :12], box, (16, 24))
    torch.testing.assert_close(out[..., 7:13, 5:15], ramp[..., 1:7, 1:11])


def test_sliding_windows_of_a_translation_equivariant_model_equal_its_whole_output():
    """A model made of a stride-4 average pool and a 1x1 conv commutes with 4-pixel shifts: the
    windows (crop / 2 apart, the last one flush with the border) averaged where they overlap give
    its whole-image output on every cell."""
    g = torch.Generator().manual_seed(1)
    conv = torch.nn.Conv2d(3, 5, 1)

    def branch(x):
        f = F.avg_pool2d(x, 4)
        return conv(f), f

    images = torch.rand(2, 3, 64, 104, generator=g)
    logits, feats = slide(branch, images, (32, 48), (16, 26))
    want_l, want_f = branch(images)
    torch.testing.assert_close(logits, want_l)
    torch.testing.assert_close(feats, want_f)


def test_hrda_loss_is_point_nine_fused_plus_point_one_detail_on_the_crop_labels():
    g = torch.Generator().manual_seed(2)
    fused = torch.randn(1, 3, 8, 8, generator=g)
    det = torch.randn(1, 3, 4, 4, generator=g)
    labels = torch.randint(0, 3, (1, 8, 8), generator=g)
    labels[0, 0, 0] = IGN
    box = (2, 6, 4, 8)

    def ce(lg, lb, w):
        return F.cross_entropy(lg, lb, ignore_index=IGN)

    got = seg_loss(fused, Detail(det, box), labels, None, 0.1, ce)
    want = 0.9 * F.cross_entropy(fused, labels, ignore_index=IGN) + 0.1 * F.cross_entropy(det, labels[:, 2:6, 4:8])
    torch.testing.assert_close(got, want)
    assert seg_loss(fused, None, labels, None, 0.1, ce) == F.cross_entropy(fused, labels, ignore_index=IGN)


def test_the_deployed_hrda_model_is_the_segmentor_plus_the_attention_head():
    """Parameter count = the single-resolution segmentor + HRDA's attention head, and nothing of
    PiPa++ (its heads, memory and the teacher stay in training); the saved weights reload to the
    same predictions."""
    from pipa.methods import build_method
    from pipa.models import Segmentor

    cfg = load_config(PRESET, ["method.name=pipa", *TINY_HRDA])
    plain = load_config(PRESET, ["method.name=pipa"])
    model = build_segmentor(cfg.model)
    method = build_method(cfg, model)
    head = ScaleAttentionHead(model.encoder.channels, 16, cfg.model.num_classes, cfg.model.dropout)
    exported = method.export_model()
    assert count_parameters(exported) == count_parameters(build_segmentor(plain.model)) + count_parameters(head)
    assert count_parameters(method) > count_parameters(exported) + count_parameters(method.recipe.teacher.ema)


def test_saved_hrda_model_reloads_to_the_same_prediction(tmp_path):
    from pipa.models import Segmentor

    cfg = load_config(PRESET, TINY_HRDA)
    torch.manual_seed(0)
    model = build_segmentor(cfg.model).eval()
    x = torch.rand(1, 3, 64, 128)
    model.save_pretrained(tmp_path)
    again = Segmentor.from_pretrained(tmp_path).eval()
    assert again.hrda and torch.equal(model.predict(x), again.predict(x))


def test_pseudo_label_margins_mask_only_the_frame_border():
    """croppl v2: the margins belong to the frame, so a crop inside the frame keeps all its
    pseudo-labels and a crop at the border loses the border rows and columns only."""
    from pipa.data.benchmarks import _random_crop, margin_mask

    m = margin_mask((20, 30), (2, 5, 1, 3))
    want = torch.zeros(20, 30, dtype=torch.bool)
    want[2:15, 1:27] = True
    assert torch.equal(m, want)
    item = {"image": torch.zeros(3, 20, 30), "valid_pseudo": m}
    for seed in range(30):
        crop = _random_crop(item, (8, 10), generator=torch.Generator().manual_seed(seed))
        assert crop["valid_pseudo"].shape == (8, 10)
    inner = {k: v[..., 4:12, 5:15] for k, v in item.items()}
    assert inner["valid_pseudo"].all()


def test_recipe_zeroes_pseudo_weights_outside_the_valid_margin():
    from pipa.methods import build_method

    cfg = load_config(PRESET, ["method.name=self_training", "method.teacher.pseudo_threshold=0.0"])  # q = 1
    torch.manual_seed(0)
    m = build_method(cfg, build_segmentor(cfg.model))
    g = torch.Generator().manual_seed(0)
    valid = torch.ones(2, 32, 64, dtype=torch.bool)
    valid[:, :5] = False
    batch = {"source": {"image": torch.rand(2, 3, 32, 64, generator=g), "label": torch.randint(0, 8, (2, 32, 64), generator=g)},
             "target": {"image": torch.rand(2, 3, 32, 64, generator=g), "valid_pseudo": valid}}
    ctx, _, _ = m.recipe(batch, 10, m.model, m.student)
    assert (ctx.pseudo_weight[:, :5] == 0).all() and (ctx.pseudo_weight[:, 5:] > 0).any()


@pytest.mark.parametrize("name,extra", [("mic", []), ("pipa", ["model.hrda.term_features=detail"]),
                                        ("pipa_video", [])])
def test_hrda_trains_with_every_recipe_and_term(tmp_path, name, extra):
    """MIC(HRDA), PiPa++ on HRDA (detail term features) and the video method: a few iterations, finite,
    and the evaluation runs the sliding-window inference form."""
    from pipa.engine.trainer import train

    preset = PRESET.parent / ("synthetic_video.yaml" if name == "pipa_video" else "synthetic.yaml")
    cfg = load_config(preset, [*tiny_overrides(tmp_path / "run", iterations=3), f"method.name={name}", *TINY_HRDA,
                               *extra, "method.pipa.patch.start=0", "method.mic.block_size=8"])
    res = train(cfg, progress="none")
    assert res.iterations == 3 and 0 <= res.miou <= 100


def test_hrda_presets_show_the_published_values():
    """lhoyer/HRDA configs/hrda/gtaHR2csHR_hrda.py, uda_gtaHR_to_cityscapesHR_1024x1024.py and
    uda_synthiaHR_to_cityscapesHR_1024x1024.py; lhoyer/MIC gtaHR2csHR_mic_hrda.py."""
    names = ["gta2cs_hrda", "gta2cs_mic_hrda", "gta2cs_hrda_pipa", "gta2cs_mic_hrda_pipa", "syn2cs_hrda_pipa",
             "synseq2csseq_hrda_pipa", "viper2csseq_hrda_pipa"]
    for name in names:
        cfg = load_config(CONFIGS / f"{name}.yaml")
        h = cfg.model.hrda
        assert h.enabled and h.context_scale == 0.5 and h.detail_crop == [512, 512] and h.crop_divisible == 8
        assert h.attention_classwise and h.attention_channels == 256 and h.detail_loss_weight == 0.1 and h.detail_slide
        assert cfg.data.source.crop == [1024, 1024] and cfg.data.target.crop == [1024, 1024]
        assert cfg.data.target.resize == [1024, 2048] and cfg.data.target.pseudo_margins == [30, 240, 30, 30]
        assert (cfg.method.teacher.ignore_top, cfg.method.teacher.ignore_bottom) == (0, 0)
        assert cfg.method.rcs.min_crop_ratio == 2.0 and cfg.method.rcs.min_pixels == 3000
        assert cfg.method.rcs.temperature == 0.01
        assert cfg.method.mic.block_size == 64 and cfg.method.mic.mask_ratio == 0.7
        assert (cfg.eval.mode, cfg.eval.crop, cfg.eval.stride) == ("slide", [1024, 1024], [512, 512])
        assert cfg.optim.lr == 6e-5 and cfg.optim.head_lr_mult == 10 and cfg.optim.warmup_iters == 1500
        assert cfg.train.iterations == 40000 and cfg.method.teacher.alpha == 0.999
        assert cfg.model.backbone == "mit_b5" and cfg.model.decoder == "daformer"
    gta = load_config(CONFIGS / "gta2cs_hrda.yaml")
    assert gta.data.source.resize == [1440, 2560] and gta.data.source.cat_max_ratio == 0.75
    assert gta.method.name == "daformer" and gta.method.fd.weight == 0.005
    assert load_config(CONFIGS / "syn2cs_hrda_pipa.yaml").data.source.resize == [1520, 2560]
    assert load_config(CONFIGS / "gta2cs_mic_hrda.yaml").method.name == "mic"
    mp = load_config(CONFIGS / "gta2cs_mic_hrda_pipa.yaml")
    assert mp.method.name == "pipa" and mp.method.pipa.base == "mic"


def test_hrda_model_exports_at_its_example_size(tmp_path):
    """HRDA's windows depend on the input size: torch.export and ONNX graphs fixed to the example
    size, which say so, and whose logits equal the model's (ONNX checked when onnxruntime is there)."""
    pytest.importorskip("onnxscript")
    from pipa.models.program import export_program

    cfg = load_config(PRESET, TINY_HRDA)
    torch.manual_seed(0)
    model = build_segmentor(cfg.model).eval()
    done = export_program(model, tmp_path, 64, 128, torch_export=True, onnx=True)
    assert not done.dynamic_size and done.why
    x = torch.rand(2, 3, 64, 128)
    with torch.no_grad():
        want = model(x).logits
    torch.testing.assert_close(torch.export.load(str(tmp_path / "model.pt2")).module()(x), want, rtol=1e-4, atol=1e-4)
    try:
        import onnxruntime
    except ImportError:
        return
    assert done.onnx_checked
    (got,) = onnxruntime.InferenceSession(str(tmp_path / "model.onnx")).run(["logits"], {"images": x.numpy()})
    torch.testing.assert_close(torch.from_numpy(got), want, rtol=1e-4, atol=1e-4)
