import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Synthetic renders go to a per-session temp cache, never the user's ~/.cache."""
    cache = tmp_path_factory.getbasetemp() / "pipa-cache"
    monkeypatch.setenv("PIPA_CACHE", str(cache))
    yield


def tiny_overrides(out_dir, iterations=4, **extra):
    """key=value overrides for a seconds-long run on a tiny synthetic benchmark."""
    ov = {
        "train.out_dir": str(out_dir),
        "train.iterations": iterations,
        "train.eval_interval": 0,
        "train.checkpoint_interval": 0,
        "train.log_interval": 1,
        "optim.warmup_iters": 1,
        "data.batch_size": 2,
        "train.eval_batch_size": 4,
        "data.source.num_images": 8,
        "data.target.num_images": 8,
        "data.val.num_images": 4,
    }
    for k in ("source", "target", "val"):
        ov[f"data.{k}.height"] = 32
        ov[f"data.{k}.width"] = 64
    ov.update(extra)
    return [f"{k}={v}" for k, v in ov.items()]


PRESET = ROOT / "src" / "pipa" / "configs" / "synthetic.yaml"

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no network here: fail fast instead of retrying
