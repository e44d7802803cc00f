"""Configuration: dataclasses are the schema, YAML files are presets, ``key=value`` overrides.

A YAML preset may name one ``base:`` preset (a path relative to itself, one level only). Unknown
keys are rejected with the nearest valid name; values are checked against the field types.
"""

from __future__ import annotations

import dataclasses
import difflib
import subprocess
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml


class ConfigError(ValueError):
    """A bad configuration key or value (the message is one line and names the key)."""


@dataclass
class ModelConfig:
    backbone: str = "conv_small"  # conv_small | conv_base | mit_tiny | mit_b0 .. mit_b5
    pretrained: str | None = None  # hub id or local folder (MiT only)
    decoder: str = "daformer"  # daformer | mlp
    decoder_channels: int = 256
    aspp_dilations: list[int] = field(default_factory=lambda: [1, 6, 12, 18])
    aspp_separable: bool = True  # DAFormer; false = plain dilated convs (faster on CPU)
    aspp_squeeze: bool = False  # 1x1 reduction of the level concatenation before the context block
    bottleneck_kernel: int = 3
    num_classes: int = 8
    dropout: float = 0.1
    pixel_mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    pixel_std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])


@dataclass
class DatasetConfig:
    # synthetic | folder | gta5 | cityscapes | synthia | synthia_seq | viper | cityscapes_seq
    name: str = "synthetic"
    root: str | None = None  # real and folder datasets: the folder in its original layout
    split: str = "train"
    domain: str = "source"  # synthetic only
    num_images: int = 2000  # synthetic only
    height: int = 96  # synthetic only
    width: int = 192  # synthetic only
    seed: int = 0  # benchmark seed (not the training seed)
    clip_length: int = 1  # synthetic: 1 = images, T > 1 = T-frame clips (video track)
    hflip: bool = True  # random horizontal flip (training only)
    on_error: str = "raise"  # real and folder datasets: raise | skip bad files found at indexing
    classes: int = 0  # real datasets: class set (0 = the benchmark's: 19, SYNTHIA 16/13, SYNTHIA-Seq 12, VIPER 15)
    mapping: str | None = None  # folder datasets: a mapping JSON (raw value -> train id) instead of class ids
    resize: list[int] | None = None  # real datasets: (H, W) every item is resized to (GTA5 [720, 1280])
    crop: list[int] | None = None  # real datasets, training: random (H, W) crop after resizing ([512, 512])
    frame_offset: int = 1  # video datasets: the neighbour frame is t - frame_offset
    flow_root: str | None = None  # video datasets: folder of backward flows t -> t-k (optional)
    flow_format: str = "npy"  # npy (DA-VSN/TPS int16 x10) | kitti (16-bit PNG)
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
    batch_size: int = 8  # per rank, per domain
    num_workers: int = 0
    cache_dir: str | None = None  # synthetic render cache (default ~/.cache/pipa)


@dataclass
class OptimConfig:
    lr: float = 1e-3
    head_lr_mult: float = 10.0  # decoder lr = lr * head_lr_mult (DAFormer: 10)
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_iters: int = 100
    warmup_ratio: float = 1e-6
    poly_power: float = 1.0
    grad_clip: float | None = None


@dataclass
class TeacherConfig:
    alpha: float = 0.999  # EMA α (DAFormer warm-up α_t = min(1 - 1/(t+1), α))
    mode: str = "train_bn"  # train_bn (batch statistics, dropout off: DAFormer parity) | eval
    buffers: str = "copy"  # copy | average the student's BN running statistics
    pseudo_threshold: float = 0.968  # τ of the confidence weight q (DACS)
    weight: str = "fraction"  # fraction (q per image, DACS) | pixel
    ignore_top: int = 0  # pseudo-label rows given weight 0 (DAFormer: 15 on Cityscapes 512 crops)
    ignore_bottom: int = 0  # (DAFormer: 120)


@dataclass
class AugConfig:
    """Strong augmentation of mixed images (DACS/DAFormer), also used by source_only_aug."""

    jitter_p: float = 0.2
    jitter_strength: float = 0.2
    blur_p: float = 0.5
    blur_sigma: list[float] = field(default_factory=lambda: [0.15, 1.15])


@dataclass
class RCSConfig:
    temperature: float = 0.01  # T of P(c) ∝ exp((1 - f_c)/T)
    min_pixels: int = 16  # an image qualifies for class c with at least this many pixels of it


@dataclass
class FDConfig:
    weight: float = 0.005  # λ_fd (0 disables)
    classes: list[int] = field(default_factory=lambda: [5, 6])  # thing classes (synthetic: car, person)
    min_ratio: float = 0.75


@dataclass
class MICConfig:
    weight: float = 1.0  # λ_mic
    block_size: int = 16  # pixels (MIC: 64 on 512 crops)
    mask_ratio: float = 0.7


@dataclass
class PixelTermConfig:
    """L_pix: pixel-wise contrast (spec "Pixel-wise contrast", "Task-smart sampling")."""

    weight: float = 0.1  # λ_pix
    start: int = 0  # first iteration the term is on
    temperature: float = 0.1  # τ
    max_anchors: int = 512  # |A| per step
    max_per_class: int = 64
    min_pixels: int = 8  # classes with fewer feature cells in the batch are skipped
    hard_ratio: float = 0.5  # share of each class's anchors that are hard
    hard_confidence: float = 0.9  # student max probability below this counts as hard
    # target cells (and memory entries) need teacher confidence above this to get a pseudo-label; 0.8
    # was chosen on the built-in benchmark (3 seeds, README); the DACS pseudo-label threshold is 0.968
    target_threshold: float = 0.8
    memory_per_class: int = 64  # memory entries drawn per class per step into the contrast set (0 = all)


@dataclass
class PatchTermConfig:
    """L_patch: patch-wise contrast between two views of the same target patch."""

    weight: float = 0.1  # λ_patch
    start: int = 0
    temperature: float = 0.1
    views: str = "student_teacher"  # student_teacher | student_student
    negatives: str = "semantic"  # semantic (other pseudo-label) | location (any other place)
    crop: list[float] = field(default_factory=lambda: [0.5, 0.5])  # crop size / image size (h, w)
    iou: list[float] = field(default_factory=lambda: [0.1, 1.0])  # student_student overlap IoU range
    max_anchors: int = 256
    num_negatives: int = 256


@dataclass
class TemporalTermConfig:
    """L_temp: cross-frame contrast on target clips (video track)."""

    weight: float = 0.1  # λ_temp
    start: int = 0
    temperature: float = 0.1
    use_flow: bool = True  # add the flow-corresponding cell as a positive (occlusion-checked)
    max_anchors: int = 512
    max_per_class: int = 64
    hard_ratio: float = 0.5  # share of temporally unstable anchors
    max_contrast: int = 1024  # cells of frame τ-k in the contrast set
    memory_per_class: int = 32  # memory entries per class added to the contrast set (0 = none)


@dataclass
class MemoryConfig:
    """Semantic-aware memory: class-wise FIFO queues of teacher embeddings."""

    size_per_class: int = 512  # 0 disables the memory
    push_per_class: int = 64  # entries pushed per class per step (class-balanced)
    # source cells (ground truth) pushed too: teacher (spec; one more teacher forward per step),
    # student (its detached source features, no extra pass) or off (target cells only)
    source: str = "student"


@dataclass
class PiPaConfig:
    """PiPa++ terms added to a base recipe (methods ``pipa`` and ``pipa_video``)."""

    base: str = "self_training"  # self_training | daformer | mic
    embed_dim: int = 64  # D of the projection heads
    hidden_dim: int = 0  # hidden width of the heads (0 = decoder channels)
    pixel: PixelTermConfig = field(default_factory=PixelTermConfig)
    patch: PatchTermConfig = field(default_factory=PatchTermConfig)
    temporal: TemporalTermConfig = field(default_factory=TemporalTermConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)


@dataclass
class MethodConfig:
    name: str = "source_only"
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    aug: AugConfig = field(default_factory=AugConfig)
    rcs: RCSConfig = field(default_factory=RCSConfig)
    fd: FDConfig = field(default_factory=FDConfig)
    mic: MICConfig = field(default_factory=MICConfig)
    pipa: PiPaConfig = field(default_factory=PiPaConfig)


@dataclass
class TrainConfig:
    iterations: int = 1500
    seed: int = 0
    eval_interval: int = 500
    checkpoint_interval: int = 500
    log_interval: int = 50
    amp: str = "auto"  # auto (bf16 on CUDA) | bf16 | fp16 | off
    device: str = "auto"  # auto | cpu | cuda
    out_dir: str = "runs/train"
    eval_batch_size: int = 16
    threads: int = 0  # torch.set_num_threads on CPU (0: leave as is)
    overwrite: bool = False  # allow a fresh run in a folder that holds a checkpoint
    debug_interval: int = 0  # write debug image grids (source, target, mix, pseudo-labels) every N its


@dataclass
class EvalConfig:
    """How the target is evaluated (``datasets.md`` §2)."""

    protocol: str = "all"  # all | gta2cs | syn2cs | synseq2csseq | viper2csseq (which mIoUs are reported)
    input_size: list[int] | None = None  # (H, W) images are resized to before inference (e.g. [512, 1024])
    mode: str = "whole"  # whole | slide (sliding window)
    crop: list[int] = field(default_factory=lambda: [1024, 1024])  # slide window (H, W)
    stride: list[int] = field(default_factory=lambda: [512, 512])
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
    return typing.get_type_hints(cls)


def _optional_inner(tp: Any) -> tuple[Any, bool]:
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


def _coerce(value: Any, tp: Any, key: str) -> Any:
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
    if origin is list:
        (elem,) = typing.get_args(inner)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}' must be a list, got {value!r}")
        return [_coerce(v, elem, key) for v in value]
    if inner is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}' must be true or false, got {value!r}")
    if inner is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"config key '{key}' must be an integer, got {value!r}")
    if inner is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"config key '{key}' must be a number, got {value!r}")
    if inner is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"config key '{key}' must be a string, got {value!r}")
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


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Build a :class:`Config` from an optional YAML preset plus ``key=value`` overrides."""
    cfg = Config()
    if path is not None:
        path = Path(path)
        data = _read_yaml(path)
        base = data.pop("base", None)
        if base is not None:
            base_path = (path.parent / str(base)).resolve()
            base_data = _read_yaml(base_path)
            if "base" in base_data:
                raise ConfigError(f"{base_path}: 'base' presets may not have a base of their own (one level only)")
            cfg = merge(cfg, base_data, where=f" in {base_path}")
        cfg = merge(cfg, data, where=f" in {path}")
    for text in overrides:
        keys, value = _parse_override(text)
        cfg = merge(cfg, _nest(keys, value), where=" on the command line")
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Cross-field checks that a type alone cannot express."""
    choices = {
        "train.amp": (cfg.train.amp, ("auto", "bf16", "fp16", "off")),
        "train.device": (cfg.train.device, ("auto", "cpu", "cuda")),
        "model.decoder": (cfg.model.decoder, ("daformer", "mlp")),
        "eval.mode": (cfg.eval.mode, ("whole", "slide")),
        "eval.protocol": (cfg.eval.protocol, ("all", "gta2cs", "syn2cs", "synseq2csseq", "viper2csseq")),
        "method.pipa.base": (cfg.method.pipa.base, ("self_training", "daformer", "mic")),
        "method.pipa.patch.views": (cfg.method.pipa.patch.views, ("student_teacher", "student_student")),
        "method.pipa.patch.negatives": (cfg.method.pipa.patch.negatives, ("semantic", "location")),
        "method.pipa.memory.source": (cfg.method.pipa.memory.source, ("teacher", "student", "off")),
    }
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise ConfigError(f"config key '{key}' must be one of {', '.join(allowed)}; got {value!r}")
    positive = {
        "train.iterations": cfg.train.iterations,
        "data.batch_size": cfg.data.batch_size,
        "model.num_classes": cfg.model.num_classes,
        "train.eval_batch_size": cfg.train.eval_batch_size,
    }
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"config key '{key}' must be positive, got {value}")
    for term in ("pixel", "patch", "temporal"):
        if getattr(cfg.method.pipa, term).temperature <= 0:
            raise ConfigError(f"config key 'method.pipa.{term}.temperature' must be positive")
    if cfg.optim.lr <= 0:
        raise ConfigError(f"config key 'optim.lr' must be positive, got {cfg.optim.lr}")
    if len(cfg.model.pixel_mean) != 3 or len(cfg.model.pixel_std) != 3:
        raise ConfigError("config keys 'model.pixel_mean' and 'model.pixel_std' need 3 values each")


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
