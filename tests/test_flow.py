"""``pipa flow``: OpenCV estimators against exact flow (a known shift, the synthetic benchmark's
ego-motion clips), the three output formats read back by the loaders' readers, resume."""

import numpy as np
import pytest

from pipa.cli import main
from pipa.data.flow import compute_flows, estimate_flow, output_path, write_flow
from pipa.data.io import read_flow_kitti, read_flow_npy


def _texture(h, w, seed=0):
    import cv2

    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8)
    return cv2.GaussianBlur(cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC), (5, 5), 1.5)


def test_dis_recovers_a_known_shift_in_the_loaders_convention():
    """Frame t is frame t-1 moved 3 px right and 2 px down: pixel p of frame t shows frame t-1 at
    p + (-3, -2), so the backward flow is (u, v) = (-3, -2)."""
    prev = _texture(96, 128)
    cur = np.roll(prev, (2, 3), axis=(0, 1))
    flow = estimate_flow(cur, prev, "dis")
    inner = flow[16:-16, 16:-16]
    assert np.abs(inner[..., 0] + 3).mean() < 0.3 and np.abs(inner[..., 1] + 2).mean() < 0.3


def test_endpoint_error_on_synthetic_clips_beats_zero_flow():
    from pipa.data.synthetic import SyntheticScenes

    clip = SyntheticScenes("target", "val", 96, 192, 0).render_clip(100_000, 3)
    for t in (1, 2):
        est = estimate_flow(clip.frames[t], clip.frames[t - 1], "dis")
        valid = clip.valid[t]
        epe = np.linalg.norm(est - clip.flow[t], axis=-1)[valid].mean()
        zero = np.linalg.norm(clip.flow[t], axis=-1)[valid].mean()
        assert epe < 0.75 * zero, (epe, zero)  # flat sky and road leave much of it ambiguous (README)


@pytest.mark.parametrize("fmt", ["npy", "davsn", "kitti"])
def test_formats_read_back_by_the_loaders(tmp_path, fmt):
    flow = np.stack(np.meshgrid(np.linspace(-5, 5, 8), np.linspace(-2.5, 2.5, 6)), -1).astype(np.float32)
    path = output_path(tmp_path, "frame_000001", fmt)
    write_flow(path, flow, fmt)
    if fmt == "npy":
        back = np.load(path)
        assert back.dtype == np.float32 and np.array_equal(back, flow)
    elif fmt == "davsn":
        assert path.name == "frame_000001_int16_x10.npy"
        back = read_flow_npy(path).transpose(1, 2, 0)  # the Cityscapes-Seq loader's reader
        assert np.abs(back - flow).max() <= 0.05 + 1e-6
    else:
        back, valid = read_flow_kitti(path)
        assert valid.all() and np.abs(back.transpose(1, 2, 0) - flow).max() <= 1 / 128 + 1e-6


def test_cli_writes_each_frame_once_and_resumes(tmp_path, capsys):
    from PIL import Image

    frames = tmp_path / "frames"
    frames.mkdir()
    base = _texture(48, 64)
    for i in range(4):
        Image.fromarray(np.roll(base, i, axis=1)).save(frames / f"f{i:03d}.png")
    out = tmp_path / "flow"
    assert main(["flow", str(frames), "--out", str(out), "--offset", "2", "--workers", "1", "--quiet"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["f002.npy", "f003.npy"]  # t >= K only
    flow = np.load(out / "f003.npy")
    assert flow.shape == (48, 64, 2) and abs(float(np.median(flow[8:-8, 8:-8, 0])) + 2) < 0.3  # 2 px in 2 frames
    stamp = (out / "f002.npy").stat().st_mtime_ns
    assert compute_flows(frames, out, offset=2, progress=False) == {"written": 0, "skipped": 2, "frames": 4}
    assert (out / "f002.npy").stat().st_mtime_ns == stamp
    assert main(["flow", str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert "missing: not a folder of frames or a video file" in capsys.readouterr().err


def test_flow_for_a_dataset_layout_lands_where_its_loader_reads_it(tmp_path, capsys):
    """``pipa flow ROOT --dataset viper``: one DA-VSN int16 x10 file per annotated frame, under the
    loader's name, so ``Viper(root, flow_root=out)`` finds and decodes it; a constant 3-px shift
    between the two frames comes out within 0.5 px; a second run writes nothing."""
    import numpy as np
    from PIL import Image

    from pipa.cli import main
    from pipa.data.benchmarks import Viper

    root = tmp_path / "viper"
    rng = np.random.default_rng(0)
    base = (rng.random((64, 100, 3)) * 255).astype(np.uint8)
    base = np.asarray(Image.fromarray(base).resize((200, 128), Image.BILINEAR))[:, :, :]  # smooth texture
    prev, cur = base[:, 10:106], base[:, 13:109]  # frame t shows frame t-1 three pixels to the right
    (root / "train" / "img" / "001").mkdir(parents=True)
    (root / "train" / "cls" / "001").mkdir(parents=True)
    Image.fromarray(prev).save(root / "train" / "img" / "001" / "001_00009.png")
    Image.fromarray(cur).save(root / "train" / "img" / "001" / "001_00010.png")
    Image.fromarray(np.full((128, 96), 3, np.uint8), mode="L").convert("P").save(root / "train" / "cls" / "001" / "001_00010.png")
    out = tmp_path / "flows"
    assert main(["flow", str(root), "--dataset", "viper", "--out", str(out), "--quiet", "--workers", "1"]) == 0
    assert (out / "001_0001000009_int16_x10.npy").is_file()
    item = Viper(root, flow_root=out)[0]
    inner = item["flow"][:, 16:-16, 16:-16]
    assert abs(float(inner[0].mean()) - 3.0) < 0.5 and abs(float(inner[1].mean())) < 0.5
    assert main(["flow", str(root), "--dataset", "viper", "--out", str(out), "--quiet"]) == 0
    assert "0 written, 1 already there" in capsys.readouterr().out.splitlines()[-1]
