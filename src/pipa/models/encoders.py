"""Encoders returning four feature maps at strides 4, 8, 16 and 32.

* ``conv_small``: a small ResNet-style encoder (the CPU demo default: a tiny MiT cannot learn the
  built-in benchmark from scratch in minutes on 2 cores, see the README).
* ``mit_tiny`` and ``mit_b0`` .. ``mit_b5``: the MiT (SegFormer) encoder from ``transformers``,
  randomly initialised or loaded with ``from_pretrained`` (hub id such as ``nvidia/mit-b5``, or a
  local folder holding ``config.json`` + weights).
* ``dinov2_tiny`` and ``dinov2_small`` / ``base`` / ``large``: DINOv2 (``transformers.Dinov2Backbone``,
  hub ids ``facebook/dinov2-*``): the patch tokens of four layers (stride 14), bilinearly resampled
  to strides 4, 8, 16 and 32 for the decoder (no parameters added).
"""

from __future__ import annotations

import re

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..core.io import first_line


class _ConvBNReLU(nn.Sequential):
    def __init__(self, cin: int, cout: int, stride: int = 1, dilation: int = 1) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convs with a residual connection."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _ConvBNReLU(cin, cout, stride)
        self.conv2 = nn.Sequential(nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.skip: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.skip = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(self.conv2(self.conv1(x)) + self.skip(x))


class ConvEncoder(nn.Module):
    """Small ResNet-style encoder. Input (B, 3, H, W); output 4 maps at strides 4..32."""

    def __init__(self, channels: tuple[int, ...] = (24, 32, 64, 96), blocks: tuple[int, ...] = (1, 1, 1, 1)) -> None:
        super().__init__()
        self.channels = list(channels)
        self.stem = nn.Sequential(_ConvBNReLU(3, channels[0] // 2 + 8, 2), _ConvBNReLU(channels[0] // 2 + 8, channels[0], 2))
        stages = []
        cin = channels[0]
        for i, (c, n) in enumerate(zip(channels, blocks)):
            layers = [BasicBlock(cin, c, 1 if i == 0 else 2)]
            layers += [BasicBlock(c, c) for _ in range(n - 1)]
            stages.append(nn.Sequential(*layers))
            cin = c
        self.stages = nn.ModuleList(stages)
        self.checkpointing = False

    def set_checkpointing(self, on: bool) -> None:
        """Activation checkpointing of each stage (recomputed in backward; batch-norm running
        statistics then see each training batch twice)."""
        self.checkpointing = on

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.stem(x)
        feats = []
        recompute = self.checkpointing and self.training and torch.is_grad_enabled()
        for stage in self.stages:
            x = checkpoint(stage, x, use_reentrant=False) if recompute else stage(x)
            feats.append(x)
        return feats


# MiT presets (SegFormer paper, Table 6); hub ids of the ImageNet-pretrained encoders.
MIT_PRESETS: dict[str, dict] = {
    "mit_tiny": dict(hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1], num_attention_heads=[1, 1, 2, 4]),
    "mit_b0": dict(hidden_sizes=[32, 64, 160, 256], depths=[2, 2, 2, 2], num_attention_heads=[1, 2, 5, 8]),
    "mit_b1": dict(hidden_sizes=[64, 128, 320, 512], depths=[2, 2, 2, 2], num_attention_heads=[1, 2, 5, 8]),
    "mit_b2": dict(hidden_sizes=[64, 128, 320, 512], depths=[3, 4, 6, 3], num_attention_heads=[1, 2, 5, 8]),
    "mit_b3": dict(hidden_sizes=[64, 128, 320, 512], depths=[3, 4, 18, 3], num_attention_heads=[1, 2, 5, 8]),
    "mit_b4": dict(hidden_sizes=[64, 128, 320, 512], depths=[3, 8, 27, 3], num_attention_heads=[1, 2, 5, 8]),
    "mit_b5": dict(hidden_sizes=[64, 128, 320, 512], depths=[3, 6, 40, 3], num_attention_heads=[1, 2, 5, 8]),
}
MIT_HUB_IDS = {f"mit_b{i}": f"nvidia/mit-b{i}" for i in range(6)}


def _hf_checkpointing(model: nn.Module, on: bool) -> None:
    """Activation checkpointing of a transformers model's layers, on or off."""
    # transformers >= 5.2x: activation_checkpointing_*; older: gradient_checkpointing_*
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        if on:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.activation_checkpointing_disable()
    elif on:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_disable()


def _converted_mit(path: str) -> str:
    """An official ``mit_b*.pth`` -> the Segformer folder ``<path>.hf`` (written on first use by
    :func:`pipa.models.convert.convert_mit`; reused afterwards)."""
    from pathlib import Path

    from .convert import convert_mit

    out = Path(path + ".hf")
    if not (out / "model.safetensors").is_file():
        convert_mit(path, out)
    return str(out)


class MiTEncoder(nn.Module):
    """MiT encoder (``transformers.SegformerModel``). Input (B, 3, H, W) normalised images."""

    def __init__(self, preset: str, pretrained: str | None = None, drop_path_rate: float = 0.1) -> None:
        super().__init__()
        from transformers import SegformerConfig, SegformerModel

        if pretrained and pretrained.endswith(".pth"):  # an official mit_b*.pth: converted once, next to it
            pretrained = _converted_mit(pretrained)
        if pretrained:
            try:
                self.mit = SegformerModel.from_pretrained(pretrained)
            except (OSError, ValueError) as exc:
                first = first_line(exc)
                raise RuntimeError(
                    f"cannot load MiT weights from '{pretrained}' (a hub id needs network access or a "
                    f"filled cache; a local folder needs config.json and the weights): {first}"
                ) from None
        else:
            if preset not in MIT_PRESETS:
                raise ValueError(f"unknown MiT preset '{preset}'; choose from {', '.join(MIT_PRESETS)}")
            config = SegformerConfig(**MIT_PRESETS[preset], drop_path_rate=drop_path_rate)
            self.mit = SegformerModel(config)
        self.channels = list(self.mit.config.hidden_sizes)

    def set_checkpointing(self, on: bool) -> None:
        """Activation checkpointing of every transformer layer (recomputed in backward)."""
        _hf_checkpointing(self.mit, on)

    def forward(self, x: Tensor) -> list[Tensor]:
        out = self.mit(pixel_values=x, output_hidden_states=True, return_dict=True)
        return list(out.hidden_states)


# DINOv2 presets (Oquab et al. 2023): width, layers, heads, and the four layers whose tokens the
# decoder reads (evenly spaced, the last one included); tiny is for tests.
DINOV2_PRESETS: dict[str, dict] = {
    "dinov2_tiny": dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, out_indices=[1, 2, 3, 4]),
    "dinov2_small": dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, out_indices=[3, 6, 9, 12]),
    "dinov2_base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, out_indices=[3, 6, 9, 12]),
    "dinov2_large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, out_indices=[6, 12, 18, 24]),
}
# with 4 register tokens (Darcet et al., "Vision Transformers Need Registers", ICLR 2024)
DINOV2_PRESETS.update({name.replace("dinov2_", "dinov2reg_"): {**spec, "num_register_tokens": 4}
                       for name, spec in list(DINOV2_PRESETS.items())})
DINOV2_HUB_IDS = {"dinov2_small": "facebook/dinov2-small", "dinov2_base": "facebook/dinov2-base",
                  "dinov2_large": "facebook/dinov2-large", "dinov2reg_small": "facebook/dinov2-with-registers-small",
                  "dinov2reg_base": "facebook/dinov2-with-registers-base",
                  "dinov2reg_large": "facebook/dinov2-with-registers-large"}
VIT_STRIDES = (4, 8, 16, 32)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a (B, C, H, W) map."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class SimpleFeaturePyramid(nn.Module):
    """ViTDet's simple feature pyramid on the ViT's four token maps (stride p = 14 or 16): the first
    upsampled 4x (two 2x2 transposed convolutions, LayerNorm + GELU between), the second 2x, the
    third as is, the fourth max-pooled 2x; widths D/4, D/2, D, D. New parameters: trained at the
    head's learning rate (``Segmentor.head_parameters``)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.up4 = nn.Sequential(nn.ConvTranspose2d(dim, dim // 2, 2, 2), LayerNorm2d(dim // 2), nn.GELU(),
                                 nn.ConvTranspose2d(dim // 2, dim // 4, 2, 2))
        self.up2 = nn.ConvTranspose2d(dim, dim // 2, 2, 2)
        self.down2 = nn.MaxPool2d(2, ceil_mode=True)
        self.channels = [dim // 4, dim // 2, dim, dim]

    def forward(self, maps: list[Tensor]) -> list[Tensor]:
        return [self.up4(maps[0]), self.up2(maps[1]), maps[2], self.down2(maps[3])]


class DINOv2Encoder(nn.Module):
    """DINOv2 ViT (``transformers.Dinov2Backbone``, or ``Dinov2WithRegistersBackbone`` for the
    ``dinov2reg_*`` presets). The input is zero-padded (after normalisation: the mean colour) to a
    multiple of the patch size; the token maps of the four ``out_indices`` layers go through the
    ``neck`` (``fpn``: :class:`SimpleFeaturePyramid`; ``resample``: none) and are cropped to the
    input's extent and resampled to ⌈H/s⌉ × ⌈W/s⌉ for s = 4, 8, 16, 32."""

    def __init__(self, preset: str, pretrained: str | None = None, drop_path_rate: float = 0.1,
                 neck: str = "fpn") -> None:
        super().__init__()
        from transformers import Dinov2Backbone, Dinov2Config

        spec = dict(DINOV2_PRESETS[preset])
        out_indices = spec.pop("out_indices")
        registers = spec.pop("num_register_tokens", 0)
        if registers:
            from transformers import Dinov2WithRegistersBackbone as Backbone
            from transformers import Dinov2WithRegistersConfig as BackboneConfig
        else:
            Backbone, BackboneConfig = Dinov2Backbone, Dinov2Config  # noqa: N806
        if pretrained:
            try:
                self.vit = Backbone.from_pretrained(pretrained, out_indices=out_indices, reshape_hidden_states=True,
                                                    apply_layernorm=True)
            except (OSError, ValueError) as exc:
                first = first_line(exc)
                raise RuntimeError(f"cannot load DINOv2 weights from '{pretrained}' (a hub id needs network access "
                                   f"or a filled cache; a local folder needs config.json and the weights): {first}") from None
        else:
            extra = {"num_register_tokens": registers} if registers else {}
            config = BackboneConfig(**spec, **extra, intermediate_size=4 * spec["hidden_size"], patch_size=14,
                                    image_size=518, out_indices=out_indices, reshape_hidden_states=True,
                                    apply_layernorm=True, drop_path_rate=drop_path_rate)
            self.vit = Backbone(config)
        self.patch = int(self.vit.config.patch_size)
        self.depth = int(self.vit.config.num_hidden_layers)
        dim = int(self.vit.config.hidden_size)
        if neck not in ("fpn", "resample"):
            raise ValueError(f"unknown config value model.vit_neck='{neck}'; choose from fpn, resample")
        self.neck = SimpleFeaturePyramid(dim) if neck == "fpn" else None
        self.channels = self.neck.channels if self.neck is not None else [dim] * 4

    def set_checkpointing(self, on: bool) -> None:
        """Activation checkpointing of every transformer layer (recomputed in backward)."""
        _hf_checkpointing(self.vit, on)

    def layer_of(self, name: str) -> int:
        """Depth of a parameter of ``vit`` for layer-wise learning-rate decay: 0 for the stem
        (patch and position embeddings, tokens, the final norm), i + 1 for transformer block i."""
        m = re.search(r"encoder\.layer\.(\d+)\.", name)
        return int(m.group(1)) + 1 if m else 0

    def forward(self, x: Tensor) -> list[Tensor]:
        import torch.nn.functional as F

        H, W = x.shape[-2:]
        p = self.patch
        ph, pw = -H % p, -W % p
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph))
        maps = list(self.vit(pixel_values=x).feature_maps)
        if self.neck is not None:
            maps = self.neck(maps)
        out = []
        for f, s in zip(maps, VIT_STRIDES):
            h, w = -(-H // s), -(-W // s)
            full = F.interpolate(f, size=(-(-(H + ph) // s), -(-(W + pw) // s)), mode="bilinear", align_corners=False)
            out.append(full[..., :h, :w])
        return out


def build_encoder(name: str, pretrained: str | None = None, vit_neck: str = "fpn") -> nn.Module:
    """The encoder ``name`` (``conv_small``/``conv_base`` or an MiT preset), optionally with pretrained
    weights (MiT: a hub id or local folder). Its ``channels`` lists the widths at strides 4..32."""
    if name == "conv_small":
        if pretrained:
            raise ValueError("model.pretrained is only supported for MiT and DINOv2 backbones")
        return ConvEncoder()
    if name == "conv_base":
        if pretrained:
            raise ValueError("model.pretrained is only supported for MiT and DINOv2 backbones")
        return ConvEncoder((32, 64, 128, 256), (2, 2, 2, 2))
    if name in MIT_PRESETS:
        return MiTEncoder(name, pretrained)
    if name in DINOV2_PRESETS:
        return DINOv2Encoder(name, pretrained, neck=vit_neck)
    choices = ", ".join(["conv_small", "conv_base", *MIT_PRESETS, *DINOV2_PRESETS])
    raise ValueError(f"unknown config value model.backbone='{name}'; choose from {choices}")
