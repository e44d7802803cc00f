"""The deployable segmentor: encoder + decoder + classifier, saved as safetensors + config.json."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ModelConfig, merge
from .decoders import DAFormerHead, MLPHead
from .encoders import build_encoder

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
FORMAT_VERSION = 1


@dataclass
class SegOutput:
    """``logits`` (B, K, H, W) at input resolution; ``features`` (B, C, H/4, W/4), the fused
    decoder map ``F`` that training-only heads attach to."""

    logits: Tensor
    features: Tensor
    encoder_features: list[Tensor] | None = None  # strides 4..32 (feature distance uses them)


class Segmentor(nn.Module):
    """Images in [0, 1] (B, 3, H, W) -> :class:`SegOutput`. Normalisation is part of the model."""

    def __init__(self, cfg: ModelConfig, class_names: list[str] | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.class_names = list(class_names) if class_names else [str(i) for i in range(cfg.num_classes)]
        if len(self.class_names) != cfg.num_classes:
            raise ValueError(f"{len(self.class_names)} class names for model.num_classes={cfg.num_classes}")
        self.encoder = build_encoder(cfg.backbone, cfg.pretrained)
        chans = self.encoder.channels
        if cfg.decoder == "daformer":
            self.decoder: nn.Module = DAFormerHead(chans, cfg.decoder_channels, cfg.aspp_dilations, cfg.aspp_separable,
                                                    cfg.aspp_squeeze, cfg.bottleneck_kernel)
        elif cfg.decoder == "mlp":
            self.decoder = MLPHead(chans, cfg.decoder_channels)
        else:
            raise ValueError(f"unknown config value model.decoder='{cfg.decoder}'; choose daformer or mlp")
        self.dropout = nn.Dropout2d(cfg.dropout)
        self.classifier = nn.Conv2d(cfg.decoder_channels, cfg.num_classes, 1)
        if cfg.classifier_init_std is not None:  # mmseg BaseDecodeHead: Normal(std=0.01) on conv_seg, bias 0
            nn.init.normal_(self.classifier.weight, 0.0, cfg.classifier_init_std)
            nn.init.zeros_(self.classifier.bias)
        self.register_buffer("pixel_mean", torch.tensor(cfg.pixel_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(cfg.pixel_std).view(1, 3, 1, 1), persistent=False)

    @property
    def num_classes(self) -> int:
        """K, the number of classes."""
        return self.cfg.num_classes

    def head_parameters(self) -> list[nn.Parameter]:
        """Decoder + classifier parameters (trained with the head learning-rate multiplier)."""
        return [*self.decoder.parameters(), *self.classifier.parameters()]

    def normalize(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, 3, H, W) standardised with ``pixel_mean``/``pixel_std``."""
        return (images - self.pixel_mean) / self.pixel_std

    def forward_features(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, C, H/4, W/4) fused decoder features."""
        return self.decoder(self.encoder(self.normalize(images)))

    def classify(self, features: Tensor, size: tuple[int, int]) -> Tensor:
        """(B, C, h, w) features -> (B, K, *size) logits (dropout, 1x1 classifier, bilinear upsampling)."""
        logits = self.classifier(self.dropout(features))
        return F.interpolate(logits, size, mode="bilinear", align_corners=False)

    @property
    def batch_independent_encoder(self) -> bool:
        """Does the encoder treat every image of a batch on its own (no batch norm)? Then images of
        two batches can share one encoder pass (:meth:`forward` with ``split``)."""
        return not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.encoder.modules())

    def forward(self, images: Tensor, features_only: bool = False, split: int = 0) -> SegOutput | list[SegOutput]:
        """``features_only``: skip the classifier (``logits`` is an empty tensor); training-only
        heads that need the fused map alone use it. ``split`` > 0: ``images`` holds two batches
        (the first ``split`` images, the rest) that share one encoder pass (fewer, larger kernels)
        while the decoder, whose batch norm normalises per batch, runs on each: a list of two outputs."""
        if split:
            enc = self.encoder(self.normalize(images))
            outs = []
            for part in (slice(0, split), slice(split, None)):
                e = [f[part] for f in enc]
                feats = self.decoder(e)
                outs.append(SegOutput(self.classify(feats, tuple(images.shape[-2:])), feats, e))
            return outs
        enc = self.encoder(self.normalize(images))
        feats = self.decoder(enc)
        if features_only:
            return SegOutput(feats.new_zeros(0), feats, enc)
        return SegOutput(self.classify(feats, tuple(images.shape[-2:])), feats, enc)

    @torch.inference_mode()
    def predict(self, images: Tensor, return_probs: bool = False) -> Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, H, W) int64 class ids (or (B, K, H, W) probabilities)."""
        was_training = self.training
        self.eval()
        try:
            logits = self(images).logits.float()
        finally:
            self.train(was_training)
        return logits.softmax(1) if return_probs else logits.argmax(1)

    # -- inference weights ---------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> None:
        """Write ``model.safetensors`` + ``config.json`` atomically into ``directory``."""
        from safetensors.torch import save_file

        from ..core.io import atomic_write

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        meta = {
            "format_version": FORMAT_VERSION,
            "library": "pipa",
            "model": {**dataclasses.asdict(self.cfg), "pretrained": None},
            "class_names": self.class_names,
        }
        atomic_write(directory / WEIGHTS_NAME, lambda p: save_file(state, str(p), metadata={"format": "pt"}))
        atomic_write(directory / CONFIG_NAME, lambda p: Path(p).write_text(json.dumps(meta, indent=2)))

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str | torch.device = "cpu") -> "Segmentor":
        """Load what :meth:`save_pretrained` wrote (a folder, or the ``model.safetensors`` in it)."""
        from safetensors.torch import load_file

        directory = Path(directory)
        if directory.is_file():
            directory = directory.parent
        cfg_path, w_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
        for p in (cfg_path, w_path):
            if not p.is_file():
                raise FileNotFoundError(f"missing {p} (expected a folder written by Segmentor.save_pretrained)")
        try:
            meta = json.loads(cfg_path.read_text())
            mcfg = merge(ModelConfig(), meta["model"])
        except (json.JSONDecodeError, KeyError, ValueError) as exc:
            raise ValueError(f"{cfg_path}: not a pipa model config ({exc})") from None
        model = cls(mcfg, meta.get("class_names"))
        model.load_state_dict(load_file(str(w_path), device=str(map_location)))
        return model.to(map_location)


def build_segmentor(cfg: ModelConfig, class_names: list[str] | None = None) -> Segmentor:
    """A :class:`Segmentor` from ``model.*`` settings (and the dataset's class names)."""
    return Segmentor(cfg, class_names)


def count_parameters(module: nn.Module) -> int:
    """Number of parameters of ``module`` (shared ones counted once)."""
    return sum(p.numel() for p in module.parameters())
