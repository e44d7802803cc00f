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


def test_base_one_level(tmp_path):
    (tmp_path / "a.yaml").write_text("train: {iterations: 11, seed: 3}\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\ntrain: {iterations: 12}\n")
    cfg = load_config(tmp_path / "b.yaml")
    assert (cfg.train.iterations, cfg.train.seed) == (12, 3)
    (tmp_path / "c.yaml").write_text("base: b.yaml\n")
    with pytest.raises(ConfigError, match="one level"):
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

