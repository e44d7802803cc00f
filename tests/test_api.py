"""The Python API (``pipa.load``): inputs in every accepted form give the same labels as the model
run by hand on the [0, 1] tensor; the run's evaluation protocol is applied; the teacher is loadable."""

import numpy as np
import pytest
import torch
from PIL import Image

import pipa
from conftest import PRESET, tiny_overrides
from pipa.config import load_config
from pipa.engine.trainer import train


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("api") / "run"
    cfg = load_config(PRESET, tiny_overrides(out, iterations=2, **{"method.name": "self_training",
                                                                    "train.checkpoint_interval": 2}))
    train(cfg, progress="none")
    return out


def test_every_input_form_gives_the_labels_of_the_plain_forward(run, tmp_path):
    seg = pipa.load(run, device="cpu")
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 32, 64, generator=g)
    arr = (x * 255).round().byte().permute(0, 2, 3, 1).numpy()
    xq = torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255  # what the uint8 forms hold
    model = seg.model
    with torch.no_grad():
        want = model(xq).logits.argmax(1)
    Image.fromarray(arr[0]).save(tmp_path / "a.png")
    assert torch.equal(seg.predict(xq), want)
    assert torch.equal(seg.predict(arr), want)
    assert torch.equal(seg.predict([Image.fromarray(arr[0]), arr[1]]), want)
    assert torch.equal(seg.predict(str(tmp_path / "a.png")), want[:1])
    probs = seg.predict_proba(xq)
    assert probs.shape == (2, model.num_classes, 32, 64) and torch.allclose(probs.sum(1), torch.ones(2, 32, 64))
    mixed = seg.predict([xq[0], torch.rand(3, 16, 32, generator=g)])  # two sizes: one map each
    assert isinstance(mixed, list) and mixed[0].shape == (32, 64) and mixed[1].shape == (16, 32)
    assert seg.class_names == model.class_names


def test_the_runs_protocol_is_applied(run):
    seg = pipa.load(run, device="cpu")
    seg.protocol.input_size = [16, 32]  # as a run with eval.input_size would set it
    x = torch.rand(1, 3, 32, 64)
    with torch.no_grad():
        small = seg.model(torch.nn.functional.interpolate(x, size=(16, 32), mode="bilinear", align_corners=False)).logits
        want = torch.nn.functional.interpolate(small, size=(32, 64), mode="bilinear", align_corners=False).argmax(1)
    assert torch.equal(seg.predict(x), want)


def test_teacher_and_errors(run):
    teacher = pipa.load(run, which="teacher", device="cpu")
    student = pipa.load(run, device="cpu")
    diff = [not torch.equal(a, b) for a, b in zip(teacher.model.state_dict().values(), student.model.state_dict().values())]
    assert any(diff)  # the EMA teacher is its own set of weights
    with pytest.raises(FileNotFoundError, match="no such run folder"):
        pipa.load(run / "missing")
    with pytest.raises(ValueError, match="uint8"):
        student.predict(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(TypeError, match="cannot segment"):
        student.predict(42)
