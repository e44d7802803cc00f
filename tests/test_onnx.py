"""``pipa export --onnx``: the ONNX graph under onnxruntime agrees with ``pipa predict`` (issue 17).

onnx, onnxscript and onnxruntime are in the ``test`` extra (``make test`` installs them); the test
is skipped only where they are absent (the GPU image)."""

import numpy as np
import pytest
from PIL import Image

from pipa.cli import main

from conftest import PRESET, tiny_overrides

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


def test_onnx_matches_pipa_predict_at_two_sizes(tmp_path, capsys):
    """A trained run (30 steps on 64x128 renders) exported with --onnx: onnxruntime's argmax equals
    the label maps ``pipa predict`` writes on >= 99.9 % of the pixels of the validation images, at
    their size and at another (96x160, not a multiple of 32); the graph's input and output are
    named and dynamic."""
    from pipa.config import load_config
    from pipa.data.datasets import build_dataset

    size = {f"data.{k}.{d}": v for k in ("source", "target", "val") for d, v in (("height", 64), ("width", 128))}
    run = tmp_path / "run"
    assert main(["train", str(PRESET), *tiny_overrides(run, iterations=30, **size)]) == 0
    out = tmp_path / "exp"
    assert main(["export", str(run), "--out", str(out), "--onnx", "--example-size", "64", "128"]) == 0
    assert "onnxruntime check" in capsys.readouterr().out
    assert (out / "model.onnx").is_file() and (out / "model.safetensors").is_file()

    cfg = load_config(run / "config.yaml")
    val = build_dataset(cfg.data.val, cfg.model.num_classes)
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"]
    assert [o.name for o in session.get_outputs()] == ["logits"]
    for h, w in ((64, 128), (96, 160)):
        folder = tmp_path / f"val_{h}x{w}"
        folder.mkdir()
        images = []
        for i in range(len(val)):
            rgb = (val[i]["image"].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            im = Image.fromarray(rgb).resize((w, h), Image.BILINEAR)
            im.save(folder / f"v{i}.png")
            images.append(np.asarray(im))
        pred = tmp_path / f"pred_{h}x{w}"
        assert main(["predict", str(out), str(folder), "--out", str(pred), "--no-color", "--no-overlay"]) == 0
        x = np.stack(images).transpose(0, 3, 1, 2).astype(np.float32) / 255
        (logits,) = session.run(["logits"], {"images": x})
        assert logits.shape == (len(images), cfg.model.num_classes, h, w)
        want = np.stack([np.asarray(Image.open(pred / f"v{i}_labels.png")) for i in range(len(images))])
        agree = float((logits.argmax(1) == want).mean())
        assert agree >= 0.999, f"{h}x{w}: {agree:.5f}"
        assert len(np.unique(want)) > 1  # a trained model, not a constant map
