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
from ..core.tensors import class_argmax
from .decoders import DAFormerHead, MLPHead
from .encoders import build_encoder
from .hrda import Box, Detail, ScaleAttentionHead, draw_box, fuse, hrda_config_check, slide

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
    detail: Detail | None = None  # HRDA training passes: the detail crop's logits and box


class Segmentor(nn.Module):
    """Images in [0, 1] (B, 3, H, W) -> :class:`SegOutput`. Normalisation is part of the model."""

    def __init__(self, cfg: ModelConfig, class_names: list[str] | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.class_names = list(class_names) if class_names else [str(i) for i in range(cfg.num_classes)]
        if len(self.class_names) != cfg.num_classes:
            raise ValueError(f"{len(self.class_names)} class names for model.num_classes={cfg.num_classes}")
        self.encoder = build_encoder(cfg.backbone, cfg.pretrained, cfg.vit_neck)
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
        self.scale_attention: ScaleAttentionHead | None = None
        if cfg.hrda.enabled:  # HRDA: part of the deployed model
            hrda_config_check(cfg.hrda)
            self.scale_attention = ScaleAttentionHead(chans, cfg.hrda.attention_channels,
                                                      cfg.num_classes if cfg.hrda.attention_classwise else 1, cfg.dropout)
        self.register_buffer("pixel_mean", torch.tensor(cfg.pixel_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(cfg.pixel_std).view(1, 3, 1, 1), persistent=False)

    @property
    def num_classes(self) -> int:
        """K, the number of classes."""
        return self.cfg.num_classes

    @property
    def hrda(self) -> bool:
        """Is this HRDA's multi-resolution model (``model.hrda.enabled``)?"""
        return self.scale_attention is not None

    def head_parameters(self) -> list[nn.Parameter]:
        """Decoder + classifier (+ HRDA's scale attention) parameters (trained with the head
        learning-rate multiplier)."""
        att = [] if self.scale_attention is None else list(self.scale_attention.parameters())
        neck = getattr(self.encoder, "neck", None)  # a ViT's feature pyramid: new parameters, like the head's
        neck_params = [] if neck is None else list(neck.parameters())
        return [*self.decoder.parameters(), *self.classifier.parameters(), *att, *neck_params]

    def draw_detail_box(self, images: Tensor, generator: torch.Generator | None) -> Box | None:
        """HRDA: the detail crop of a training pass over ``images`` (one per batch); None otherwise."""
        if not self.hrda:
            return None
        h = self.cfg.hrda
        return draw_box(images.shape[-2], images.shape[-1], (h.detail_crop[0], h.detail_crop[1]), h.crop_divisible,
                        generator)

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

    def forward(self, images: Tensor, features_only: bool = False, split: int = 0,
                detail: Box | None = None) -> SegOutput | list[SegOutput]:
        """``features_only``: skip the classifier (``logits`` is an empty tensor); training-only
        heads that need the fused map alone use it. ``split`` > 0: ``images`` holds two batches
        (the first ``split`` images, the rest) that share one encoder pass (fewer, larger kernels)
        while the decoder, whose batch norm normalises per batch, runs on each: a list of two outputs.
        HRDA (``model.hrda.enabled``): ``detail`` is the training pass's detail crop (from
        :meth:`draw_detail_box`); None runs the inference form (detail by sliding windows)."""
        if self.hrda:
            return self._forward_hrda(images, features_only, detail)
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

    def _single(self, images: Tensor) -> tuple[list[Tensor], Tensor]:
        enc = self.encoder(self.normalize(images))
        return enc, self.decoder(enc)

    def _forward_hrda(self, images: Tensor, features_only: bool, box: Box | None) -> SegOutput:
        """The context pass, the detail pass (crop ``box``, or sliding windows), the attention and the
        fusion (``models/hrda.py``)."""
        h = self.cfg.hrda
        H, W = images.shape[-2:]
        lr_img = F.interpolate(images, scale_factor=h.context_scale, mode="bilinear", align_corners=False)
        enc, f_lr = self._single(lr_img)
        if features_only and h.term_features == "context":
            return SegOutput(f_lr.new_zeros(0), f_lr, enc)
        grid = (-(-H // 4), -(-W // 4))  # the detail branch's stride-4 grid of the input

        def branch(x: Tensor) -> tuple[Tensor, Tensor]:
            _, f = self._single(x)
            return self.classifier(self.dropout(f)), f

        if box is not None:
            hr, f_hr = branch(images[..., box[0]:box[1], box[2]:box[3]])
            cells_box: Box | None = tuple(v // 4 for v in box)  # type: ignore[assignment]
        elif h.detail_slide:
            hr, f_hr = slide(branch, images, (h.detail_crop[0], h.detail_crop[1]), grid)
            cells_box = None
        else:
            hr, f_hr = branch(images)
            cells_box = None
        feats = f_lr if h.term_features == "context" else self._detail_features(f_lr, f_hr, cells_box)
        if features_only:
            return SegOutput(feats.new_zeros(0), feats, enc)
        assert self.scale_attention is not None
        att = torch.sigmoid(self.scale_attention(enc))
        lr = self.classifier(self.dropout(f_lr))
        fused = fuse(lr, att, hr, cells_box, grid)
        logits = F.interpolate(fused, (H, W), mode="bilinear", align_corners=False)
        detail = None
        if box is not None:
            detail = Detail(F.interpolate(hr, (box[1] - box[0], box[3] - box[2]), mode="bilinear", align_corners=False), box)
        return SegOutput(logits, feats, enc, detail)

    def _detail_features(self, f_lr: Tensor, f_hr: Tensor, cells_box: Box | None) -> Tensor:
        """``term_features=detail``: the context map with the detail map, average-pooled to its grid,
        wherever the detail pass ran (the crop in training, everywhere with sliding windows)."""
        k = round(1 / self.cfg.hrda.context_scale)  # detail cells per context cell, per axis
        pooled = F.avg_pool2d(f_hr, k, k, ceil_mode=True) if k > 1 else f_hr
        if cells_box is None:
            return pooled[..., :f_lr.shape[-2], :f_lr.shape[-1]]
        y1, y2, x1, x2 = (v // k for v in cells_box)
        out = f_lr.clone()
        out[..., y1:y2, x1:x2] = pooled
        return out

    @torch.inference_mode()
    def predict(self, images: Tensor, return_probs: bool = False) -> Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, H, W) int64 class ids (or (B, K, H, W) probabilities)."""
        was_training = self.training
        self.eval()
        try:
            logits = self(images).logits.float()
        finally:
            self.train(was_training)
        return logits.softmax(1) if return_probs else class_argmax(logits)

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
        """Load what :meth:`save_pretrained` wrote: a folder, the ``model.safetensors`` in it, or a hub
        id (``owner/name[@revision]``, downloaded once and then read from the cache)."""
        from safetensors.torch import load_file

        from .hub import resolve_weights

        directory = resolve_weights(directory)
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
