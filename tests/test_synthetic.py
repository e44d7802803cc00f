import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipa.data.synthetic import CLASS_NAMES, SyntheticScenes


def test_deterministic_and_distinct():
    a = SyntheticScenes("target", "train", 48, 96, seed=3)
    b = SyntheticScenes("target", "train", 48, 96, seed=3)
    i1, l1 = a.render_image(5)
    i2, l2 = b.render_image(5)
    assert np.array_equal(i1, i2) and np.array_equal(l1, l2)
    i3, _ = a.render_image(6)
    assert not np.array_equal(i1, i3)
    i4, _ = SyntheticScenes("target", "val", 48, 96, seed=3).render_image(5)
    assert not np.array_equal(i1, i4)  # val is not a copy of train


def test_classes_and_layout():
    s = SyntheticScenes("source", "train", 96, 192)
    counts = np.zeros(len(CLASS_NAMES))
    for i in range(30):
        _, lab = s.render_image(i)
        counts += np.bincount(lab.ravel(), minlength=len(CLASS_NAMES))
        assert lab[0].max() != 0  # top row is never road
        assert (lab[-1] <= 1).mean() > 0.5  # bottom row is mostly road / sidewalk
    assert (counts > 0).all(), counts  # every class occurs


def test_domains_differ_in_look_not_layout_statistics():
    src = SyntheticScenes("source", "train", 64, 128)
    tgt = SyntheticScenes("target", "train", 64, 128)
    ms = np.mean([src.render_image(i)[0].astype(float).std(axis=(0, 1)).mean() for i in range(5)])
    # the target has noise: neighbouring pixels of flat road differ
    _, lab = tgt.render_image(0)
    img = tgt.render_image(0)[0].astype(float)
    road = lab == 0
    diff = np.abs(np.diff(img, axis=1)).sum(-1)[road[:, 1:] & road[:, :-1]]
    simg, slab = src.render_image(0)
    sroad = slab == 0
    sdiff = np.abs(np.diff(simg.astype(float), axis=1)).sum(-1)[sroad[:, 1:] & sroad[:, :-1]]
    assert np.median(diff) > np.median(sdiff)
    assert ms > 0


def _warp(prev: torch.Tensor, flow: np.ndarray, mode: str) -> torch.Tensor:
    """Sample ``prev`` (C, H, W) at p + flow(p) (grid_sample, align_corners=True)."""
    H, W = flow.shape[:2]
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float32)
    gx = (xs + flow[..., 0]) / (W - 1) * 2 - 1
    gy = (ys + flow[..., 1]) / (H - 1) * 2 - 1
    grid = torch.from_numpy(np.stack([gx, gy], -1))[None]
    return F.grid_sample(prev[None], grid, mode=mode, padding_mode="border", align_corners=True)[0]


@pytest.mark.parametrize("index", [0, 1, 2])
def test_flow_reproduces_next_frame_where_visible(index):
    s = SyntheticScenes("source", "train", 96, 192)  # noise-free domain: photometric check is exact
    clip = s.render_clip(index, 3)
    for t in (1, 2):
        valid = clip.valid[t]
        assert valid.mean() > 0.6
        lab = _warp(torch.from_numpy(clip.labels[t - 1]).float()[None], clip.flow[t], "nearest")[0].numpy()
        agree = (lab == clip.labels[t])[valid].mean()
        assert agree > 0.97, agree
        img = _warp(torch.from_numpy(clip.frames[t - 1]).permute(2, 0, 1).float(), clip.flow[t], "bilinear")
        err = np.abs(img.permute(1, 2, 0).numpy() - clip.frames[t].astype(np.float32)).max(-1)
        assert (err[valid] < 20).mean() > 0.93
        # and the flow is not trivially zero: the camera moves forward
        assert np.abs(clip.flow[t]).max() > 1.0
        # a zero flow would explain the frame much worse (the check can fail)
        zero = np.abs(clip.frames[t - 1].astype(np.float32) - clip.frames[t]).max(-1)
        assert (zero[valid] < 20).mean() < (err[valid] < 20).mean()


def test_ground_flow_matches_hand_formula():
    """A road pixel at row v sees depth Z = f*h/(v - horizon); one frame earlier the camera was
    `speed` metres behind, so the point sat at row horizon + (v - horizon) * Z / (Z + speed)."""
    from pipa.data import synthetic as syn

    s = SyntheticScenes("source", "train", 96, 192)
    clip = s.render_clip(4, 2)
    rng = syn._rng(0, "source", "train", 4)
    world = syn._make_world(rng, "source", 96, 192, 2)
    v, u = 90, int(round(world.cx))
    assert clip.labels[1][v, u] in (0, 1)
    Z = world.focal * syn.CAM_HEIGHT / (v - world.horizon)
    v_prev = world.horizon + (v - world.horizon) * Z / (Z + world.ego_speed)
    assert clip.flow[1][v, u, 1] == pytest.approx(v_prev - v, abs=1e-3)


def test_bad_arguments():
    with pytest.raises(ValueError, match="domain"):
        SyntheticScenes("game")
    with pytest.raises(ValueError, match="clip length"):
        SyntheticScenes().render_clip(0, 0)
