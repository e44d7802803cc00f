"""``pipa convert-mit``: an official MiT state dict (NVlabs/SegFormer ``mix_transformer.py`` names,
written out here by hand for a one-block-per-stage MiT) lands in the transformers model where the
SegFormer architecture puts each tensor."""

import pytest
import torch

from pipa.cli import main
from pipa.models.encoders import MIT_PRESETS

TINY = MIT_PRESETS["mit_tiny"]  # widths 16/32/64/128, one block per stage, heads 1/1/2/4
SR = [8, 4, 2, 1]  # MiT's spatial-reduction ratios per stage


def official_state(seed=0):
    """The names and shapes of ``mit_tiny`` in the official file, random values, with an ImageNet head."""
    g = torch.Generator().manual_seed(seed)
    w = TINY["hidden_sizes"]
    sd = {}
    for i in range(4):
        cin, k = (3, 7) if i == 0 else (w[i - 1], 3)
        d, s = w[i], f"block{i + 1}.0."
        sd[f"patch_embed{i + 1}.proj.weight"] = torch.randn(d, cin, k, k, generator=g)
        sd[f"patch_embed{i + 1}.proj.bias"] = torch.randn(d, generator=g)
        sd[f"patch_embed{i + 1}.norm.weight"] = torch.randn(d, generator=g)
        sd[f"patch_embed{i + 1}.norm.bias"] = torch.randn(d, generator=g)
        for n, shape in [("norm1", (d,)), ("attn.q", (d, d)), ("attn.kv", (2 * d, d)), ("attn.proj", (d, d)),
                         ("norm2", (d,)), ("mlp.fc1", (4 * d, d)), ("mlp.dwconv.dwconv", (4 * d, 1, 3, 3)),
                         ("mlp.fc2", (d, 4 * d))]:
            sd[s + n + ".weight"] = torch.randn(*shape, generator=g)
            sd[s + n + ".bias"] = torch.randn(shape[0], generator=g)
        if SR[i] > 1:
            sd[s + "attn.sr.weight"] = torch.randn(d, d, SR[i], SR[i], generator=g)
            sd[s + "attn.sr.bias"] = torch.randn(d, generator=g)
            sd[s + "attn.norm.weight"] = torch.randn(d, generator=g)
            sd[s + "attn.norm.bias"] = torch.randn(d, generator=g)
        sd[f"norm{i + 1}.weight"] = torch.randn(d, generator=g)
        sd[f"norm{i + 1}.bias"] = torch.randn(d, generator=g)
    sd["head.weight"] = torch.randn(1000, w[3], generator=g)
    sd["head.bias"] = torch.randn(1000, generator=g)
    return sd


def _has(model_sd, t):
    return any(v.shape == t.shape and torch.equal(v, t) for v in model_sd.values())


def test_official_mit_weights_land_where_segformer_puts_them(tmp_path, capsys):
    from pipa.models.encoders import MiTEncoder

    sd = official_state()
    torch.save({"state_dict": sd}, tmp_path / "mit_tiny.pth")
    assert main(["convert-mit", str(tmp_path / "mit_tiny.pth"), str(tmp_path / "mit")]) == 0
    assert "(mit_tiny)" in capsys.readouterr().out
    enc = MiTEncoder("mit_tiny", pretrained=str(tmp_path / "mit"))
    msd = enc.mit.state_dict()
    assert len(msd) == len(sd) - 2 + 8  # the head dropped; the 4 kv weights and 4 kv biases each split in two
    for name, t in sd.items():
        if name.startswith("head."):
            continue
        if ".attn.kv." in name:  # SegFormer: kv(x) -> (2, heads, C/heads): rows [0, C) key, [C, 2C) value
            d = t.shape[0] // 2
            assert _has(msd, t[:d]) and _has(msd, t[d:]), name
        else:
            assert _has(msd, t), name
    # ... and the key is the first half (old names: attention.self.key, newer: attention.k_proj)
    import re

    keys = [v for n, v in msd.items() if re.search(r"(\.key|k_proj)\.weight$", n) and v.shape[0] == 16]
    values = [v for n, v in msd.items() if re.search(r"(\.value|v_proj)\.weight$", n) and v.shape[0] == 16]
    kv = sd["block1.0.attn.kv.weight"]
    assert len(keys) == len(values) == 1 and torch.equal(keys[0], kv[:16]) and torch.equal(values[0], kv[16:])
    # the stage-1 patch embedding is the official conv: 7x7, stride 4, padding 3, then its LayerNorm
    x = torch.rand(1, 3, 32, 32)
    conv = torch.nn.functional.conv2d(x, sd["patch_embed1.proj.weight"], sd["patch_embed1.proj.bias"], stride=4, padding=3)
    want = torch.nn.functional.layer_norm(conv.flatten(2).transpose(1, 2), (16,), sd["patch_embed1.norm.weight"],
                                          sd["patch_embed1.norm.bias"], eps=1e-6)
    embed = [m for n, m in enc.mit.named_modules() if n.endswith("patch_embeddings.0") or n.endswith("0.patch_embeddings")][0]
    got = embed(x)[0]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_convert_mit_errors_name_the_file_or_key(tmp_path, capsys):
    sd = official_state()
    sd["block1.0.attn.qq.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "bad.pth")
    assert main(["convert-mit", str(tmp_path / "bad.pth"), str(tmp_path / "out")]) == 2
    assert "block1.0.attn.qq.weight" in capsys.readouterr().err
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    assert main(["convert-mit", str(tmp_path / "junk.pth"), str(tmp_path / "out")]) == 2
    assert "junk.pth" in capsys.readouterr().err
    assert main(["convert-mit", str(tmp_path / "missing.pth"), str(tmp_path / "out")]) == 2
    assert "missing.pth" in capsys.readouterr().err


def test_model_pretrained_accepts_an_official_pth(tmp_path):
    """``model.pretrained=.../mit_tiny.pth``: converted on first use next to the file, then loaded."""
    from pipa.models.encoders import MiTEncoder

    sd = official_state(seed=1)
    torch.save(sd, tmp_path / "mit_tiny.pth")
    enc = MiTEncoder("mit_tiny", pretrained=str(tmp_path / "mit_tiny.pth"))
    assert (tmp_path / "mit_tiny.pth.hf" / "model.safetensors").is_file()
    assert _has(enc.mit.state_dict(), sd["block4.0.mlp.fc2.weight"])
