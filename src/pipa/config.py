"""Configuration: dataclasses are the schema, YAML files are presets, ``key=value`` overrides.

A YAML preset may name a ``base:`` preset (a path relative to itself), which may have its own (up to 4). Unknown
keys are rejected with the nearest valid name; values are checked against the field types.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import subprocess
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml


class ConfigError(ValueError):
    """A bad configuration key or value (the message is one line and names the key)."""


@dataclass(frozen=True)
class Range:
    """Schema annotation: a number (or every element of a list) must lie in [lo, hi]; ``lo_open`` /
    ``hi_open`` exclude the bound."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def holds(self, v: float) -> bool:
        if self.lo is not None and (v < self.lo or (self.lo_open and v == self.lo)):
            return False
        return not (self.hi is not None and (v > self.hi or (self.hi_open and v == self.hi)))

    def __str__(self) -> str:
        if self.hi is None and self.lo is not None:
            if self.lo == 0:
                return "positive" if self.lo_open else "non-negative (>= 0)"
            return f"{'>' if self.lo_open else 'at least'} {self.lo:g}"
        lo = "-inf" if self.lo is None else f"{self.lo:g}"
        hi = "inf" if self.hi is None else f"{self.hi:g}"
        return f"in {'(' if self.lo_open or self.lo is None else '['}{lo}, {hi}{')' if self.hi_open else ']'}"


@dataclass(frozen=True)
class Length:
    """Schema annotation: a list must have exactly ``n`` elements."""

    n: int


POSITIVE = Range(0, lo_open=True)
NONNEG = Range(0)
UNIT = Range(0, 1)  # probabilities, ratios, thresholds
COUNT = Range(1)

Backbone = Literal["conv_small", "conv_base", "mit_tiny", "mit_b0", "mit_b1", "mit_b2", "mit_b3", "mit_b4", "mit_b5",
                   "dinov2_tiny", "dinov2_small", "dinov2_base", "dinov2_large",
                   "dinov2reg_tiny", "dinov2reg_small", "dinov2reg_base", "dinov2reg_large"]
DatasetName = Literal["synthetic", "folder", "gta5", "cityscapes", "synthia", "synthia_seq", "viper", "cityscapes_seq"]
MethodName = Literal["source_only", "source_only_aug", "oracle", "self_training", "daformer", "mic", "pipa",
                     "pipa_video"]
BaseRecipe = Literal["self_training", "daformer", "mic"]
# names of the terms ``method.terms`` may list; ``pipa.methods.terms.register_term`` adds to it
KNOWN_TERMS: set[str] = {"feature_distance", "masked_consistency", "pixel_contrast", "patch_contrast",
                         "temporal_contrast"}


@dataclass
class HRDAConfig:
    """HRDA's multi-resolution model (Hoyer et al., ECCV 2022; ``models/hrda.py``): the context (the
    whole crop at ``context_scale``) and a full-resolution detail crop through the same encoder and
    decoder, fused by a learned scale attention. Off by default."""

    enabled: bool = False
    context_scale: Annotated[float, Range(0, 1, lo_open=True)] = 0.5  # LR input = crop × this (HRDA: 0.5)
    detail_crop: Annotated[list[int], Length(2), COUNT] = field(default_factory=lambda: [512, 512])  # (H, W) px
    crop_divisible: Annotated[int, COUNT] = 8  # detail crop corners on multiples of this (output stride / scale)
    attention_channels: Annotated[int, COUNT] = 256  # the scale-attention head's width (HRDA: 256)
    attention_classwise: bool = True  # one attention map per class (HRDA) or one for all
    detail_loss_weight: Annotated[float, Range(0, 1, hi_open=True)] = 0.1  # λ_d; the fused loss gets 1 - λ_d
    # inference and pseudo-labels: the detail prediction of the whole input by overlapping windows of
    # detail_crop (stride detail_crop / 2, HRDA's hr_slide_inference); false: the whole input at full resolution
    detail_slide: bool = True
    # the map the PiPa++ terms (and their memory) read: context (the LR decoder map, stride 4 / context_scale)
    # | detail (the same grid, with the detail pass's map, pooled to it, wherever the detail pass ran)
    term_features: Literal["context", "detail"] = "context"


@dataclass
class ModelConfig:
    backbone: Backbone = "conv_small"
    pretrained: str | None = None  # hub id or local folder (MiT, DINOv2)
    # DINOv2: fpn = ViTDet's simple feature pyramid on the four token maps (new parameters, head lr),
    # resample = the token maps bilinearly resampled to strides 4-32 (no parameters)
    vit_neck: Literal["fpn", "resample"] = "fpn"
    decoder: Literal["daformer", "mlp"] = "daformer"
    decoder_channels: Annotated[int, COUNT] = 256
    aspp_dilations: Annotated[list[int], COUNT] = field(default_factory=lambda: [1, 6, 12, 18])
    aspp_separable: bool = True  # DAFormer; false = plain dilated convs (faster on CPU)
    aspp_squeeze: bool = False  # 1x1 reduction of the level concatenation before the context block
    bottleneck_kernel: Annotated[int, COUNT] = 3
    num_classes: Annotated[int, COUNT] = 8
    dropout: Annotated[float, Range(0, 1, hi_open=True)] = 0.1
    # classifier (mmseg conv_seg) initialised N(0, std²) with zero bias, as mmseg's decode heads; null: PyTorch's default
    classifier_init_std: Annotated[float | None, POSITIVE] = 0.01
    pixel_mean: Annotated[list[float], Length(3)] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    pixel_std: Annotated[list[float], Length(3), POSITIVE] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    hrda: HRDAConfig = field(default_factory=HRDAConfig)


@dataclass
class DatasetConfig:
    name: DatasetName = "synthetic"
    root: str | None = None  # real and folder datasets: the folder in its original layout
    split: str = "train"
    domain: Literal["source", "target"] = "source"  # synthetic only
    num_images: Annotated[int, COUNT] = 2000  # synthetic only
    height: Annotated[int, Range(8)] = 96  # synthetic only
    width: Annotated[int, Range(8)] = 192  # synthetic only
    seed: Annotated[int, NONNEG] = 0  # benchmark seed (not the training seed)
    clip_length: Annotated[int, COUNT] = 1  # synthetic: 1 = images, T > 1 = T-frame clips (video track)
    # synthetic clips: the flow items carry: exact (the renderer's) | dis (estimated by OpenCV DIS, as
    # `pipa flow` does, every pixel valid) | none (no flow: the temporal term pairs co-located cells)
    synthetic_flow: Literal["exact", "dis", "none"] = "exact"
    hflip: bool = True  # random horizontal flip (training only)
    on_error: Literal["raise", "skip"] = "raise"  # real and folder datasets: bad files found at indexing
    # real datasets: class set (0 = the benchmark's: 19, SYNTHIA 16/13, SYNTHIA-Seq 12, VIPER 15)
    classes: Literal[0, 12, 13, 15, 16, 19] = 0
    mapping: str | None = None  # folder datasets: a mapping JSON (raw value -> train id) instead of class ids
    resize: Annotated[list[int] | None, Length(2), COUNT] = None  # real datasets: (H, W) items are resized to
    crop: Annotated[list[int] | None, Length(2), COUNT] = None  # real datasets, training: random (H, W) crop
    # re-draw the crop (up to 10 times) while one class covers more than this share of its labelled
    # pixels (mmseg RandomCrop; DAFormer: 0.75 on GTA5 source crops); 1 = off
    cat_max_ratio: Annotated[float, Range(0, 1, lo_open=True)] = 1.0
    # target datasets: (top, bottom, left, right) pixel margins of the (resized) frame whose pseudo-labels
    # get weight 0, cropped with the image (HRDA's crop_pseudo_margins, "croppl v2": [30, 240, 30, 30])
    pseudo_margins: Annotated[list[int] | None, Length(4), NONNEG] = None
    frame_offset: Annotated[int, COUNT] = 1  # video datasets: the neighbour frame is t - frame_offset
    flow_root: str | None = None  # video datasets: folder of backward flows t -> t-k (optional)
    flow_format: Literal["npy", "kitti"] = "npy"  # npy (DA-VSN/TPS int16 x10) | kitti (16-bit PNG)
    # real datasets: decode every label when indexing, so label values outside the mapping stop the run
    # (or are skipped) before training rather than halfway; false saves that pass on huge sources
    verify_labels: bool = True


@dataclass
class DataConfig:
    source: DatasetConfig = field(default_factory=DatasetConfig)
    target: DatasetConfig | None = field(default_factory=lambda: DatasetConfig(domain="target"))
    val: DatasetConfig = field(
        default_factory=lambda: DatasetConfig(domain="target", split="val", num_images=300, hflip=False)
    )
    batch_size: Annotated[int, COUNT] = 8  # per rank, per domain
    num_workers: Annotated[int, NONNEG] = 0
    cache_dir: str | None = None  # synthetic render cache (default ~/.cache/pipa)


@dataclass
class OptimConfig:
    lr: Annotated[float, POSITIVE] = 1e-3
    head_lr_mult: Annotated[float, NONNEG] = 10.0  # decoder lr = lr * head_lr_mult (DAFormer: 10)
    weight_decay: Annotated[float, NONNEG] = 0.01
    betas: Annotated[list[float], Length(2), Range(0, 1, hi_open=True)] = field(default_factory=lambda: [0.9, 0.999])
    warmup_iters: Annotated[int, NONNEG] = 100
    warmup_ratio: Annotated[float, UNIT] = 1e-6
    poly_power: Annotated[float, NONNEG] = 1.0
    grad_clip: Annotated[float | None, POSITIVE] = None
    decay_norms: bool = False  # weight decay on normalisation layers (DAFormer/MIC: none, decay_mult 0 on 'norm')
    fused: Literal["auto", "on", "off"] = "auto"  # fused AdamW kernel: auto = on with CUDA (same update, fewer kernels)
    # ViT encoders (DINOv2): transformer block i of L at lr * layer_decay^(L-1-i), the stem (embeddings,
    # tokens, final norm) at lr * layer_decay^L; 1 = off (VFM-UDA's default). Other encoders: ignored
    layer_decay: Annotated[float, Range(0, 1, lo_open=True)] = 1.0


@dataclass
class TeacherConfig:
    alpha: Annotated[float, UNIT] = 0.999  # EMA α (DAFormer warm-up α_t = min(1 - 1/(t+1), α))
    # train_bn (batch statistics, dropout off: DAFormer parity) | eval (running statistics)
    mode: Literal["train_bn", "eval"] = "train_bn"
    buffers: Literal["copy", "average"] = "copy"  # the student's BN running statistics
    pseudo_threshold: Annotated[float, UNIT] = 0.968  # τ of the confidence weight q (DACS)
    weight: Literal["fraction", "pixel"] = "fraction"  # q per image (DACS) | per pixel
    ignore_top: Annotated[int, NONNEG] = 0  # pseudo-label rows given weight 0 (DAFormer: 15 on Cityscapes 512 crops)
    ignore_bottom: Annotated[int, NONNEG] = 0  # (DAFormer: 120)


@dataclass
class AugConfig:
    """Strong augmentation of mixed images (DACS/DAFormer), also used by source_only_aug."""

    # probability that an image is colour-jittered. DACS/DAFormer jitter when U(0,1) > 0.2, i.e. with
    # probability 0.8 (the real-benchmark presets use 0.8); the CPU demo preset keeps its measured 0.2
    jitter_p: Annotated[float, UNIT] = 0.8
    jitter_strength: Annotated[float, NONNEG] = 0.2
    # reference: DACS's kornia ColorJitter (additive brightness, hue ±strength of a turn, random order);
    # pipa: multiplicative brightness, hue ±strength·90°, fixed order (the CPU demo's measured setting)
    jitter_ops: Literal["reference", "pipa"] = "reference"
    blur_p: Annotated[float, UNIT] = 0.5
    blur_sigma: Annotated[list[float], Length(2), NONNEG] = field(default_factory=lambda: [0.15, 1.15])


@dataclass
class RCSConfig:
    temperature: Annotated[float, POSITIVE] = 0.01  # T of P(c) ∝ exp((1 - f_c)/T)
    min_pixels: Annotated[int, NONNEG] = 16  # an image qualifies for class c with at least this many pixels of it
    # cropped datasets: re-crop the sampled image (up to 10 times) until the crop holds more than
    # min_crop_ratio * min_pixels pixels of the sampled class (DAFormer: 0.5)
    min_crop_ratio: Annotated[float, NONNEG] = 0.5


@dataclass
class FDConfig:
    weight: Annotated[float, NONNEG] = 0.005  # λ_fd (0 disables)
    classes: Annotated[list[int], NONNEG] = field(default_factory=lambda: [5, 6])  # thing classes (synthetic: car, person)
    min_ratio: Annotated[float, UNIT] = 0.75


@dataclass
class MICConfig:
    weight: Annotated[float, NONNEG] = 1.0  # λ_mic (0 disables)
    # pixels; 0 = auto: 1/16 of the image height, the reference's ratio (32 on DAFormer's 512 crops, 64 on HRDA's 1024)
    block_size: Annotated[int, NONNEG] = 0
    mask_ratio: Annotated[float, UNIT] = 0.7
    # what masked blocks show: mean (MIC masks the normalised image, so blocks take the mean colour) | zero (black)
    fill: Literal["mean", "zero"] = "mean"


@dataclass
class PixelTermConfig:
    """L_pix: pixel-wise contrast (spec "Pixel-wise contrast", "Task-smart sampling")."""

    weight: Annotated[float, NONNEG] = 0.1  # λ_pix (0: the term is not built)
    start: Annotated[int, NONNEG] = 0  # first iteration the term is on
    temperature: Annotated[float, POSITIVE] = 0.1  # τ
    max_anchors: Annotated[int, COUNT] = 512  # |A| per step
    max_per_class: Annotated[int, COUNT] = 64
    min_pixels: Annotated[int, NONNEG] = 8  # classes with fewer feature cells in the batch are skipped
    hard_ratio: Annotated[float, UNIT] = 0.5  # share of each class's anchors that are hard
    hard_confidence: Annotated[float, UNIT] = 0.9  # student max probability below this counts as hard
    # target cells (and memory entries) need teacher confidence above this to get a pseudo-label; 0.8
    # was chosen on the built-in benchmark (3 seeds, README); the DACS pseudo-label threshold is 0.968
    target_threshold: Annotated[float, UNIT] = 0.8
    memory_per_class: Annotated[int, NONNEG] = 64  # memory entries drawn per class per step (0 = all)


@dataclass
class PatchTermConfig:
    """L_patch: patch-wise contrast between two views of the same target patch."""

    weight: Annotated[float, NONNEG] = 0.1  # λ_patch (0: the term is not built)
    start: Annotated[int, NONNEG] = 0
    temperature: Annotated[float, POSITIVE] = 0.1
    views: Literal["student_teacher", "student_student"] = "student_teacher"
    negatives: Literal["semantic", "location"] = "semantic"  # other pseudo-label | any other place
    # crop size / image size (h, w)
    crop: Annotated[list[float], Length(2), Range(0, 1, lo_open=True)] = field(default_factory=lambda: [0.5, 0.5])
    iou: Annotated[list[float], Length(2), UNIT] = field(default_factory=lambda: [0.1, 1.0])  # student_student
    max_anchors: Annotated[int, COUNT] = 256
    num_negatives: Annotated[int, COUNT] = 256


@dataclass
class TemporalTermConfig:
    """L_temp: cross-frame contrast on target clips (video track)."""

    weight: Annotated[float, NONNEG] = 0.1  # λ_temp (0: the term is not built)
    start: Annotated[int, NONNEG] = 0
    temperature: Annotated[float, POSITIVE] = 0.1
    use_flow: bool = True  # add the flow-corresponding cell as a positive (occlusion-checked)
    max_anchors: Annotated[int, COUNT] = 512
    max_per_class: Annotated[int, COUNT] = 64
    hard_ratio: Annotated[float, UNIT] = 0.5  # share of temporally unstable anchors
    max_contrast: Annotated[int, COUNT] = 1024  # cells of frame τ-k in the contrast set
    memory_per_class: Annotated[int, NONNEG] = 32  # memory entries per class added to the contrast set (0 = none)


@dataclass
class MemoryConfig:
    """Semantic-aware memory: class-wise FIFO queues of embeddings by the teacher-side (EMA) head:
    the teacher's features of confidently pseudo-labelled target cells, and source cells (ground
    truth) with the features ``source`` names."""

    size_per_class: Annotated[int, NONNEG] = 512  # 0 disables the memory
    push_per_class: Annotated[int, COUNT] = 64  # entries pushed per class per step (class-balanced)
    # source cells (ground truth) pushed too: teacher (spec; one more teacher forward per step),
    # student (its detached source features, no extra pass) or off (target cells only)
    source: Literal["teacher", "student", "off"] = "student"


@dataclass
class PiPaConfig:
    """PiPa++ terms added to a base recipe (methods ``pipa`` and ``pipa_video``)."""

    base: BaseRecipe = "self_training"
    embed_dim: Annotated[int, COUNT] = 64  # D of the projection heads
    hidden_dim: Annotated[int, NONNEG] = 0  # hidden width of the heads (0 = decoder channels)
    pixel: PixelTermConfig = field(default_factory=PixelTermConfig)
    patch: PatchTermConfig = field(default_factory=PatchTermConfig)
    temporal: TemporalTermConfig = field(default_factory=TemporalTermConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)


@dataclass
class TermConfig:
    """One extra term added to the method's own (``method.terms``): a registered term name, its weight
    λ and the first iteration it is on. Its other settings come from its own config section."""

    name: str = ""
    weight: Annotated[float, NONNEG] = 1.0
    start: Annotated[int, NONNEG] = 0


@dataclass
class MethodConfig:
    name: MethodName = "source_only"
    # extra terms on top of the method's own, e.g. [{name: pixel_contrast, weight: 0.1}] on mic
    terms: list[TermConfig] = field(default_factory=list)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    aug: AugConfig = field(default_factory=AugConfig)
    rcs: RCSConfig = field(default_factory=RCSConfig)
    fd: FDConfig = field(default_factory=FDConfig)
    mic: MICConfig = field(default_factory=MICConfig)
    pipa: PiPaConfig = field(default_factory=PiPaConfig)


@dataclass
class TrainConfig:
    iterations: Annotated[int, COUNT] = 1500
    seed: Annotated[int, NONNEG] = 0
    eval_interval: Annotated[int, NONNEG] = 500  # 0: evaluate at the end only
    checkpoint_interval: Annotated[int, NONNEG] = 500
    log_interval: Annotated[int, COUNT] = 50
    # auto = off (fp32, TF32 matmuls allowed on CUDA), as the reference recipes train and evaluate;
    # bf16 | fp16: autocast, an explicit choice (faster, less memory, not the published numerics)
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    out_dir: str = "runs/train"
    eval_batch_size: Annotated[int, COUNT] = 16
    threads: Annotated[int, NONNEG] = 0  # torch.set_num_threads on CPU (0: leave as is)
    overwrite: bool = False  # allow a fresh run in a folder that holds a checkpoint
    debug_interval: Annotated[int, NONNEG] = 0  # write debug image grids (source, target, mix, pseudo-labels) every N its
    # gradient accumulation: each optimiser step sums the gradients of `accumulate` micro-batches of
    # data.batch_size (the same update as one batch of accumulate x batch_size without batch-norm coupling)
    accumulate: Annotated[int, COUNT] = 1
    compile: bool = False  # torch.compile the student, teacher and frozen encoder (see README, GPU figures)
    channels_last: Literal["auto", "on", "off"] = "auto"  # auto: on with CUDA (convolutions in NHWC)
    checkpointing: bool = False  # activation checkpointing of the encoder: less memory, ~1 more forward
    # source and mixed batches share one encoder pass when the encoder has no batch norm (MiT): the
    # same losses and gradients (up to drop-path draws), ~40% fewer kernel launches per step
    shared_encoder: bool = True
    # the non-finite-loss guard reads its flag on the host: auto = every step on the CPU (free there),
    # every log_interval on a GPU (no host synchronisation per step); the checkpoint is never poisoned
    finite_check: Literal["auto", "step", "log"] = "auto"


@dataclass
class EvalConfig:
    """How the target is evaluated (``datasets.md`` §2)."""

    # which mIoUs are reported
    protocol: Literal["all", "gta2cs", "syn2cs", "synseq2csseq", "viper2csseq"] = "all"
    input_size: Annotated[list[int] | None, Length(2), COUNT] = None  # (H, W) images are resized to before inference
    mode: Literal["whole", "slide"] = "whole"  # whole image | sliding window
    crop: Annotated[list[int], Length(2), COUNT] = field(default_factory=lambda: [1024, 1024])  # slide window (H, W)
    stride: Annotated[list[int], Length(2), COUNT] = field(default_factory=lambda: [512, 512])
    align_corners: bool = False  # logit upsampling to the label grid: mmseg false, ADVENT family true


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# ---------------------------------------------------------------------------------------------
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, include_extras=True)


def _annotations(tp: Any) -> tuple[Any, list[Any]]:
    """``Annotated[T, a, b]`` -> (T, [a, b]); anything else -> (tp, [])."""
    if typing.get_origin(tp) is Annotated:
        base, *extras = typing.get_args(tp)
        return base, list(extras)
    return tp, []


def _optional_inner(tp: Any) -> tuple[Any, bool]:
    tp, _ = _annotations(tp)
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _all_keys(cls: type, prefix: str = "") -> list[str]:
    keys = []
    for name, tp in _hints(cls).items():
        inner, _ = _optional_inner(tp)
        full = f"{prefix}{name}"
        keys.append(full)
        if dataclasses.is_dataclass(inner):
            keys += _all_keys(inner, full + ".")
    return keys


def _unknown(key: str, root: type, where: str) -> ConfigError:
    near = difflib.get_close_matches(key, _all_keys(root), n=1, cutoff=0.5)
    hint = f" (did you mean '{near[0]}'?)" if near else ""
    return ConfigError(f"unknown config key '{key}'{where}{hint}")


def _choice_error(key: str, value: Any, allowed: list[Any]) -> ConfigError:
    near = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1, cutoff=0.5)
    hint = f" (did you mean '{near[0]}'?)" if near else ""
    return ConfigError(f"config key '{key}' must be one of {', '.join(map(str, allowed))}; got {value!r}{hint}")


def _number(value: Any, key: str, kind: type) -> Any:
    """YAML reads ``3e-4`` (no dot) as a string: numbers written that way are accepted too."""
    if isinstance(value, str) and kind is float:
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
        what = "an integer" if kind is int else "a number"
        raise ConfigError(f"config key '{key}' must be {what}, got {value!r}")
    if kind is float and not math.isfinite(value):
        raise ConfigError(f"config key '{key}' must be a finite number, got {value!r}")
    return kind(value)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the schema type ``tp`` (with its ``Range``/``Length``/``Literal``)."""
    _, extras = _annotations(tp)
    inner, optional = _optional_inner(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"config key '{key}' may not be null")
    if inner is Any:
        return value
    if dataclasses.is_dataclass(inner):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' must be a mapping, got {value!r}")
        return value  # merged field by field by the caller
    origin = typing.get_origin(inner)
    if origin is Literal:
        allowed = list(typing.get_args(inner))
        if value not in allowed or isinstance(value, bool):
            raise _choice_error(key, value, allowed)
        return value
    if origin is list:
        (elem,) = typing.get_args(inner)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}' must be a list, got {value!r}")
        for a in extras:
            if isinstance(a, Length) and len(value) != a.n:
                raise ConfigError(f"config key '{key}' must be a list of {a.n} values, got {list(value)!r}")
        if dataclasses.is_dataclass(elem):
            return [merge(elem(), _coerce(v, elem, f"{key}[{i}]"), Config, f"{key}[{i}].") for i, v in enumerate(value)]
        return [_check_range(_coerce(v, elem, key), extras, key) for v in value]
    if inner is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}' must be true or false, got {value!r}")
    if inner in (int, float):
        return _check_range(_number(value, key, inner), extras, key)
    if inner is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"config key '{key}' must be a string, got {value!r}")
    return value


def _check_range(value: Any, extras: list[Any], key: str) -> Any:
    for a in extras:
        if isinstance(a, Range) and isinstance(value, (int, float)) and not a.holds(value):
            raise ConfigError(f"config key '{key}' must be {a}, got {value!r}")
    return value


def merge(obj: Any, values: dict[str, Any], root: type = Config, prefix: str = "", where: str = "") -> Any:
    """Return a copy of dataclass ``obj`` with ``values`` (nested dicts) applied, checked."""
    hints = _hints(type(obj))
    updates = {}
    for key, value in values.items():
        full = f"{prefix}{key}"
        if key not in hints:
            raise _unknown(full, root, where)
        tp = hints[key]
        inner, _ = _optional_inner(tp)
        value = _coerce(value, tp, full)
        if dataclasses.is_dataclass(inner) and value is not None:
            current = getattr(obj, key)
            if current is None:
                current = inner()
            value = merge(current, value, root, full + ".", where)
        updates[key] = value
    return dataclasses.replace(obj, **updates)


def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override '{text}' has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def _nest(path: list[str], value: Any) -> dict[str, Any]:
    out: Any = value
    for part in reversed(path):
        out = {part: out}
    return out


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        at = f" line {line + 1}" if line is not None else ""
        raise ConfigError(f"cannot parse YAML {path}{at}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


PRESET_DIR = Path(__file__).parent / "configs"


def resolve_preset(name: str | Path, relative_to: Path | None = None) -> Path:
    """A YAML path (relative to ``relative_to``'s folder if given), or the name of a preset shipped
    with pipa (``synthetic``, ``gta2cs_daformer.yaml``)."""
    p = Path(name)
    candidates = [relative_to.parent / p] if relative_to is not None and not p.is_absolute() else []
    candidates += [p, PRESET_DIR / p, PRESET_DIR / f"{p}.yaml"]
    for cand in candidates:
        if cand.is_file():
            return cand.resolve()
    presets = ", ".join(sorted(q.stem for q in PRESET_DIR.glob("*.yaml")))
    where = f" (in {relative_to})" if relative_to is not None else ""
    raise ConfigError(f"config file not found: {name}{where}; shipped presets: {presets}")


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Build a :class:`Config` from an optional YAML preset plus ``key=value`` overrides."""
    cfg = Config()
    if path is not None:
        chain = [(Path(path), _read_yaml(Path(path)))]  # the preset, its base, the base's base, ...
        while (base := chain[-1][1].pop("base", None)) is not None:
            base_path = resolve_preset(str(base), chain[-1][0])
            if base_path in [p.resolve() for p, _ in chain] or len(chain) > 4:
                raise ConfigError(f"{chain[-1][0]}: 'base: {base}' makes a cycle or a chain of over 4 presets")
            chain.append((base_path, _read_yaml(base_path)))
        for where, data in reversed(chain):  # the farthest base first, the preset itself last
            cfg = merge(cfg, data, where=f" in {where}")
    for text in overrides:
        keys, value = _parse_override(text)
        cfg = merge(cfg, _nest(keys, value), where=" on the command line")
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Checks across fields that a field's own type cannot express (types, choices and ranges are
    checked by :func:`merge` as values are read)."""
    sigma = cfg.method.aug.blur_sigma
    if sigma[0] > sigma[1]:
        raise ConfigError(f"config key 'method.aug.blur_sigma' must be [low, high] with low <= high, got {sigma}")
    iou = cfg.method.pipa.patch.iou
    if iou[0] > iou[1]:
        raise ConfigError(f"config key 'method.pipa.patch.iou' must be [low, high] with low <= high, got {iou}")
    for role in ("source", "target", "val"):
        ds = getattr(cfg.data, role)
        for key in ("resize", "crop"):
            if ds is not None and ds.name == "synthetic" and getattr(ds, key) is not None:
                raise ConfigError(f"config key 'data.{role}.{key}' does not apply to the synthetic benchmark (it is "
                                  f"rendered at data.{role}.height x width): set those instead")
    K = cfg.model.num_classes
    bad = [c for c in cfg.method.fd.classes if c >= K]
    if bad:
        raise ConfigError(f"config key 'method.fd.classes' holds class ids {bad} >= model.num_classes={K}")
    seen: set[str] = set()
    for i, term in enumerate(cfg.method.terms):
        if term.name not in KNOWN_TERMS:
            raise _choice_error(f"method.terms[{i}].name", term.name, sorted(KNOWN_TERMS))
        if term.name in seen:
            raise ConfigError(f"config key 'method.terms[{i}].name': term '{term.name}' is listed twice")
        seen.add(term.name)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def from_dict(data: dict[str, Any]) -> Config:
    return merge(Config(), data)


def git_revision() -> str:
    """The source tree's git revision (with ``-dirty``), or ``unknown``."""
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True, text=True, timeout=5
        ).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
