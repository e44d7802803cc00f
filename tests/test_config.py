import pytest

from pipa.config import Config, ConfigError, load_config
from conftest import PRESET


def test_defaults_and_override_types():
    cfg = load_config(PRESET, ["train.iterations=7", "optim.lr=0.5", "model.aspp_dilations=[1,2]", "optim.grad_clip=null"])
    assert cfg.train.iterations == 7 and cfg.optim.lr == 0.5
    assert cfg.model.aspp_dilations == [1, 2] and cfg.optim.grad_clip is None
    assert cfg.model.backbone == "conv_small"  # from the preset, not the dataclass default


def test_unknown_override_names_nearest_key():
    with pytest.raises(ConfigError) as e:
        load_config(PRESET, ["train.iteration=5"])
    msg = str(e.value)
    assert "train.iteration" in msg and "did you mean 'train.iterations'" in msg and "\n" not in msg


def test_unknown_key_in_yaml_names_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("optim:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"optim.learning_rate.*c.yaml"):
        load_config(p)


@pytest.mark.parametrize("ov,frag", [
    ("train.iterations=abc", "must be an integer"),
    ("data.source.hflip=3", "true or false"),
    ("train.amp=fp8", "must be one of"),
    ("train.iterations=0", "train.iterations.*must be at least 1"),
    ("optim.lr=0", "optim.lr.*must be positive"),
    ("noequals", "key=value"),
])
def test_bad_values(ov, frag):
    with pytest.raises(ConfigError, match=frag):
        load_config(PRESET, [ov])


def test_base_chain_nearest_wins(tmp_path):
    (tmp_path / "a.yaml").write_text("train: {iterations: 11, seed: 3, log_interval: 7}\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\ntrain: {iterations: 12}\n")
    cfg = load_config(tmp_path / "b.yaml")
    assert (cfg.train.iterations, cfg.train.seed) == (12, 3)
    (tmp_path / "c.yaml").write_text("base: b.yaml\ntrain: {seed: 5}\n")  # c over b over a
    cfg = load_config(tmp_path / "c.yaml")
    assert (cfg.train.iterations, cfg.train.seed, cfg.train.log_interval) == (12, 5, 7)
    (tmp_path / "a.yaml").write_text("base: c.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "c.yaml")


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("train: [1,\n")
    with pytest.raises(ConfigError, match="cannot parse"):
        load_config(tmp_path / "bad.yaml")


def test_nullable_section():
    cfg = load_config(None, ["data.target=null"])
    assert cfg.data.target is None
    assert isinstance(Config().data.target.num_images, int)


def test_every_shipped_preset_loads():
    from pathlib import Path

    presets = sorted((Path(PRESET).parent).glob("*.yaml"))
    assert len(presets) >= 2
    from pipa.methods import METHODS

    datasets = {"synthetic", "folder", "gta5", "cityscapes", "synthia", "synthia_seq", "viper", "cityscapes_seq"}
    for p in presets:
        cfg = load_config(p)
        assert cfg.method.name in METHODS and {cfg.data.source.name, cfg.data.val.name} <= datasets, p.name
    cfg = load_config(Path(PRESET).parent / "gta2cs_daformer.yaml")
    assert (cfg.model.backbone, cfg.optim.lr, cfg.train.iterations, cfg.data.batch_size) == ("mit_b5", 6e-5, 40000, 2)



# -- the schema walk: every enum, range and shape field rejects a bad value at load -------------
import dataclasses  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import typing  # noqa: E402

import yaml  # noqa: E402

from pipa.config import Length, Range  # noqa: E402


def _leaf_fields(cls=Config, prefix=""):
    for name, tp in typing.get_type_hints(cls, include_extras=True).items():
        extras = list(typing.get_args(tp)[1:]) if typing.get_origin(tp) is typing.Annotated else []
        base = typing.get_args(tp)[0] if extras else tp
        args = [a for a in typing.get_args(base) if a is not type(None)]
        inner = args[0] if typing.get_origin(base) in (typing.Union, __import__("types").UnionType) else base
        if dataclasses.is_dataclass(inner):
            yield from _leaf_fields(inner, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", inner, extras


def _bad_values(inner, extras):
    """Values that the schema must refuse for this field: one per constraint."""
    bad = []
    if typing.get_origin(inner) is typing.Literal:
        bad.append("not_a_choice")
    is_list = typing.get_origin(inner) is list
    elem = typing.get_args(inner)[0] if is_list else inner
    for a in extras:
        if isinstance(a, Range):
            v = (a.lo - 1 if not a.lo_open else a.lo) if a.lo is not None else a.hi + 1
            v = int(v) if elem is int else float(v)
            n = next((x.n for x in extras if isinstance(x, Length)), 1)
            bad.append([v] * n if is_list else v)
        if isinstance(a, Length):
            good = 1 if elem is int else 0.5
            bad.append([good] * (a.n + 1))
    return bad


CONSTRAINED = [(k, v) for k, inner, extras in _leaf_fields() for v in _bad_values(inner, extras)]


def test_schema_walk_finds_the_constrained_fields():
    keys = {k for k, _ in CONSTRAINED}
    assert len(keys) >= 80  # a walk that found nothing would test nothing
    for key in ("method.teacher.weight", "method.teacher.mode", "model.backbone", "data.source.name",
                "data.source.flow_format", "data.source.on_error", "method.pipa.pixel.hard_ratio",
                "method.pipa.patch.crop", "method.name", "optim.lr", "eval.stride"):
        assert key in keys, key


@pytest.mark.parametrize("key,value", CONSTRAINED, ids=[f"{k}={v}" for k, v in CONSTRAINED])
def test_every_enum_range_and_shape_field_rejects_a_bad_value(key, value):
    text = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
    with pytest.raises(ConfigError) as e:
        load_config(PRESET, [f"{key}={text}"])
    msg = str(e.value)
    assert f"'{key}'" in msg and "\n" not in msg, msg


def test_print_config_exits_2_at_once_naming_the_key():
    """Through the command line, as a user meets it: exit code 2, one line naming key and value."""
    from pipa.cli import main

    for key, value in CONSTRAINED:
        text = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
        assert main(["print-config", "synthetic", f"{key}={text}"]) == 2, key
    # and as a process (nothing is indexed or built: it returns within the interpreter start-up)
    p = subprocess.run([sys.executable, "-m", "pipa", "print-config", "synthetic", "method.teacher.mode=evall"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.strip() == ("pipa: error: config key 'method.teacher.mode' must be one of train_bn, eval; "
                                "got 'evall' (did you mean 'eval'?)")


@pytest.mark.parametrize("text", ["3e-4", "6e-5", "1e3", "3.0e-4"])
def test_exponent_numbers_are_numbers(text, tmp_path):
    """YAML 1.1 reads 3e-4 (no dot) as a string; float fields take it as the number it is."""
    assert load_config(PRESET, [f"optim.lr={text}"]).optim.lr == float(text)
    p = tmp_path / "c.yaml"
    p.write_text(f"optim:\n  lr: {text}\n")
    assert load_config(p).optim.lr == float(text)


def test_extra_terms_are_checked_at_load():
    cfg = load_config(PRESET, ["method.name=mic", "method.terms=[{name: pixel_contrast, weight: 0.1, start: 5}]"])
    assert (cfg.method.terms[0].name, cfg.method.terms[0].weight, cfg.method.terms[0].start) == ("pixel_contrast", 0.1, 5)
    with pytest.raises(ConfigError, match=r"method.terms\[0\].name.*did you mean 'pixel_contrast'"):
        load_config(PRESET, ["method.terms=[{name: pixel_contrst}]"])
    with pytest.raises(ConfigError, match=r"method.terms\[0\].wieght"):
        load_config(PRESET, ["method.terms=[{name: pixel_contrast, wieght: 1}]"])
    with pytest.raises(ConfigError, match="listed twice"):
        load_config(PRESET, ["method.terms=[{name: pixel_contrast}, {name: pixel_contrast}]"])
