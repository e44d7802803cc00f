"""Built-in two-domain street-scene benchmark ("synthetic").

Scenes are rendered by ray casting a small 3-D world: a pinhole camera at height ``CAM_HEIGHT``
looks down a straight road with sidewalks, building / vegetation facades along both sides, and
billboard objects (cars, persons, poles) standing on the ground. Because every pixel has an exact
depth, consecutive frames of an ego-motion clip come with the exact optical flow.

Two domains share the geometry generator but not the look or the statistics:

* ``source`` ("game render"): flat per-class colours, sharp edges, no noise.
* ``target`` ("camera"): shifted palette, world-anchored textures, illumination gradients and
  vignetting, white balance and gamma, Gaussian blur, sensor noise, other object statistics
  (more cars, fewer persons, a lower horizon, taller buildings).

Every output is a deterministic function of ``(seed, domain, split, index)``.

Flow convention (the DA-VSN/TPS one): ``flow[t]`` is a *backward* flow on frame ``t``'s grid,
``(u, v)`` in pixels: pixel ``p`` of frame ``t`` shows what frame ``t-1`` shows at ``p + flow(p)``.
``valid[t]`` marks pixels whose point is visible (in bounds and not occluded) in frame ``t-1``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

CLASS_NAMES: tuple[str, ...] = (
    "road",
    "sidewalk",
    "building",
    "vegetation",
    "sky",
    "car",
    "person",
    "pole",
)
ROAD, SIDEWALK, BUILDING, VEGETATION, SKY, CAR, PERSON, POLE = range(8)
NUM_CLASSES = len(CLASS_NAMES)
# Cityscapes colours for the shared classes, so figures read like the literature's.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (128, 64, 128),
    (244, 35, 232),
    (70, 70, 70),
    (107, 142, 35),
    (70, 130, 180),
    (0, 0, 142),
    (220, 20, 60),
    (153, 153, 153),
)
IGNORE = 255
DOMAINS = ("source", "target")
SPLITS = ("train", "val")
GENERATOR_VERSION = 3

CAM_HEIGHT = 1.6  # metres
Z_MAX = 220.0  # facades end here; beyond it the vanishing point shows sky
INF = np.float32(1e9)


@dataclass
class _Facade:
    """Piecewise facade along one side of the road: segments ``[z0, z1)`` of one kind."""

    x: float  # lateral position of the facade plane (m)
    z0: np.ndarray
    z1: np.ndarray
    kind: np.ndarray  # 0 gap, 1 building, 2 vegetation
    height: np.ndarray
    colour: np.ndarray  # (n, 3)
    phase: np.ndarray  # texture phase per segment


@dataclass
class _Obj:
    cls: int
    x: float  # lateral centre (m)
    z: float  # depth at t=0 (m, world)
    w: float
    h: float
    v: float  # forward speed in m/frame (world)
    colours: np.ndarray  # (k, 3) part colours


@dataclass
class _World:
    road_l: float
    road_r: float
    side_w: float
    facades: list[_Facade]
    objects: list[_Obj]
    horizon: float
    cx: float
    focal: float
    ego_speed: float
    salt: int
    look: dict = field(default_factory=dict)


@dataclass(frozen=True)
class DomainStyle:
    """Object statistics and look of one domain (geometry priors are shared)."""

    horizon: tuple[float, float]  # fraction of the image height
    cars: float  # Poisson mean per scene
    persons: float
    pole_spacing: tuple[float, float]
    building_height: tuple[float, float]
    p_vegetation: float
    textured: bool


STYLES = {
    "source": DomainStyle((0.36, 0.46), 3.0, 8.0, (12.0, 20.0), (6.0, 24.0), 0.3, False),
    "target": DomainStyle((0.40, 0.50), 5.0, 6.0, (10.0, 18.0), (9.0, 32.0), 0.35, True),
}

# Base colours (linear RGB in [0, 1]) per domain. Target shifts stay away from other classes'
# source look (a class moved onto another's appearance cannot be adapted: benchmark lesson 3).
_SRC = {
    "road": (0.33, 0.33, 0.36),
    "marking": (0.95, 0.95, 0.95),
    "sidewalk": (0.66, 0.56, 0.60),
    "grass": (0.36, 0.58, 0.24),
    "vegetation": (0.22, 0.52, 0.18),
    "sky": (0.47, 0.67, 0.94),
    "window": (0.22, 0.28, 0.38),
    "pole": (0.62, 0.60, 0.38),
    "skin": (0.88, 0.68, 0.52),
}
_SRC_BUILDINGS = np.array(
    [(0.58, 0.46, 0.40), (0.72, 0.70, 0.62), (0.50, 0.46, 0.43), (0.64, 0.54, 0.38)], np.float32
)
_TGT = {
    "road": (0.29, 0.28, 0.27),
    "marking": (0.85, 0.72, 0.25),
    "sidewalk": (0.56, 0.54, 0.47),
    "grass": (0.40, 0.48, 0.20),
    "vegetation": (0.24, 0.38, 0.14),
    "sky_top": (0.22, 0.42, 0.86),
    "sky_bottom": (0.52, 0.68, 0.93),
    "window": (0.30, 0.36, 0.42),
    "pole": (0.42, 0.42, 0.40),
    "skin": (0.78, 0.58, 0.45),
}
_TGT_BUILDINGS = np.array(
    [(0.62, 0.32, 0.24), (0.60, 0.60, 0.57), (0.74, 0.66, 0.50), (0.40, 0.38, 0.36)], np.float32
)
_SRC_CARS = np.array(
    [(0.80, 0.10, 0.10), (0.10, 0.25, 0.80), (0.92, 0.92, 0.92), (0.10, 0.10, 0.12), (0.90, 0.80, 0.10)],
    np.float32,
)
_TGT_CARS = np.array(
    [(0.55, 0.56, 0.58), (0.12, 0.13, 0.15), (0.80, 0.80, 0.78), (0.35, 0.10, 0.10), (0.15, 0.20, 0.35)],
    np.float32,
)


def _rng(seed: int, domain: str, split: str, index: int, stream: int = 0) -> np.random.Generator:
    return np.random.default_rng([seed, DOMAINS.index(domain), SPLITS.index(split), index, stream])


def _hash_noise(ix: np.ndarray, iy: np.ndarray, salt: int) -> np.ndarray:
    """Deterministic value in [0, 1) per integer lattice cell (world-anchored texture)."""
    h = (ix.astype(np.int64) * 73856093) ^ (iy.astype(np.int64) * 19349663) ^ (salt * 83492791)
    h = (h ^ (h >> 13)) * 1274126177
    return ((h ^ (h >> 16)) & 0xFFFF).astype(np.float32) / 65536.0


def _smooth_noise(x: np.ndarray, y: np.ndarray, salt: int) -> np.ndarray:
    """Bilinearly interpolated lattice noise, in [0, 1)."""
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = (x - x0).astype(np.float32), (y - y0).astype(np.float32)
    a = _hash_noise(x0, y0, salt)
    b = _hash_noise(x0 + 1, y0, salt)
    c = _hash_noise(x0, y0 + 1, salt)
    d = _hash_noise(x0 + 1, y0 + 1, salt)
    return (a * (1 - fx) + b * fx) * (1 - fy) + (c * (1 - fx) + d * fx) * fy


def _make_facade(rng: np.random.Generator, x: float, style: DomainStyle, domain: str) -> _Facade:
    z0s, z1s, kinds, heights, cols = [], [], [], [], []
    z = -40.0
    palette = _SRC_BUILDINGS if domain == "source" else _TGT_BUILDINGS
    while z < Z_MAX:
        length = rng.uniform(6.0, 26.0)
        r = rng.random()
        if r < 0.1:
            kind, height = 0, 0.0
        elif r < 0.1 + style.p_vegetation:
            kind, height = 2, rng.uniform(4.0, 10.0)
        else:
            kind, height = 1, rng.uniform(*style.building_height)
        col = palette[rng.integers(len(palette))] * rng.uniform(0.85, 1.15)
        z0s.append(z)
        z1s.append(min(z + length, Z_MAX))
        kinds.append(kind)
        heights.append(height)
        cols.append(np.clip(col, 0, 1))
        z += length
    n = len(z0s)
    return _Facade(
        x,
        np.array(z0s, np.float32),
        np.array(z1s, np.float32),
        np.array(kinds, np.int64),
        np.array(heights, np.float32),
        np.array(cols, np.float32),
        rng.uniform(0, 100, n).astype(np.float32),
    )


def _make_world(rng: np.random.Generator, domain: str, height: int, width: int, length: int) -> _World:
    style = STYLES[domain]
    half = rng.uniform(3.5, 6.0)
    offset = rng.uniform(-0.4, 0.4) * half
    road_l, road_r = -half + offset, half + offset
    side_w = rng.uniform(2.0, 3.2)
    facades = [
        _make_facade(rng, road_l - side_w, style, domain),
        _make_facade(rng, road_r + side_w, style, domain),
    ]
    ego_speed = rng.uniform(0.6, 1.4)  # m per frame
    travel = ego_speed * max(length - 1, 0)
    near = 3.5 + travel  # nothing static may come closer than 3.5 m during the clip
    objects: list[_Obj] = []
    cars = _SRC_CARS if domain == "source" else _TGT_CARS
    lane_w = (road_r - road_l) / 2
    for _ in range(rng.poisson(style.cars)):
        lane = int(rng.integers(2))
        x = road_l + lane_w * (lane + 0.5) + rng.uniform(-0.4, 0.4)
        in_ego_lane = road_l + lane_w * lane <= 0.0 < road_l + lane_w * (lane + 1)
        # cars in the ego lane drive at the ego speed, so the camera never drives through them
        v = ego_speed * rng.uniform(0.9, 1.1) if in_ego_lane else rng.uniform(-1.2, 1.5)
        z = rng.uniform(6.0, 60.0) + max(0.0, -v) * max(length - 1, 0) + (0 if in_ego_lane else 0)
        if not in_ego_lane:
            z += travel * (v < ego_speed)
        w, h = rng.uniform(1.7, 2.0), rng.uniform(1.35, 1.7)
        body = cars[rng.integers(len(cars))] * rng.uniform(0.85, 1.1)
        objects.append(_Obj(CAR, x, z, w, h, v, np.clip(np.stack([body]), 0, 1)))
    for _ in range(rng.poisson(style.persons)):
        side = rng.integers(2)
        x = (road_l - rng.uniform(0.3, side_w - 0.3)) if side == 0 else (road_r + rng.uniform(0.3, side_w - 0.3))
        z = rng.uniform(near, near + 24.0)
        shirt = rng.uniform(0.1, 0.9, 3) if domain == "source" else rng.uniform(0.1, 0.7, 3)
        pants = rng.uniform(0.05, 0.3, 3) if domain == "source" else rng.uniform(0.15, 0.45, 3)
        skin = np.array(_SRC["skin"] if domain == "source" else _TGT["skin"]) * rng.uniform(0.7, 1.1)
        h = rng.uniform(1.6, 1.9)
        objects.append(_Obj(PERSON, x, z, 0.9, h, 0.0, np.clip(np.stack([skin, shirt, pants]), 0, 1)))
    for side, xe in ((0, road_l - 0.35), (1, road_r + 0.35)):
        z = near + rng.uniform(0, 8)
        while z < 90.0:
            objects.append(_Obj(POLE, xe, z, 0.4, rng.uniform(4.5, 7.0), 0.0, np.zeros((1, 3), np.float32)))
            z += rng.uniform(*style.pole_spacing)
    horizon = rng.uniform(*style.horizon) * height
    look: dict = {}
    if style.textured:
        look = {
            "wb": rng.uniform([1.0, 0.95, 0.84], [1.1, 1.02, 0.95]).astype(np.float32),
            "gamma": float(rng.uniform(0.8, 1.15)),
            "exposure": float(rng.uniform(0.8, 1.1)),
            "grad": rng.uniform(-0.35, 0.35, 2).astype(np.float32),
            "vignette": float(rng.uniform(0.1, 0.35)),
            "blur": float(rng.uniform(0.5, 1.1)),
            "noise": float(rng.uniform(0.015, 0.04)),
            "clouds": float(rng.uniform(0.0, 0.35)),
        }
    return _World(
        road_l,
        road_r,
        side_w,
        facades,
        objects,
        horizon,
        width / 2 + rng.uniform(-0.06, 0.06) * width,
        0.55 * width,
        ego_speed,
        int(rng.integers(1, 2**20)),
        look,
    )


def _facade_lookup(f: _Facade, z: np.ndarray) -> np.ndarray:
    idx = np.searchsorted(f.z1, z, side="right")
    return np.clip(idx, 0, len(f.z1) - 1)


def _render(world: _World, domain: str, height: int, width: int, t: int):
    """Render frame ``t`` of ``world``: image (H, W, 3) float32, label, depth, speed map."""
    textured = STYLES[domain].textured
    pal = _TGT if textured else _SRC
    cam_z = world.ego_speed * t
    us = np.arange(width, dtype=np.float32)
    vs = np.arange(height, dtype=np.float32)
    rx = ((us - world.cx) / world.focal)[None, :].repeat(height, 0)
    ry = ((vs - world.horizon) / world.focal)[:, None].repeat(width, 1)

    img = np.zeros((height, width, 3), np.float32)
    label = np.full((height, width), SKY, np.uint8)
    depth = np.full((height, width), INF, np.float32)
    speed = np.zeros((height, width), np.float32)  # world speed of the surface (m/frame)

    # sky
    if textured:
        s = np.clip(vs / max(world.horizon, 1.0), 0, 1)[:, None, None]
        sky = (1 - s) * np.array(pal["sky_top"], np.float32) + s * np.array(pal["sky_bottom"], np.float32)
        img[:] = sky
        c = world.look.get("clouds", 0.0)
        if c > 0:
            n = _smooth_noise(rx * 6.0, ry * 14.0, world.salt + 7)
            img += (c * np.clip(n - 0.45, 0, 1))[..., None]
    else:
        img[:] = np.array(pal["sky"], np.float32)

    # ground plane
    g = ry > 1e-4
    zg = np.where(g, CAM_HEIGHT / np.maximum(ry, 1e-4), INF)
    xg = rx * zg
    wz = zg + cam_z  # world depth
    road = g & (xg >= world.road_l) & (xg <= world.road_r)
    side = g & ~road & (xg >= world.road_l - world.side_w) & (xg <= world.road_r + world.side_w)
    grass = g & ~road & ~side
    label[road], label[side], label[grass] = ROAD, SIDEWALK, VEGETATION
    depth[g] = zg[g]
    centre = (world.road_l + world.road_r) / 2
    mark = road & (np.abs(xg - centre) < 0.09) & (np.mod(wz, 7.0) < 3.5)
    img[road] = pal["road"]
    img[mark] = pal["marking"]
    img[side] = pal["sidewalk"]
    img[grass] = pal["grass"]
    if textured:
        n = _smooth_noise(xg * 4.0, wz * 4.0, world.salt)
        img[road] *= (0.8 + 0.4 * n[road])[:, None]
        tiles = (np.mod(wz, 0.8) < 0.06) | (np.mod(xg, 0.8) < 0.06)
        img[side & tiles] *= 0.75
        n2 = _hash_noise(np.floor(xg * 6), np.floor(wz * 6), world.salt + 1)
        img[grass] *= (0.7 + 0.6 * n2[grass])[:, None]
    else:
        curb = side & ((np.abs(xg - world.road_l) < 0.15) | (np.abs(xg - world.road_r) < 0.15))
        img[curb] = 0.85

    # facades (left facade only sees rays going left, and vice versa)
    for f in world.facades:
        ok = (rx < -1e-4) if f.x < 0 else (rx > 1e-4)
        zf = np.where(ok, f.x / np.where(ok, rx, 1.0), INF)
        hf = CAM_HEIGHT - ry * zf  # height of the hit point above the ground
        wzf = zf + cam_z
        seg = _facade_lookup(f, wzf)
        hit = ok & (zf < depth) & (hf >= 0) & (wzf < Z_MAX)
        top = f.height[seg]
        veg = f.kind[seg] == 2
        top = np.where(veg, top + 0.8 * np.sin(wzf * 1.7 + f.phase[seg]) * (top > 0), top)
        hit &= hf <= top
        bld = hit & (f.kind[seg] == 1)
        vg = hit & veg
        label[bld], label[vg] = BUILDING, VEGETATION
        depth[hit] = zf[hit]
        img[bld] = f.colour[seg][bld]
        img[vg] = pal["vegetation"]
        # windows on a world-anchored grid
        win = bld & (np.mod(wzf + f.phase[seg], 3.2) > 0.9) & (np.mod(wzf + f.phase[seg], 3.2) < 2.3)
        win &= (np.mod(hf, 3.3) > 1.1) & (np.mod(hf, 3.3) < 2.5) & (hf > 2.0) & (hf < top - 0.8)
        img[win] = pal["window"]
        if textured:
            lit = _hash_noise(np.floor((wzf + f.phase[seg]) / 3.2), np.floor(hf / 3.3), world.salt + 3)
            img[win] *= (0.7 + 0.8 * lit[win])[:, None]
            n = _smooth_noise(wzf * 3.0, hf * 3.0, world.salt + 4)
            img[bld & ~win] *= (0.85 + 0.3 * n[bld & ~win])[:, None]
            leaves = _hash_noise(np.floor(wzf * 5), np.floor(hf * 5), world.salt + 5)
            img[vg] *= (0.55 + 0.9 * leaves[vg])[:, None]

    # billboards, far to near (painter's algorithm with a depth test against the scene)
    objs = sorted(world.objects, key=lambda o: -(o.z + o.v * t - cam_z))
    for o in objs:
        z = o.z + o.v * t - cam_z
        if z < 1.0:
            continue
        u0 = int(np.floor(world.cx + world.focal * (o.x - o.w / 2) / z))
        u1 = int(np.ceil(world.cx + world.focal * (o.x + o.w / 2) / z)) + 1
        v0 = int(np.floor(world.horizon + world.focal * (CAM_HEIGHT - o.h) / z))
        v1 = int(np.ceil(world.horizon + world.focal * CAM_HEIGHT / z)) + 1
        u0, u1, v0, v1 = max(u0, 0), min(u1, width), max(v0, 0), min(v1, height)
        if u0 >= u1 or v0 >= v1:
            continue
        a = (rx[v0:v1, u0:u1] * z - (o.x - o.w / 2)) / o.w  # across, 0..1
        b = (CAM_HEIGHT - ry[v0:v1, u0:u1] * z) / o.h  # up, 0..1
        inside = (a >= 0) & (a <= 1) & (b >= 0) & (b <= 1) & (z < depth[v0:v1, u0:u1])
        col = np.zeros(a.shape + (3,), np.float32)
        if o.cls == CAR:
            wheel = (b < 0.25) & (((a > 0.05) & (a < 0.25)) | ((a > 0.75) & (a < 0.95)))
            body = (b >= 0.08) & (b < 0.6)
            cabin = (b >= 0.6) & (a > 0.12) & (a < 0.88)
            glass = cabin & (b < 0.93) & (a > 0.17) & (a < 0.83)
            lights = (b > 0.38) & (b < 0.48) & ((a < 0.14) | (a > 0.86))
            mask = inside & (wheel | body | cabin)
            col[:] = o.colours[0]
            if textured:  # specular sheen on the body
                col *= (0.8 + 0.35 * b)[..., None]
            col[glass] = (0.12, 0.14, 0.18) if not textured else (0.22, 0.26, 0.3)
            col[lights & body] = (0.9, 0.1, 0.05) if not textured else (0.7, 0.15, 0.1)
            col[wheel & ~body | (wheel & (b < 0.1))] = (0.05, 0.05, 0.05)
        elif o.cls == PERSON:
            head = ((a - 0.5) / 0.2) ** 2 + ((b - 0.9) / 0.085) ** 2 < 1
            torso = (a > 0.12) & (a < 0.88) & (b > 0.48) & (b < 0.82)
            legs = (b <= 0.48) & (((a > 0.2) & (a < 0.47)) | ((a > 0.53) & (a < 0.8)))
            mask = inside & (head | torso | legs)
            col[head] = o.colours[0]
            col[torso] = o.colours[1]
            col[legs] = o.colours[2]
        else:  # pole
            mask = inside
            col[:] = pal["pole"]
            if textured:
                col *= (0.75 + 0.5 * a)[..., None]  # cylinder shading
        ys, xs = np.nonzero(mask)
        ys, xs = ys + v0, xs + u0
        img[ys, xs] = col[mask]
        label[ys, xs] = o.cls
        depth[ys, xs] = z
        speed[ys, xs] = o.v
    return img, label, depth, speed


def _camera_effects(img: np.ndarray, world: _World, rng: np.random.Generator) -> np.ndarray:
    """Photometric 'camera' pipeline of the target domain (per frame noise, fixed look)."""
    lk = world.look
    h, w, _ = img.shape
    img = img * lk["wb"] * lk["exposure"]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    xn, yn = xx / w - 0.5, yy / h - 0.5
    img *= (1 + lk["grad"][0] * xn + lk["grad"][1] * yn)[..., None]
    img *= (1 - lk["vignette"] * (xn**2 + yn**2) * 2)[..., None]
    img = np.clip(img, 0, 1) ** lk["gamma"]
    img = _gaussian_blur(img, lk["blur"])
    img = img + rng.normal(0, lk["noise"], img.shape).astype(np.float32)
    return img


def _gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    r = max(1, int(np.ceil(2.5 * sigma)))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2).astype(np.float32)
    k /= k.sum()
    pad = np.pad(img, ((r, r), (r, r), (0, 0)), mode="edge")
    tmp = sum(k[i] * pad[:, i : i + img.shape[1]] for i in range(2 * r + 1))
    return sum(k[i] * tmp[i : i + img.shape[0]] for i in range(2 * r + 1))


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


@dataclass(frozen=True)
class SyntheticScenes:
    """Deterministic renderer of one domain/split of the built-in benchmark.

    ``render_image(i)`` gives ``(image uint8 (H, W, 3), label uint8 (H, W))``;
    ``render_clip(i, length)`` gives a :class:`Clip` of ``length`` consecutive frames.
    """

    domain: str = "source"
    split: str = "train"
    height: int = 96
    width: int = 192
    seed: int = 0

    def __post_init__(self) -> None:
        if self.domain not in DOMAINS:
            raise ValueError(f"synthetic domain must be one of {DOMAINS}, got {self.domain!r}")
        if self.split not in SPLITS:
            raise ValueError(f"synthetic split must be one of {SPLITS}, got {self.split!r}")
        if self.height < 16 or self.width < 16:
            raise ValueError(f"synthetic image size must be at least 16x16, got {self.height}x{self.width}")

    def render_image(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        clip = self.render_clip(index, 1)
        return clip.frames[0], clip.labels[0]

    def render_clip(self, index: int, length: int) -> "Clip":
        if length < 1:
            raise ValueError(f"clip length must be >= 1, got {length}")
        rng = _rng(self.seed, self.domain, self.split, index)
        world = _make_world(rng, self.domain, self.height, self.width, length)
        noise_rng = _rng(self.seed, self.domain, self.split, index, stream=1)
        frames, labels, depths, speeds = [], [], [], []
        for t in range(length):
            img, lab, dep, spd = _render(world, self.domain, self.height, self.width, t)
            if STYLES[self.domain].textured:
                img = _camera_effects(img, world, noise_rng)
            frames.append(_to_uint8(img))
            labels.append(lab)
            depths.append(dep)
            speeds.append(spd)
        flows = np.zeros((length, self.height, self.width, 2), np.float32)
        valid = np.zeros((length, self.height, self.width), bool)
        for t in range(1, length):
            flows[t], valid[t] = _backward_flow(world, depths[t], speeds[t], depths[t - 1], self.height, self.width)
        return Clip(np.stack(frames), np.stack(labels), flows, valid)


@dataclass
class Clip:
    """``frames`` (T, H, W, 3) uint8, ``labels`` (T, H, W) uint8, ``flow`` (T, H, W, 2) float32
    (``flow[0]`` is zero), ``valid`` (T, H, W) bool (``valid[0]`` is False)."""

    frames: np.ndarray
    labels: np.ndarray
    flow: np.ndarray
    valid: np.ndarray


def _backward_flow(world: _World, depth_t, speed_t, depth_prev, height: int, width: int):
    """Exact flow from frame t to t-1: a surface at depth Z now was at Z + (ego - v) before."""
    us = np.arange(width, dtype=np.float32)[None, :]
    vs = np.arange(height, dtype=np.float32)[:, None]
    rel = world.ego_speed - speed_t
    finite = depth_t < INF / 2
    ratio = np.where(finite, depth_t / np.maximum(depth_t + rel, 1e-3), 1.0)
    u_prev = world.cx + (us - world.cx) * ratio
    v_prev = world.horizon + (vs - world.horizon) * ratio
    flow = np.stack([u_prev - us, v_prev - vs], -1).astype(np.float32)
    inb = (u_prev >= 0) & (u_prev <= width - 1) & (v_prev >= 0) & (v_prev <= height - 1)
    ui = np.clip(np.rint(u_prev), 0, width - 1).astype(np.int64)
    vi = np.clip(np.rint(v_prev), 0, height - 1).astype(np.int64)
    seen = depth_prev[vi, ui]
    expect = np.where(finite, depth_t + rel, INF)
    visible = np.where(finite, np.abs(seen - expect) <= 0.05 * expect + 0.05, seen >= INF / 2)
    return flow, inb & visible


def config_digest(**params: object) -> str:
    """Short stable digest of the generator parameters (cache keys)."""
    text = repr(sorted(params.items())) + f"v{GENERATOR_VERSION}"
    return hashlib.sha1(text.encode()).hexdigest()[:12]
