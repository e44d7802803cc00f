"""Strong photometric augmentation (DACS/DAFormer): colour jitter and Gaussian blur, in plain torch
on (B, 3, H, W) images in [0, 1]. Each image draws its own parameters."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ..core.syncs import on_host


def _gray(x: Tensor) -> Tensor:
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])


def _hue_rotate(x: Tensor, angle: Tensor) -> Tensor:
    """Rotate hue by ``angle`` (B,) radians in YIQ space."""
    m = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], device=x.device, dtype=x.dtype)
    yiq = torch.einsum("ij,bjhw->bihw", m, x)
    c, s = torch.cos(angle).view(-1, 1, 1), torch.sin(angle).view(-1, 1, 1)
    i, q = yiq[:, 1], yiq[:, 2]
    yiq = torch.stack([yiq[:, 0], c * i - s * q, s * i + c * q], 1)
    return torch.einsum("ij,bjhw->bihw", torch.linalg.inv(m), yiq)


def color_jitter(x: Tensor, strength: float, generator: torch.Generator | None = None) -> Tensor:
    """Brightness, contrast, saturation (factors in [1-s, 1+s]) and hue (± s/2 · π) per image."""
    b = x.shape[0]

    def u(lo: float, hi: float) -> Tensor:
        return (torch.rand(b, generator=generator, device="cpu") * (hi - lo) + lo).to(x.device, x.dtype, non_blocking=True)

    s = strength
    x = x * u(1 - s, 1 + s).view(-1, 1, 1, 1)
    mean = _gray(x).mean((2, 3), keepdim=True)
    x = (x - mean) * u(1 - s, 1 + s).view(-1, 1, 1, 1) + mean
    g = _gray(x)
    x = (x - g) * u(1 - s, 1 + s).view(-1, 1, 1, 1) + g
    x = _hue_rotate(x, u(-s / 2, s / 2) * math.pi)
    return x.clamp(0, 1)


def rgb_to_hsv(x: Tensor) -> Tensor:
    """(B, 3, H, W) RGB in [0, 1] -> HSV with hue in radians [0, 2π), saturation and value in [0, 1]."""
    r, g, b = x.unbind(1)
    v, arg = x.max(1)
    c = v - x.min(1).values
    s = torch.where(v > 0, c / v.clamp_min(1e-12), torch.zeros_like(v))
    cc = c.clamp_min(1e-12)
    h = torch.stack([((g - b) / cc) % 6, (b - r) / cc + 2, (r - g) / cc + 4], 1).gather(1, arg[:, None])[:, 0]
    h = torch.where(c > 0, h * (math.pi / 3), torch.zeros_like(h))
    return torch.stack([h, s, v], 1)


def hsv_to_rgb(x: Tensor) -> Tensor:
    """Inverse of :func:`rgb_to_hsv`."""
    h, s, v = x.unbind(1)
    k = torch.stack([(5 + h * 3 / math.pi) % 6, (3 + h * 3 / math.pi) % 6, (1 + h * 3 / math.pi) % 6], 1)
    return v[:, None] - (v * s)[:, None] * torch.clamp(torch.minimum(k, 4 - k), 0, 1)


def color_jitter_reference(x: Tensor, strength: float, generator: torch.Generator | None = None,
                           only: str | None = None) -> Tensor:
    """The DACS/DAFormer jitter (kornia 0.5.8 ``ColorJitter(s, s, s, s)``): per image, brightness
    ``x + U(-s, s)``, contrast ``x · U(1-s, 1+s)``, saturation ``S · U(1-s, 1+s)`` and hue
    ``H + U(-s, s) · 2π`` (in HSV), each clamped to [0, 1], in one random order per batch.
    ``only`` (brightness | contrast | saturation | hue) applies that operation alone (tests)."""
    b = x.shape[0]

    def u(lo: float, hi: float) -> Tensor:
        return (torch.rand(b, generator=generator, device="cpu") * (hi - lo) + lo).to(x.device, x.dtype, non_blocking=True).view(-1, 1, 1, 1)

    s = strength
    bright, contrast, sat, hue = u(-s, s), u(max(0.0, 1 - s), 1 + s), u(max(0.0, 1 - s), 1 + s), u(-s, s)

    def saturation(y: Tensor) -> Tensor:
        hsv = rgb_to_hsv(y)
        return hsv_to_rgb(torch.cat([hsv[:, :1], (hsv[:, 1:2] * sat).clamp(0, 1), hsv[:, 2:]], 1))

    def hue_shift(y: Tensor) -> Tensor:
        hsv = rgb_to_hsv(y)
        return hsv_to_rgb(torch.cat([torch.remainder(hsv[:, :1] + hue * 2 * math.pi, 2 * math.pi), hsv[:, 1:]], 1))

    ops = [lambda y: y + bright, lambda y: y * contrast, saturation, hue_shift]
    names = ["brightness", "contrast", "saturation", "hue"]
    for i in on_host(torch.randperm(4, generator=generator)).tolist():
        if only is None or names[i] == only:
            x = ops[i](x).clamp(0, 1)
    return x


def gaussian_blur(x: Tensor, sigma: Tensor) -> Tensor:
    """Blur each image with its own sigma (B,) (separable kernel, reflect padding)."""
    smax = float(on_host(sigma.cpu().max()))  # sigma: drawn on the host
    r = max(1, int(math.ceil(3 * smax)))
    sigma = sigma.to(x.device, non_blocking=True)
    r = min(r, min(x.shape[-2:]) - 1)
    t = torch.arange(-r, r + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-0.5 * (t.view(1, -1) / sigma.view(-1, 1).to(x.dtype).clamp_min(1e-3)) ** 2)
    k = k / k.sum(1, keepdim=True)  # (B, 2r+1)
    b, c, h, w = x.shape
    xp = F.pad(x, (r, r, r, r), mode="reflect").reshape(1, b * c, h + 2 * r, w + 2 * r)
    kk = k.repeat_interleave(c, 0)
    xp = F.conv2d(xp, kk.view(b * c, 1, 1, -1), groups=b * c)
    xp = F.conv2d(xp, kk.view(b * c, 1, -1, 1), groups=b * c)
    return xp.view(b, c, h, w)


def strong_augment(x: Tensor, jitter_p: float = 0.2, jitter_strength: float = 0.2, blur_p: float = 0.5,
                   sigma: tuple[float, float] = (0.15, 1.15), generator: torch.Generator | None = None,
                   jitter_ops: str = "pipa") -> Tensor:
    """DACS's strong transform: colour jitter with probability ``jitter_p`` (``jitter_ops``:
    ``reference`` = :func:`color_jitter_reference`, ``pipa`` = :func:`color_jitter`), blur with
    ``blur_p``. (B, 3, H, W) in [0, 1] -> same."""
    b = x.shape[0]
    # the decisions are drawn and read on the host (the step's CPU generator): no GPU synchronisation
    do_j = on_host(torch.rand(b, generator=generator) < jitter_p)
    if any(do_j.tolist()):
        jitter = color_jitter_reference if jitter_ops == "reference" else color_jitter
        x = torch.where(do_j.to(x.device, non_blocking=True).view(-1, 1, 1, 1), jitter(x, jitter_strength, generator), x)
    do_b = on_host(torch.rand(b, generator=generator) < blur_p)
    sig = on_host(torch.rand(b, generator=generator) * (sigma[1] - sigma[0]) + sigma[0])
    if any(do_b.tolist()):
        x = torch.where(do_b.to(x.device, non_blocking=True).view(-1, 1, 1, 1), gaussian_blur(x, sig), x)
    return x
