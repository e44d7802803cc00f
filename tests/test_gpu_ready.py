"""The GPU-ready step, checked on the CPU: host synchronisations per step (counted with
:class:`pipa.core.syncs.SyncCounter`, whose counting is itself checked), gradient accumulation
against the larger batch, activation checkpointing and channels-last against the plain model, the
rare-class-sampled stream in DataLoader workers (exact resume), and the benchmark's ``--tiny`` run."""

import subprocess
import sys

import pytest
import torch

from conftest import PRESET, ROOT, tiny_overrides
from pipa.config import load_config
from pipa.core.syncs import SyncCounter, on_host
from pipa.methods import build_method
from pipa.models import build_segmentor

# The documented bound (README, "GPU-ready step"): host reads per step outside logging steps.
# self-training: 1 (ClassMix reads the classes present in the batch once); PiPa++ adds one per
# class-balanced sampler call and one per memory read (pixel term, memory push; video: contrast set,
# temporal sampler, second memory read).
SYNC_BOUND = {"source_only": 0, "self_training": 1, "daformer": 1, "mic": 1, "pipa": 5, "pipa_video": 9}


def test_sync_counter_sees_what_synchronises_and_skips_host_tensors():
    x = torch.arange(6.0)
    with SyncCounter() as s:
        x.sum().item()
        float(x[0])
        bool(x[1] > 0)
        x.tolist()
        x[x > 2]
        x.nonzero()
        torch.bincount(x.long())
        x.to("cpu")
        y = x * 2 + 1  # device work: not counted
        x.to("cpu", non_blocking=True)
        on_host(torch.rand(3)).tolist()  # a host-side draw: not counted
    assert s.calls == {"item": 1, "__float__": 1, "__bool__": 1, "tolist": 1, "__getitem__[mask]": 1, "nonzero": 1,
                       "bincount": 1, "to(device) blocking": 1}
    assert y.shape == (6,)


@pytest.mark.parametrize("name", list(SYNC_BOUND))
def test_step_host_syncs_within_the_documented_bound(name):
    preset = PRESET.parent / ("synthetic_video.yaml" if name == "pipa_video" else "synthetic.yaml")
    cfg = load_config(preset, tiny_overrides("unused", **{"method.name": name}))
    torch.manual_seed(0)
    m = build_method(cfg, build_segmentor(cfg.model))
    from pipa.data.datasets import build_dataset
    from torch.utils.data import default_collate

    K = cfg.model.num_classes
    src, tgt = build_dataset(cfg.data.source, K, None), build_dataset(cfg.data.target, K, None, labelled=False)
    batch = {"source": default_collate([src[0], src[1]]), "target": default_collate([tgt[0], tgt[1]])}
    batch["source"]["rcs_class"] = torch.tensor([1, 2])
    from pipa.engine.callbacks import NonfiniteGuard

    guard = NonfiniteGuard(torch.device("cpu"))
    counts = []
    for it in range(4):  # a few steps: the memory fills, every term is on
        with SyncCounter(trace=True) as s:
            loss, logs = m.step(batch, it)
            guard.update(it + 1, loss, logs)
        loss.backward()
        with SyncCounter() as s2:
            m.after_step(it)
        counts.append(s.total + s2.total)
        assert s.total + s2.total <= SYNC_BOUND[name], dict(s.where)
    assert len(logs) > 0 and all(torch.is_tensor(v) or isinstance(v, float) for v in logs.values())


def test_logger_and_guard_read_nothing_between_log_steps(tmp_path):
    from pipa.engine.callbacks import Logger, NonfiniteGuard

    cfg = load_config(PRESET, tiny_overrides(tmp_path, **{"train.log_interval": 5, "train.iterations": 10}))
    logger = Logger(cfg, tmp_path, "none", 0, True)
    guard = NonfiniteGuard(torch.device("cpu"))
    loss, logs = torch.tensor(1.5), {"loss/a": torch.tensor(0.5), "x": torch.tensor(2.0)}
    with SyncCounter() as quiet:
        guard.update(3, loss, logs)
        logger(3, loss, logs, 0.1)
    with SyncCounter() as due:
        logger(5, loss, logs, 0.1)
    logger.close()
    assert quiet.total == 0 and due.total == 1  # one read for all the values of a logging step
    assert guard.check(3, "") is None
    guard.update(4, torch.tensor(float("nan")), {"loss/a": torch.tensor(float("inf"))})
    guard.update(5, torch.tensor(float("nan")), {"loss/a": torch.tensor(1.0)})
    err = guard.check(6, "the last checkpoint is intact")
    assert err is not None and "at iteration 4 (loss/a=inf), found at iteration 6" in str(err)


def _first_gradients(tmp_path, monkeypatch, **ov):
    """The gradients the first optimiser step of a source-only run sees (norm layers in eval mode,
    no dropout, no flip: nothing couples the images of a batch)."""
    from pipa.engine import trainer
    from pipa.engine.trainer import train
    from pipa.methods.method import UDAMethod

    grads = {}

    def optimise(self):
        if not grads:
            grads.update({n: p.grad.clone() for n, p in self.method.model.named_parameters() if p.grad is not None})
        real_optimise(self)

    def train_mode(self, mode=True):
        torch.nn.Module.train(self, mode)
        for mod in self.modules():
            if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
                mod.eval()
        return self

    real_optimise = trainer.Run.optimise
    monkeypatch.setattr(trainer.Run, "optimise", optimise)
    monkeypatch.setattr(UDAMethod, "train", train_mode)
    cfg = load_config(PRESET, tiny_overrides(tmp_path, iterations=1, **{
        "method.name": "source_only", "model.dropout": 0.0, "data.source.hflip": False, "optim.warmup_iters": 0, **ov}))
    train(cfg, progress="none")
    return grads


def test_accumulation_gives_the_gradient_of_the_larger_batch(tmp_path, monkeypatch):
    from pipa.data.datasets import build_dataset

    cfg = load_config(PRESET, tiny_overrides(tmp_path))
    src = build_dataset(cfg.data.source, cfg.model.num_classes, None)
    assert all(int((src[i]["label"] == 255).sum()) == 0 for i in range(len(src)))  # equal pixel counts per image
    big = _first_gradients(tmp_path / "a", monkeypatch, **{"data.batch_size": 4})
    acc = _first_gradients(tmp_path / "b", monkeypatch, **{"data.batch_size": 2, "train.accumulate": 2})
    one = _first_gradients(tmp_path / "c", monkeypatch, **{"data.batch_size": 2})
    assert big.keys() == acc.keys() and len(big) > 10
    for k in big:
        torch.testing.assert_close(acc[k], big[k], rtol=1e-4, atol=1e-6)
    assert any(not torch.allclose(one[k], big[k], rtol=1e-3, atol=1e-5) for k in big)  # the check can fail


@pytest.mark.parametrize("backbone", ["conv_small", "mit_tiny"])
def test_activation_checkpointing_gives_the_same_gradients(backbone):
    cfg = load_config(PRESET, [f"model.backbone={backbone}", "model.dropout=0.0"])
    torch.manual_seed(0)
    model = build_segmentor(cfg.model).train()
    if backbone == "mit_tiny":
        model.encoder.mit.config.drop_path_rate = 0.0
    for mod in model.modules():  # stochastic depth off: both passes compute the same function
        if hasattr(mod, "drop_prob"):
            mod.drop_prob = 0.0
    x = torch.rand(2, 3, 64, 64)

    def grads():
        model.zero_grad()
        model(x).logits.square().mean().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain = grads()
    model.encoder.set_checkpointing(True)
    ckpt = grads()
    for k in plain:
        torch.testing.assert_close(ckpt[k], plain[k], rtol=1e-5, atol=1e-6)


def test_channels_last_model_computes_the_same():
    cfg = load_config(PRESET, ["model.dropout=0.0"])
    torch.manual_seed(0)
    model = build_segmentor(cfg.model).eval()
    x = torch.rand(2, 3, 32, 64)
    ref = model(x).logits
    model.to(memory_format=torch.channels_last)
    out = model(x.contiguous(memory_format=torch.channels_last)).logits
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_rare_class_stream_in_workers_resumes_exactly(tmp_path):
    from pipa.data import fabricate
    from pipa.data.benchmarks import GTA5
    from pipa.engine.streams import BatchStream
    from pipa.uda.rcs import RareClassSampler, class_pixel_counts

    root = fabricate.gta5(tmp_path / "gta", 6, size=(96, 160))
    ds = GTA5(root, resize=(72, 128), crop=(48, 48), cat_max_ratio=0.75)
    rcs = RareClassSampler(class_pixel_counts(ds, 19), 0.01, 50, 0.5)
    plain = BatchStream(ds, 2, 3, 0, 1, num_workers=0, rcs=rcs)
    ref = [next(plain) for _ in range(6)]
    resumed = BatchStream(ds, 2, 3, 0, 1, num_workers=2, offset=3, rcs=rcs)
    got = [next(resumed) for _ in range(3)]
    for a, b in zip(ref[3:], got):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.state() == [0, 6]
    for b in ref:  # each crop holds its sampled class when the image can give it (re-crop rule)
        assert b["image"].shape == (2, 3, 48, 48) and b["rcs_class"].shape == (2,)


def test_bench_gpu_tiny_prints_its_table():
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_gpu.py"), "--tiny", "--steps", "1",
                          "--warmup", "1", "--methods", "daformer", "--settings", "tf32,bf16"],
                         capture_output=True, text=True, timeout=300, env={"PYTHONPATH": str(ROOT / "src"),
                                                                          "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [r for r in out.stdout.splitlines() if r.startswith("| daformer |")]
    assert len(rows) == 2 and "failed" not in out.stdout
    cells = rows[0].split("|")
    assert float(cells[3]) > 0 and float(cells[4]) > 0  # ms/step, TFLOP/s


def test_shared_encoder_pass_equals_two_passes_on_mit(monkeypatch):
    """MiT has no batch norm: the source and mixed batches share one encoder pass (fewer kernel
    launches); the losses and gradients are those of two separate passes."""
    from pipa.models.segmentor import Segmentor
    from pipa.core.tensors import read_scalars

    cfg = load_config(PRESET, ["method.name=self_training", "model.backbone=mit_tiny", "model.dropout=0.0",
                               "method.teacher.pseudo_threshold=0.0"])
    torch.manual_seed(0)
    m = build_method(cfg, build_segmentor(cfg.model))
    for mod in m.modules():
        if hasattr(mod, "drop_prob"):
            mod.drop_prob = 0.0
    assert m.model.batch_independent_encoder and not build_segmentor(load_config(PRESET).model).batch_independent_encoder
    g = torch.Generator().manual_seed(1)
    lab = torch.randint(0, 8, (2, 4, 8), generator=g).repeat_interleave(8, 1).repeat_interleave(8, 2)
    batch = {"source": {"image": torch.rand(2, 3, 32, 64, generator=g), "label": lab},
             "target": {"image": torch.rand(2, 3, 32, 64, generator=g)}}

    def run():
        m.zero_grad()
        loss, logs = m.step(batch, 3)
        loss.backward()
        return read_scalars(logs), {n: p.grad.clone() for n, p in m.model.named_parameters() if p.grad is not None}

    calls = []
    real_forward = Segmentor.forward
    def forward(self, *a, **k):
        if self is m.model:  # the student's calls (the teacher is another Segmentor)
            calls.append(k.get("split", 0))
        return real_forward(self, *a, **k)

    monkeypatch.setattr(Segmentor, "forward", forward)
    joint_logs, joint_grads = run()
    assert calls == [2]  # one student call for both batches
    monkeypatch.setattr(Segmentor, "batch_independent_encoder", property(lambda self: False))
    calls.clear()
    sep_logs, sep_grads = run()
    assert calls == [0, 0]
    for k in ("loss/source_ce", "loss/mix_ce"):
        assert joint_logs[k] == pytest.approx(sep_logs[k], rel=1e-5)
    for k in sep_grads:
        torch.testing.assert_close(joint_grads[k], sep_grads[k], rtol=1e-4, atol=1e-6)


def test_compile_option_compiles_the_segmentor_passes(monkeypatch):
    """train.compile compiles the student, the EMA teacher and DAFormer's frozen encoder in place
    (state-dict keys unchanged), and nothing else (the terms' heads run on changing row counts)."""
    compiled = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: compiled.append((type(self).__name__, kw)))
    from pipa.engine.trainer import apply_speed_settings

    cfg = load_config(PRESET, ["method.name=daformer", "train.compile=true"])
    m = build_method(cfg, build_segmentor(cfg.model))
    keys = list(m.state_dict())
    apply_speed_settings(cfg, m, torch.device("cpu"))
    assert [name for name, _ in compiled] == ["Segmentor", "Segmentor", "ConvEncoder"]
    assert all(kw.get("dynamic") is False for _, kw in compiled)
    assert list(m.state_dict()) == keys


@pytest.mark.slow
def test_compiled_step_matches_eager_on_cpu():
    """torch.compile on the CPU (where the inductor compiler works here): a tiny source-only step
    gives the eager loss and gradients."""
    cfg = load_config(PRESET, ["method.name=source_only", "model.dropout=0.0"])
    torch.manual_seed(0)
    eager = build_method(cfg, build_segmentor(cfg.model)).train()
    torch.manual_seed(0)
    comp = build_method(cfg, build_segmentor(cfg.model)).train()
    comp.compile_models()
    g = torch.Generator().manual_seed(0)
    lab = torch.randint(0, 8, (2, 4, 8), generator=g).repeat_interleave(8, 1).repeat_interleave(8, 2)
    batch = {"source": {"image": torch.rand(2, 3, 32, 64, generator=g), "label": lab}}
    for m in (eager, comp):
        loss, _ = m.step(batch, 0)
        loss.backward()
    le, lc = eager.step(batch, 1)[0], comp.step(batch, 1)[0]
    assert lc.item() == pytest.approx(le.item(), rel=1e-4)
    for (n, pe), (_, pc) in zip(eager.model.named_parameters(), comp.model.named_parameters()):
        torch.testing.assert_close(pc.grad, pe.grad, rtol=1e-3, atol=1e-5)
