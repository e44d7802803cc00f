"""The official MiT ImageNet weights (``mit_b0.pth`` … ``mit_b5.pth`` of NVlabs/SegFormer, the files
DAFormer, HRDA and MIC load from ``pretrained/``) -> a ``transformers`` Segformer folder that
``model.pretrained`` reads.

    pipa convert-mit pretrained/mit_b5.pth pretrained/mit-b5      # then model.pretrained=pretrained/mit-b5

The official names (``patch_embed{i}``, ``block{i}.{j}.attn.q`` / ``kv`` / ``proj`` / ``sr`` / ``norm``,
``mlp.fc1`` / ``dwconv.dwconv`` / ``fc2``, ``norm{i}``) are written under the names of the hub's
``nvidia/mit-b*`` checkpoints (``encoder.block.{i}.{j}.attention.self.query`` ...), which every
``transformers`` version loads (newer ones rename them on load). ``kv`` is split in two: its first
half of rows is the key projection, the second the value (SegFormer's ``Attention.forward``). The
ImageNet classifier (``head``) is dropped; an mmseg checkpoint's ``backbone.`` prefix is accepted.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import Tensor

from .encoders import MIT_PRESETS

_BLOCK = {  # official name within a block -> the hub's name within encoder.block.{i}.{j}
    "norm1": "layer_norm_1", "norm2": "layer_norm_2", "attn.q": "attention.self.query",
    "attn.proj": "attention.output.dense", "attn.sr": "attention.self.sr", "attn.norm": "attention.self.layer_norm",
    "mlp.fc1": "mlp.dense1", "mlp.dwconv.dwconv": "mlp.dwconv.dwconv", "mlp.fc2": "mlp.dense2",
}


class ConversionError(ValueError):
    """A checkpoint that is not an official MiT state dict (the message names the key or file)."""


def convert_state_dict(official: dict[str, Tensor]) -> dict[str, Tensor]:
    """Official MiT keys -> the hub's Segformer keys (see the module docstring)."""
    out: dict[str, Tensor] = {}
    for key, value in official.items():
        key = key.removeprefix("backbone.")
        if key.startswith(("head.", "decode_head.", "auxiliary_head.")):
            continue
        if m := re.fullmatch(r"patch_embed(\d)\.(proj|norm)\.(weight|bias)", key):
            part = "proj" if m[2] == "proj" else "layer_norm"
            out[f"encoder.patch_embeddings.{int(m[1]) - 1}.{part}.{m[3]}"] = value
        elif m := re.fullmatch(r"norm(\d)\.(weight|bias)", key):
            out[f"encoder.layer_norm.{int(m[1]) - 1}.{m[2]}"] = value
        elif m := re.fullmatch(r"block(\d)\.(\d+)\.(.+)\.(weight|bias)", key):
            prefix = f"encoder.block.{int(m[1]) - 1}.{m[2]}."
            if m[3] == "attn.kv":
                k, v = value.chunk(2, dim=0)
                out[prefix + f"attention.self.key.{m[4]}"] = k.contiguous()
                out[prefix + f"attention.self.value.{m[4]}"] = v.contiguous()
            elif m[3] in _BLOCK:
                out[prefix + f"{_BLOCK[m[3]]}.{m[4]}"] = value
            else:
                raise ConversionError(f"unexpected key '{key}' in an MiT checkpoint")
        else:
            raise ConversionError(f"unexpected key '{key}' in an MiT checkpoint")
    return out


def infer_preset(official: dict[str, Tensor]) -> str:
    """The MiT preset whose widths and depths the checkpoint has."""
    keys = [k.removeprefix("backbone.") for k in official]
    widths = []
    for i in range(1, 5):
        w = official.get(f"patch_embed{i}.proj.weight", official.get(f"backbone.patch_embed{i}.proj.weight"))
        if w is None:
            raise ConversionError(f"no 'patch_embed{i}.proj.weight': not an official MiT checkpoint")
        widths.append(int(w.shape[0]))
    depths = [len({k.split(".")[1] for k in keys if k.startswith(f"block{i}.")}) for i in range(1, 5)]
    for name, p in MIT_PRESETS.items():
        if p["hidden_sizes"] == widths and p["depths"] == depths:
            return name
    raise ConversionError(f"widths {widths} and depths {depths} match no MiT preset ({', '.join(MIT_PRESETS)})")


def convert_mit(src: str | Path, out_dir: str | Path) -> str:
    """Read ``src`` (an official ``mit_b*.pth``; loaded with ``weights_only=True``), write a Segformer
    folder (``config.json`` + ``model.safetensors``) to ``out_dir``, check that ``transformers``
    loads every weight, and return the preset name."""
    from safetensors.torch import save_file
    from transformers import SegformerConfig, SegformerModel

    from ..core.io import atomic_write

    src, out_dir = Path(src), Path(out_dir)
    if not src.is_file():
        raise FileNotFoundError(f"{src}: no such file")
    try:
        state = torch.load(src, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same one-line error
        raise ConversionError(f"{src}: not a readable PyTorch checkpoint ({type(exc).__name__})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ConversionError(f"{src}: not a state dict of tensors")
    preset = infer_preset(state)
    converted = convert_state_dict(state)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = SegformerConfig(**MIT_PRESETS[preset])
    config.save_pretrained(out_dir)
    tensors = {k: v.contiguous() for k, v in converted.items()}
    atomic_write(out_dir / "model.safetensors", lambda p: save_file(tensors, str(p), metadata={"format": "pt"}))
    model = SegformerModel.from_pretrained(out_dir)
    # every weight arrived (whatever names this transformers version uses): the same multiset of tensors
    got = sorted((tuple(v.shape), round(float(v.double().sum()), 4)) for v in model.state_dict().values())
    want = sorted((tuple(v.shape), round(float(v.double().sum()), 4)) for v in tensors.values())
    if got != want:
        raise ConversionError(f"{src}: transformers did not load every converted weight of {preset} "
                              f"({len(want)} converted, {len(got)} in the model)")
    return preset
