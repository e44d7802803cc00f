"""Fault injection: the faults a real run meets, each with the behaviour a user should get — a
one-line error that names the file or key and says what to do, or the expected behaviour — and
nothing already written lost. Numbers refer to the cases of the robustness issue."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pipa.core.tensors import read_scalars
from PIL import Image

from conftest import PRESET, ROOT, tiny_overrides
from pipa.cli import main
from pipa.config import ConfigError, load_config
from pipa.data.datasets import DatasetError, build_dataset
from pipa.engine.checkpoint import load_checkpoint
from pipa.engine.trainer import train


def _folder(root: Path, n: int = 6, size=(64, 32), classes: int = 8, sizes=None) -> Path:
    """A class-id folder dataset (what ``pipa make-synthetic`` writes): images/ and labels/."""
    for sub in ("images", "labels"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    g = np.random.default_rng(0)
    for i in range(n):
        w, h = (sizes or {}).get(i, size)
        Image.fromarray(g.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / "images" / f"{i:03d}.png")
        Image.fromarray(g.integers(0, classes, (h, w), dtype=np.uint8)).save(root / "labels" / f"{i:03d}.png")
    (root / "meta.json").write_text(json.dumps({"class_names": [f"c{k}" for k in range(classes)]}))
    return root


def _folder_overrides(tmp_path: Path, root: Path, **extra):
    ov = {"data.source.name": "folder", "data.source.root": str(root), "data.source.split": "''",
          "data.val.name": "folder", "data.val.root": str(root), "data.val.split": "''", **extra}
    return tiny_overrides(tmp_path / "run", iterations=2, **ov)


def _cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "pipa", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def _children(pid: int) -> list[int]:
    """Direct child processes of ``pid`` (from /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return sorted(out)


def _state(pid: int) -> str:
    try:
        return "zombie" if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z" else "alive"
    except OSError:
        return "gone"


# 1 -------------------------------------------------------------------------------------------
def test_1_exponent_learning_rates_parse(capsys):
    assert main(["print-config", "synthetic", "optim.lr=3e-4"]) == 0
    assert "lr: 0.0003" in capsys.readouterr().out


# 2 -------------------------------------------------------------------------------------------
def test_2_an_all_ignore_label_trains_with_zero_source_loss(tmp_path, capsys):
    root = _folder(tmp_path / "d")
    Image.fromarray(np.full((32, 64), 255, np.uint8)).save(root / "labels" / "002.png")
    from pipa.methods import build_method
    from pipa.models import build_segmentor

    cfg = load_config(PRESET, ["method.name=self_training"])
    method = build_method(cfg, build_segmentor(cfg.model))
    batch = {"source": {"image": torch.rand(2, 3, 32, 64), "label": torch.full((2, 32, 64), 255)},
             "target": {"image": torch.rand(2, 3, 32, 64)}}
    loss, logs = method.step(batch, 0)
    logs = read_scalars(logs)
    assert torch.isfinite(loss) and logs["loss/source_ce"] == 0.0 and logs["data/empty_label_images"] == 2
    loss.backward()  # and back-propagates without NaN
    assert all(torch.isfinite(p.grad).all() for p in method.model.parameters() if p.grad is not None)
    # data-stats names the label with no valid pixel; --strict fails on it
    assert main(["data-stats", "--dataset", "folder", "--root", str(root), "--json", "--strict"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert any(p["file"].endswith("002.png") and "no valid pixel" in p["problem"] for p in out["problems"])


# 3 -------------------------------------------------------------------------------------------
def test_3_nonfinite_guard_never_writes_poisoned_weights(tmp_path):
    """optim.lr=1000: batch-norm running variances overflow while the loss is still finite; the
    checkpoint writer refuses them, so the checkpoint on disk stays finite and loadable."""
    ov = {"optim.lr": 1000, "train.checkpoint_interval": 1, "method.name": "self_training"}
    cfg = load_config(PRESET, tiny_overrides(tmp_path / "r", iterations=30, **ov))
    with pytest.raises(FloatingPointError) as e:
        train(cfg, progress="none")
    msg = str(e.value)
    assert "\n" not in msg and "iteration" in msg and "intact" in msg and "--resume" in msg
    state = load_checkpoint(tmp_path / "r" / "checkpoint.pt")
    assert all(torch.isfinite(v).all() for v in state["method"].values() if v.is_floating_point())
    before = (tmp_path / "r" / "checkpoint.pt").read_bytes()
    with pytest.raises(FloatingPointError):  # the same run resumed fails the same way, one line
        train(cfg, resume=True, progress="none")
    assert (tmp_path / "r" / "checkpoint.pt").read_bytes() == before


def test_3_nonfinite_loss_names_the_iteration_and_the_terms(tmp_path):
    from pipa.engine import trainer

    cfg = load_config(PRESET, tiny_overrides(tmp_path / "n", iterations=3, **{"method.name": "self_training"}))
    real = trainer.UDAMethod.step

    def poisoned(self, batch, it, micro=0):
        loss, logs = real(self, batch, it, micro)
        if it == 1:
            logs["loss/mix_ce"] = float("nan")
            return loss * float("nan"), logs
        return loss, logs

    trainer.UDAMethod.step = poisoned
    try:
        with pytest.raises(FloatingPointError, match=r"at iteration 2 \(loss/mix_ce=nan\).*no checkpoint was written"):
            train(cfg, progress="none")
        # with a checkpoint: the error says it is intact, and --resume from it finishes the run
        cfg = load_config(PRESET, tiny_overrides(tmp_path / "m", iterations=3, **{"method.name": "self_training",
                                                                                   "train.checkpoint_interval": 1}))
        with pytest.raises(FloatingPointError, match=r"at iteration 2 .*checkpoint .* is intact"):
            train(cfg, progress="none")
        assert load_checkpoint(tmp_path / "m" / "checkpoint.pt")["iteration"] == 1
    finally:
        trainer.UDAMethod.step = real
    assert train(cfg, resume=True, progress="none").iterations == 3


# 4 -------------------------------------------------------------------------------------------
def test_4_folder_datasets_apply_resize_and_crop(tmp_path):
    from pipa.config import DatasetConfig

    root = _folder(tmp_path / "d", sizes={1: (80, 40)})
    with pytest.raises(DatasetError, match=r"001.png: image size 80x40 differs.*resize"):
        build_dataset(DatasetConfig(name="folder", root=str(root), split=""), 8)
    ds = build_dataset(DatasetConfig(name="folder", root=str(root), split="", resize=[24, 48], crop=[16, 16]), 8)
    assert {tuple(ds[i]["image"].shape) for i in range(len(ds))} == {(3, 16, 16)}
    assert {tuple(ds[i]["label"].shape) for i in range(len(ds))} == {(16, 16)}
    skipped = build_dataset(DatasetConfig(name="folder", root=str(root), split="", on_error="skip"), 8)
    assert len(skipped) == 5 and skipped.problems[0]["file"].endswith("001.png")
    with pytest.raises(ConfigError, match="'data.source.crop' does not apply to the synthetic"):
        load_config(PRESET, ["data.source.crop=[16,16]"])


# 5 -------------------------------------------------------------------------------------------
def test_5_out_of_range_labels_are_found_at_indexing_and_skip_skips_them(tmp_path):
    from pipa.config import DatasetConfig

    root = _folder(tmp_path / "d")
    Image.fromarray(np.full((32, 64), 9, np.uint8)).save(root / "labels" / "004.png")
    with pytest.raises(DatasetError, match=r"004.png: label value 9 outside 0..7"):
        build_dataset(DatasetConfig(name="folder", root=str(root), split=""), 8)
    ds = build_dataset(DatasetConfig(name="folder", root=str(root), split="", on_error="skip"), 8)
    assert len(ds) == 5 and all(int(ds[i]["label"].max()) < 8 for i in range(len(ds)))


def test_5_label_checks_are_cached(tmp_path, monkeypatch):
    from pipa.config import DatasetConfig
    from pipa.data import benchmarks

    root = _folder(tmp_path / "d")
    cfg = DatasetConfig(name="folder", root=str(root), split="")
    build_dataset(cfg, 8)
    calls = []
    real = benchmarks.FolderDataset.raw_label
    monkeypatch.setattr(benchmarks.FolderDataset, "raw_label", lambda self, e: calls.append(e) or real(self, e))
    build_dataset(cfg, 8)
    assert calls == []  # every label passed before: none decoded again
    Image.fromarray(np.full((32, 64), 9, np.uint8)).save(root / "labels" / "004.png")  # a changed file
    with pytest.raises(DatasetError, match="004.png"):
        build_dataset(cfg, 8)
    assert [e.label.name for e in calls] == ["004.png"]


# 6, 7 ----------------------------------------------------------------------------------------
def test_6_7_export_refuses_a_non_empty_folder_and_empty_checkpoints_are_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", str(PRESET), *tiny_overrides(run, iterations=1)]) == 0
    other = tmp_path / "other"
    other.mkdir()
    (other / "model.safetensors").write_bytes(b"another run's weights")
    assert main(["export", str(run), "--out", str(other)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (other / "model.safetensors").read_bytes() == b"another run's weights"
    assert main(["export", str(run), "--out", str(other), "--overwrite"]) == 0
    (run / "checkpoint.pt").write_bytes(b"")
    for args in (["export", str(run), "--out", str(tmp_path / "x")],
                 ["train", str(PRESET), *tiny_overrides(run, iterations=2), "--resume"]):
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "empty (0 bytes)" in err and "checkpoint.pt" in err


# 8 -------------------------------------------------------------------------------------------
def test_8_skip_prints_a_count_and_writes_skipped_json(tmp_path, capsys):
    root = _folder(tmp_path / "d")
    (root / "images" / "003.png").write_bytes(b"\x89PNG broken")
    cfg = load_config(PRESET, _folder_overrides(tmp_path, root, **{"data.source.on_error": "skip",
                                                                   "data.val.on_error": "skip"}))
    train(cfg, progress="none")
    skipped = json.loads((tmp_path / "run" / "skipped.json").read_text())
    assert skipped["source"][0]["file"].endswith("003.png") and "unreadable" in skipped["source"][0]["problem"]
    assert "skipped 1 source, 1 val file(s)" in capsys.readouterr().out


# 9 -------------------------------------------------------------------------------------------
def test_9_stale_temporary_checkpoints_are_removed_on_the_next_start(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = run / f".checkpoint.pt.tmp-{dead.pid}"
    stale.write_bytes(b"half a checkpoint")
    train(load_config(PRESET, tiny_overrides(run, iterations=1)), progress="none")
    assert not stale.exists()


# 10 ------------------------------------------------------------------------------------------
def test_10_resume_refuses_a_changed_run_and_logs_allowed_changes(tmp_path):
    run = tmp_path / "run"
    train(load_config(PRESET, tiny_overrides(run, iterations=2, **{"train.checkpoint_interval": 1})), progress="none")
    for change in ("method.name=self_training", "data.batch_size=4", "model.decoder_channels=16"):
        cfg = load_config(PRESET, [*tiny_overrides(run, iterations=3, **{"train.checkpoint_interval": 1}), change])
        with pytest.raises(ConfigError, match=rf"'{change.split('=')[0]}' was .* --allow-changes"):
            train(cfg, resume=True, progress="none")
    assert load_checkpoint(run / "checkpoint.pt")["iteration"] == 2  # nothing written by the refusals
    cfg = load_config(PRESET, tiny_overrides(run, iterations=3, **{"train.checkpoint_interval": 1}))
    train(cfg, resume=True, progress="none")  # iterations 2 -> 3: allowed, logged
    log = [json.loads(r) for r in (run / "config_changes.jsonl").read_text().splitlines()]
    assert log[-1]["changes"]["train.iterations"] == [2, 3]


def test_10_no_duplicate_metrics_rows_after_a_resume(tmp_path):
    import pipa.engine.callbacks as cb

    run = tmp_path / "run"
    ov = {"train.eval_interval": 1, "train.checkpoint_interval": 2}
    real = cb.Evaluator.__call__

    def crash_after_eval_3(self, it):
        res = real(self, it)
        if it == 3:
            raise KeyboardInterrupt  # killed after the row of iteration 3, the checkpoint is at 2
        return res

    cb.Evaluator.__call__ = crash_after_eval_3
    try:
        with pytest.raises(KeyboardInterrupt):
            train(load_config(PRESET, tiny_overrides(run, iterations=4, **ov)), progress="none")
    finally:
        cb.Evaluator.__call__ = real
    train(load_config(PRESET, tiny_overrides(run, iterations=4, **ov)), resume=True, progress="none")
    its = [json.loads(r)["iteration"] for r in (run / "metrics.jsonl").read_text().splitlines()]
    assert its == [1, 2, 3, 4]


def test_10_sigterm_saves_a_checkpoint_and_resume_finishes(tmp_path):
    run = tmp_path / "run"
    ov = tiny_overrides(run, iterations=100000, **{"train.checkpoint_interval": 0})
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen([sys.executable, "-m", "pipa", "train", str(PRESET), *ov], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (run / "run.json").is_file():
        time.sleep(0.2)
    time.sleep(2.0)  # some steps into the run
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 143, err
    assert "stopped by SIGTERM" in err and "--resume" in err
    done = load_checkpoint(run / "checkpoint.pt")["iteration"]
    assert 0 < done < 100000
    proc = _cli("train", str(PRESET), *tiny_overrides(run, iterations=done + 2), "--resume")
    assert proc.returncode == 0, proc.stderr  # iterations changed: allowed and logged


# 11 ------------------------------------------------------------------------------------------
def test_11_base_names_a_preset_and_bad_values_name_their_key(tmp_path, capsys):
    p = tmp_path / "mine.yaml"
    p.write_text("base: synthetic\ntrain: {iterations: 7}\n")
    cfg = load_config(p)
    assert cfg.train.iterations == 7 and cfg.model.decoder_channels == 32  # the preset's value
    assert main(["print-config", "synthetic", "method.teacher.mode=evl"]) == 2
    assert "'method.teacher.mode'" in capsys.readouterr().err


# what already held: keep it so --------------------------------------------------------------
def test_truncated_and_malicious_checkpoints_are_refused(tmp_path):
    run = tmp_path / "run"
    train(load_config(PRESET, tiny_overrides(run, iterations=1)), progress="none")
    data = (run / "checkpoint.pt").read_bytes()
    (run / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(RuntimeError, match="cannot read checkpoint"):
        load_checkpoint(run / "cut.pt")

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    torch.save({"format_version": 2, "x": Evil()}, run / "evil.pt")
    with pytest.raises(RuntimeError, match="cannot read checkpoint"):
        load_checkpoint(run / "evil.pt")
    assert not (tmp_path / "pwned").exists()


@pytest.mark.slow
def test_kill_9_mid_run_then_resume_finishes(tmp_path):
    run = tmp_path / "run"
    ov = tiny_overrides(run, iterations=100000, **{"train.checkpoint_interval": 5})
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen([sys.executable, "-m", "pipa", "train", str(PRESET), *ov], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (run / "checkpoint.pt").is_file():
        time.sleep(0.2)
    time.sleep(1.0)
    p.kill()
    p.wait()
    done = load_checkpoint(run / "checkpoint.pt")["iteration"]
    assert done >= 5 and done % 5 == 0
    proc = _cli("train", str(PRESET), *tiny_overrides(run, iterations=done + 2), "--resume")
    assert proc.returncode == 0, proc.stderr


@pytest.mark.slow
def test_torchrun_with_a_killed_rank_does_not_hang(tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone", "-m", "pipa",
           "train", str(PRESET), *tiny_overrides(out, iterations=100000)]
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "run.json").is_file():
        time.sleep(0.2)
    time.sleep(2.0)
    try:
        pids = _children(p.pid)  # the rank processes the launcher started
        assert pids, "no rank process found"
        os.kill(pids[-1], signal.SIGKILL)
        assert p.wait(timeout=180) != 0  # the launcher notices and stops every rank
        assert not any(Path(f"/proc/{q}").exists() and "zombie" not in _state(q) for q in pids)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
