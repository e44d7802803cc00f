import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import PRESET, ROOT, tiny_overrides
from pipa.config import load_config
from pipa.core.io import atomic_write
from pipa.engine.checkpoint import load_checkpoint, save_checkpoint
from pipa.engine.schedule import lr_factor
from pipa.engine.trainer import train


def _params(path):
    state = torch.load(path, weights_only=True)
    return {k: v for k, v in state["method"].items()}


def test_train_writes_run_folder_and_weights_only_checkpoint(tmp_path):
    cfg = load_config(PRESET, tiny_overrides(tmp_path / "run"))
    res = train(cfg, progress="none")
    run = tmp_path / "run"
    for name in ("config.yaml", "run.json", "checkpoint.pt", "model.safetensors", "config.json", "metrics.jsonl"):
        assert (run / name).is_file(), name
    assert "git" in (run / "config.yaml").read_text().splitlines()[0]
    state = torch.load(run / "checkpoint.pt", weights_only=True)  # plain containers only
    assert state["iteration"] == 4 and "optimizer" in state and "rng" in state
    assert 0 <= res.miou <= 100 and len(res.per_class_iou) == 8
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["iteration"] == 4 and last["miou"] == pytest.approx(res.miou)


@pytest.mark.parametrize("method", ["source_only", "pipa"])
def test_resume_matches_uninterrupted_run(tmp_path, method):
    """Everything in the method state (for pipa: teacher, heads and the contrastive memory)
    ends identical whether or not the run was interrupted."""
    straight = load_config(PRESET, tiny_overrides(tmp_path / "a", iterations=6, **{"method.name": method}))
    train(straight, progress="none")
    # an interrupted run: checkpoint at 3, crash, resume from it
    mid = load_config(PRESET, tiny_overrides(tmp_path / "c", iterations=6, **{"train.checkpoint_interval": 3,
                                                                               "method.name": method}))
    _train_until(mid, 3)
    state = load_checkpoint(tmp_path / "c" / "checkpoint.pt")
    assert state["iteration"] == 3
    train(mid, resume=True, progress="none")
    a, c = _params(tmp_path / "a" / "checkpoint.pt"), _params(tmp_path / "c" / "checkpoint.pt")
    assert a.keys() == c.keys()
    for k in a:
        assert torch.allclose(a[k].float(), c[k].float(), atol=1e-6), k


def _train_until(cfg, stop_at):
    """Run the trainer but raise right after the checkpoint at ``stop_at`` (a simulated crash)."""
    import pipa.engine.callbacks as tr

    real = tr.save_checkpoint

    def crash_after(path, state):
        real(path, state)
        if state["iteration"] == stop_at:
            raise KeyboardInterrupt

    tr.save_checkpoint = crash_after
    try:
        with pytest.raises(KeyboardInterrupt):
            train(cfg, progress="none")
    finally:
        tr.save_checkpoint = real


def test_fresh_run_refuses_to_overwrite_a_checkpoint(tmp_path):
    cfg = load_config(PRESET, tiny_overrides(tmp_path / "r", iterations=1))
    train(cfg, progress="none")
    before = (tmp_path / "r" / "checkpoint.pt").read_bytes()
    with pytest.raises(FileExistsError, match="--resume"):
        train(cfg, progress="none")
    assert (tmp_path / "r" / "checkpoint.pt").read_bytes() == before
    again = load_config(PRESET, tiny_overrides(tmp_path / "r", iterations=1, **{"train.overwrite": "true"}))
    train(again, progress="none")


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    p = tmp_path / "ck.pt"
    save_checkpoint(p, {"format_version": 1, "x": torch.ones(2)})

    def broken(tmp):
        tmp.write_bytes(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(p, broken)
    assert torch.equal(torch.load(p, weights_only=True)["x"], torch.ones(2))
    assert [f.name for f in tmp_path.iterdir()] == ["ck.pt"]  # no temp file left behind


def test_corrupt_checkpoint_is_one_clear_error(tmp_path):
    p = tmp_path / "checkpoint.pt"
    p.write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="cannot read checkpoint"):
        load_checkpoint(p)


def test_lr_schedule_formula():
    # warm-up: linear ramp from ratio to 1 times poly; after: (1 - it/T)^p
    assert lr_factor(0, 100, 10, 0.0) == pytest.approx(0.0)
    assert lr_factor(5, 100, 10, 0.0) == pytest.approx(0.5 * 0.95)
    assert lr_factor(50, 100, 10, 0.0, 1.0) == pytest.approx(0.5)
    assert lr_factor(50, 100, 10, 0.0, 0.9) == pytest.approx(0.5**0.9)


@pytest.mark.parametrize("method", ["source_only", "self_training", "pipa"])
def test_ddp_two_ranks_gloo(tmp_path, method):
    """torchrun with 2 CPU ranks (gloo): trains, ranks stay in sync, rank 0 writes the checkpoint.
    self_training calls the DDP-wrapped student twice per step (source and mixed batches); pipa
    a third time (the patch crop), has DDP-wrapped heads and an all-gathered memory, which the
    sync check covers."""
    out = tmp_path / "ddp"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
           "-m", "pipa", "train", str(PRESET), *tiny_overrides(out, iterations=3, **{"method.name": method})]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ranks in sync" in proc.stdout
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["iteration"] == 3
    assert not any(k.startswith("module.") or ".module." in k for k in state["method"])
