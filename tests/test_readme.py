"""The README's Python examples run as written (issue 17), in a folder laid out as after ``make demo``."""

import re
import subprocess
import sys
from pathlib import Path

from conftest import PRESET, ROOT, tiny_overrides

from pipa.cli import main


def readme_block(tag: str) -> str:
    text = (ROOT / "README.md").read_text()
    m = re.search(rf"<!-- readme-example: {tag} -->\s*```python\n(.*?)```", text, re.S)
    assert m, f"no README block tagged {tag}"
    return "\n".join(line[2:] if line.startswith("  ") else line for line in m.group(1).splitlines())


def test_python_api_example_runs_as_written(tmp_path):
    """The block, unchanged, in a fresh interpreter whose working folder holds a trained run at
    runs/demo/image/pipa/seed0 (the demo's path; tiny here); it prints the documented shapes."""
    run = tmp_path / "runs" / "demo" / "image" / "pipa" / "seed0"
    assert main(["train", str(PRESET), *tiny_overrides(run, iterations=2), "method.name=pipa"]) == 0
    code = readme_block("python-api")
    env = {"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "torch.Size([2, 96, 192]) torch.Size([2, 8, 96, 192]) torch.Size([1, 120, 240])" in proc.stdout, proc.stdout


def test_pipa_train_from_python(tmp_path):
    """``pipa.train(preset, overrides, **keys)``: keyword keys with __ for dots land in the run's
    config; a typo names the key; the result is the trained run."""
    import pytest
    import yaml

    import pipa
    from pipa.config import ConfigError

    ov = tiny_overrides(tmp_path / "r", iterations=2)
    res = pipa.train(str(PRESET), ov, train__seed=7, optim__lr=0.0003, data__source__hflip=False)
    cfg = yaml.safe_load((Path(res.out_dir) / "config.yaml").read_text())
    assert cfg["train"]["seed"] == 7 and cfg["optim"]["lr"] == 0.0003 and res.iterations == 2
    assert cfg["train"]["iterations"] == 2 and cfg["data"]["source"]["hflip"] is False
    with pytest.raises(ConfigError, match="train.iteratons"):
        pipa.train("synthetic", ov, train__iteratons=3)
