import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import PRESET, ROOT, tiny_overrides
from pipa.cli import main


def test_print_config_and_bad_key(capsys):
    assert main(["print-config", str(PRESET), "train.iterations=9"]) == 0
    assert "iterations: 9" in capsys.readouterr().out
    assert main(["print-config", "synthetic", "train.iterrations=9"]) == 2  # preset by name
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "train.iterrations" in err and "train.iterations" in err


def test_missing_config_file(capsys):
    assert main(["train", "no/such.yaml"]) == 2
    assert "no/such.yaml" in capsys.readouterr().err


def test_train_eval_predict_roundtrip(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", str(PRESET), *tiny_overrides(run)]) == 0
    assert "target mIoU" in capsys.readouterr().out
    assert main(["eval", str(run), "--json", "--confusion"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert len(res["per_class_iou"]) == 8 and len(res["confusion"]) == 8
    # the confusion matrix counts every labelled val pixel exactly once: 4 images of 32x64
    assert sum(map(sum, res["confusion"])) == 4 * 32 * 64
    img = (np.random.default_rng(0).random((32, 64, 3)) * 255).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "x.png")
    assert main(["predict", str(run), str(tmp_path / "x.png"), "--out", str(tmp_path / "pred")]) == 0
    names = sorted(p.name for p in (tmp_path / "pred").iterdir())
    assert names == ["x_color.png", "x_labels.png", "x_overlay.png"]
    lab = np.asarray(Image.open(tmp_path / "pred" / "x_labels.png"))
    assert lab.shape == (32, 64) and lab.max() < 8


def test_predict_corrupt_input(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", str(PRESET), *tiny_overrides(run, iterations=1)]) == 0
    (tmp_path / "bad.png").write_bytes(b"\x89PNG garbage")
    assert main(["predict", str(run), str(tmp_path / "bad.png"), "--out", str(tmp_path / "o")]) == 2
    assert "bad.png" in capsys.readouterr().err


def test_make_synthetic_folder_layout_serves_folder_dataset(tmp_path, capsys):
    out = tmp_path / "syn"
    assert main(["make-synthetic", str(out), "--num-images", "3", "--num-val", "2", "--num-clips", "1",
                 "--clip-length", "3", "--height", "32", "--width", "64"]) == 0
    assert (out / "source" / "images" / "train" / "000002.png").is_file()
    clip = out / "target" / "sequences" / "val" / "clip_0000"
    assert (clip / "flow" / "000001.npy").is_file() and not (clip / "flow" / "000000.npy").exists()
    assert np.load(clip / "flow" / "000002.npy").shape == (32, 64, 2)
    from pipa.data.datasets import FolderDataset
    from pipa.data.synthetic import SyntheticScenes

    ds = FolderDataset(out / "target", "val")
    assert len(ds) == 2 and ds.class_names[0] == "road"
    img, lab = SyntheticScenes("target", "val", 32, 64).render_image(1)
    item = ds[1]
    assert np.array_equal((item["image"].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8), img)
    assert np.array_equal(item["label"].numpy(), lab)
    # the same files train through the folder loader
    run = tmp_path / "run"
    ov = tiny_overrides(run, iterations=2, **{"data.source.name": "folder", "data.source.root": str(out / "source"),
                                              "data.val.name": "folder", "data.val.root": str(out / "target"),
                                              "data.val.split": "val"})
    assert main(["train", str(PRESET), *ov]) == 0


def test_python_dash_m_entry_point():
    env_path = str(ROOT / "src")
    proc = subprocess.run([sys.executable, "-m", "pipa", "--version"], capture_output=True, text=True,
                          env={"PYTHONPATH": env_path, "PATH": ""}, timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("pipa ")


def test_demo_smoke(tmp_path, capsys):
    """The demo's plumbing on a few iterations: results.json schema, report, figure."""
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--iterations", "2", "--methods", "source_only,adabn,self_training,pipa",
                 "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert [r["method"] for r in res["runs"]] == ["source_only", "adabn", "self_training", "pipa"]
    # trained in parallel processes here (2 cores: --jobs auto is 2), each row is its own run's result
    assert res["options"]["jobs"] == 2 or (os.cpu_count() or 1) < 2
    for r in res["runs"]:
        if r["method"] != "adabn":
            saved = json.loads((out / "image" / r["method"] / "seed0" / "result.json").read_text())
            assert r["target_miou"] == round(saved["result"]["miou"], 3)
            assert saved["config"]["train"]["threads"] == (1 if res["options"]["jobs"] == 2 else 0)
    comp = res["runs"][-1]["compactness"]
    assert -1 <= comp["inter"] <= 1 and comp["gap"] == pytest.approx(comp["intra"] - comp["inter"], abs=1e-3)
    for r in res["runs"]:
        assert r["track"] == "image" and r["seed"] == 0 and len(r["per_class_iou"]) == 8
        assert 0 <= r["target_miou"] <= 100 and r["train_seconds"] >= 0
    report = (out / "report.md").read_text()
    assert "| self_training | 1 |" in report and "Strongest baseline" in report
    assert (out / "qualitative_image.png").is_file() and (out / "embedding_image.png").is_file()
    assert "pipa − self_training, same seeds" in report and "| pipa |" in report
    assert "| method | seeds | mIoU |" in capsys.readouterr().out
    # an interrupted demo resumes: finished runs with the same config are reused, not retrained
    assert main(["demo", "--quick", "--iterations", "2", "--methods", "self_training", "--out", str(out), "--resume"]) == 0
    assert "reusing the finished run" in capsys.readouterr().out
    (out / "report.md").unlink()
    assert main(["demo", "--out", str(out), "--report-only"]) == 0
    assert "| self_training | 1 |" in (out / "report.md").read_text()


def test_demo_rejects_unknown_method(capsys):
    assert main(["demo", "--methods", "pipa_v9"]) == 2
    assert "pipa_v9" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_quick(tmp_path):
    assert main(["demo", "--quick", "--out", str(tmp_path / "demo")]) == 0
    res = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert {"source_only", "oracle", "self_training"} <= {r["method"] for r in res["runs"]}


def test_export_student_and_teacher(tmp_path, capsys):
    import torch

    from pipa.models import Segmentor

    run = tmp_path / "st"
    assert main(["train", str(PRESET), *tiny_overrides(run, iterations=2, **{"method.name": "self_training"})]) == 0
    assert main(["export", str(run), "--which", "teacher", "--out", str(tmp_path / "teacher")]) == 0
    assert main(["export", str(run), "--out", str(tmp_path / "student")]) == 0
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)["method"]
    t = Segmentor.from_pretrained(tmp_path / "teacher").state_dict()
    s = Segmentor.from_pretrained(tmp_path / "student").state_dict()
    k = "classifier.weight"
    assert torch.equal(t[k], ckpt["recipe.teacher.ema." + k]) and torch.equal(s[k], ckpt["model." + k])
    assert not torch.equal(t[k], s[k])  # after 2 EMA steps the teacher differs from the student
    so = tmp_path / "so"
    assert main(["train", str(PRESET), *tiny_overrides(so, iterations=1)]) == 0
    assert main(["export", str(so), "--which", "teacher", "--out", str(tmp_path / "x")]) == 2
    assert "no teacher weights" in capsys.readouterr().err


def test_eval_of_exported_weights_without_a_config_names_the_missing_dataset(tmp_path, capsys):
    from pipa.config import load_config as _load
    from pipa.models import build_segmentor

    build_segmentor(_load(PRESET).model).save_pretrained(tmp_path / "w")
    assert main(["eval", str(tmp_path / "w")]) == 2
    assert "no config.yaml next to these weights" in capsys.readouterr().err


def test_predict_frames_and_video_follow_the_eval_protocol(tmp_path):
    """A frame folder and a short video: the label PNGs equal the evaluation protocol's argmax
    (``protocol_logits`` on the same decoded frames, here with a resized input), and ``--label-ids``
    writes Cityscapes-style original ids that the dataset's mapping turns back into the train ids."""
    import cv2
    import torch

    from pipa.config import load_config
    from pipa.data.mappings import load_mapping
    from pipa.evaluation.protocols import protocol_logits
    from pipa.models import Segmentor

    run = tmp_path / "run"
    assert main(["train", str(PRESET), *tiny_overrides(run, iterations=2), "eval.input_size=[24,48]"]) == 0
    frames = tmp_path / "frames"
    frames.mkdir()
    rng = np.random.default_rng(1)
    imgs = [(rng.random((32, 64, 3)) * 255).astype(np.uint8) for _ in range(5)]
    for i, im in enumerate(imgs):
        Image.fromarray(im).save(frames / f"f{i:03d}.png")
    vw = cv2.VideoWriter(str(tmp_path / "clip.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (64, 32))
    for im in imgs:
        vw.write(im[..., ::-1].copy())
    vw.release()
    out = tmp_path / "pred"
    assert main(["predict", str(run), str(frames), str(tmp_path / "clip.avi"), "--out", str(out), "--batch-size", "2",
                 "--video"]) == 0
    model = Segmentor.from_pretrained(run).eval()
    ev = load_config(run / "config.yaml").eval
    cap, decoded = cv2.VideoCapture(str(tmp_path / "clip.avi")), []
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        decoded.append(bgr[..., ::-1].copy())
    assert len(decoded) == 5

    def want(im):
        x = torch.from_numpy(im.copy()).permute(2, 0, 1).float()[None] / 255
        with torch.no_grad():
            return protocol_logits(model, x, (32, 64), ev.input_size, ev.mode, ev.crop, ev.stride,
                                   ev.align_corners).argmax(1)[0].numpy()

    for i, im in enumerate(imgs):
        assert np.array_equal(np.asarray(Image.open(out / f"f{i:03d}_labels.png")), want(im))
    for i, im in enumerate(decoded):
        assert np.array_equal(np.asarray(Image.open(out / f"clip_{i:06d}_labels.png")), want(im))
    assert (out / "frames_color.mp4").is_file() and (out / "clip_color.mp4").is_file()
    # --label-ids: the synthetic model has 8 classes and no Cityscapes mapping of 8: named mapping needed
    ids_out = tmp_path / "ids"
    assert main(["predict", str(run), str(frames), "--out", str(ids_out), "--label-ids"]) == 2
    from pipa.predict import train_to_label_ids

    lut = train_to_label_ids("cityscapes_19", 19)
    m = load_mapping("cityscapes_19")
    assert [m.table[int(lut[t])] for t in range(19)] == list(range(19))
    assert lut[0] == 7 and lut[13] == 26  # road is labelId 7, car 26 (Cityscapes)


def test_export_program_runs_without_pipa_and_matches(tmp_path, capsys):
    """``pipa export --torch-export``: a torch.export graph whose logits equal the model's for another
    batch size and another image size (the size is dynamic), loaded with torch alone (a fresh
    interpreter that never imports pipa)."""
    import torch

    from pipa.models import Segmentor

    run = tmp_path / "run"
    assert main(["train", str(PRESET), *tiny_overrides(run, iterations=1)]) == 0
    out = tmp_path / "exp"
    assert main(["export", str(run), "--out", str(out), "--torch-export", "--example-size", "64", "128"]) == 0
    x = torch.rand(5, 3, 72, 100, generator=torch.Generator().manual_seed(0))
    torch.save(x, tmp_path / "x.pt")
    code = ("import sys, torch; m = torch.export.load(sys.argv[1]).module(); "
            "x = torch.load(sys.argv[2]); torch.save(m(x), sys.argv[3]); "
            "assert not any(k.startswith('pipa') for k in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code, str(out / "model.pt2"), str(tmp_path / "x.pt"), str(tmp_path / "y.pt")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-1500:]
    model = Segmentor.from_pretrained(out).eval()
    with torch.no_grad():
        want = model(x).logits
    torch.testing.assert_close(torch.load(tmp_path / "y.pt"), want, rtol=1e-4, atol=1e-4)


def test_predict_refuses_weights_without_a_config(tmp_path, capsys):
    """``pipa predict`` on a folder with weights but no config.yaml: one line naming the folder and
    what is missing, nothing written; ``--no-protocol`` segments whole images at their size."""
    import shutil

    import numpy as np
    from PIL import Image

    run = tmp_path / "run"
    assert main(["train", str(PRESET), *tiny_overrides(run, iterations=1)]) == 0
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in ("model.safetensors", "config.json"):
        shutil.copy(run / f, bare / f)
    Image.fromarray(np.zeros((32, 64, 3), np.uint8)).save(tmp_path / "a.png")
    capsys.readouterr()
    assert main(["predict", str(bare), str(tmp_path / "a.png"), "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{bare}: no config.yaml next to these weights" in err[0]
    assert not (tmp_path / "p").exists()
    assert main(["predict", str(bare), str(tmp_path / "a.png"), "--out", str(tmp_path / "p"), "--no-protocol"]) == 0
    assert np.asarray(Image.open(tmp_path / "p" / "a_labels.png")).shape == (32, 64)
