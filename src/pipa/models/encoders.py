"""Encoders returning four feature maps at strides 4, 8, 16 and 32.

* ``conv_small``: a small ResNet-style encoder (the CPU demo default: a tiny MiT cannot learn the
  built-in benchmark from scratch in minutes on 2 cores, see the README).
* ``mit_tiny`` and ``mit_b0`` .. ``mit_b5``: the MiT (SegFormer) encoder from ``transformers``,
  randomly initialised or loaded with ``from_pretrained`` (hub id such as ``nvidia/mit-b5``, or a
  local folder holding ``config.json`` + weights).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint


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


class MiTEncoder(nn.Module):
    """MiT encoder (``transformers.SegformerModel``). Input (B, 3, H, W) normalised images."""

    def __init__(self, preset: str, pretrained: str | None = None, drop_path_rate: float = 0.1) -> None:
        super().__init__()
        from transformers import SegformerConfig, SegformerModel

        if pretrained:
            try:
                self.mit = SegformerModel.from_pretrained(pretrained)
            except (OSError, ValueError) as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
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
        # transformers >= 5.2x: activation_checkpointing_*; older: gradient_checkpointing_*
        kwargs = {"use_reentrant": False}
        if hasattr(self.mit, "activation_checkpointing_enable"):
            if on:
                self.mit.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:
                self.mit.activation_checkpointing_disable()
        elif on:
            self.mit.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        else:
            self.mit.gradient_checkpointing_disable()

    def forward(self, x: Tensor) -> list[Tensor]:
        out = self.mit(pixel_values=x, output_hidden_states=True, return_dict=True)
        return list(out.hidden_states)


def build_encoder(name: str, pretrained: str | None = None) -> nn.Module:
    """The encoder ``name`` (``conv_small``/``conv_base`` or an MiT preset), optionally with pretrained
    weights (MiT: a hub id or local folder). Its ``channels`` lists the widths at strides 4..32."""
    if name == "conv_small":
        if pretrained:
            raise ValueError("model.pretrained is only supported for MiT backbones")
        return ConvEncoder()
    if name == "conv_base":
        if pretrained:
            raise ValueError("model.pretrained is only supported for MiT backbones")
        return ConvEncoder((32, 64, 128, 256), (2, 2, 2, 2))
    if name in MIT_PRESETS:
        return MiTEncoder(name, pretrained)
    choices = ", ".join(["conv_small", "conv_base", *MIT_PRESETS])
    raise ValueError(f"unknown config value model.backbone='{name}'; choose from {choices}")
