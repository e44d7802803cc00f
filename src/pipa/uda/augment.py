"""Strong photometric augmentation (DACS/DAFormer): colour jitter and Gaussian blur, in plain torch
on (B, 3, H, W) images in [0, 1]. Each image draws its own parameters."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


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
        return (torch.rand(b, generator=generator, device="cpu") * (hi - lo) + lo).to(x.device, x.dtype)

    s = strength
    x = x * u(1 - s, 1 + s).view(-1, 1, 1, 1)
    mean = _gray(x).mean((2, 3), keepdim=True)
    x = (x - mean) * u(1 - s, 1 + s).view(-1, 1, 1, 1) + mean
    g = _gray(x)
    x = (x - g) * u(1 - s, 1 + s).view(-1, 1, 1, 1) + g
    x = _hue_rotate(x, u(-s / 2, s / 2) * math.pi)
    return x.clamp(0, 1)


def gaussian_blur(x: Tensor, sigma: Tensor) -> Tensor:
    """Blur each image with its own sigma (B,) (separable kernel, reflect padding)."""
    smax = float(sigma.max())
    r = max(1, int(math.ceil(3 * smax)))
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
                   sigma: tuple[float, float] = (0.15, 1.15), generator: torch.Generator | None = None) -> Tensor:
    """DACS's strong transform: colour jitter with probability ``jitter_p``, blur with ``blur_p``."""
    b = x.shape[0]
    do_j = (torch.rand(b, generator=generator) < jitter_p).to(x.device)
    if do_j.any():
        x = torch.where(do_j.view(-1, 1, 1, 1), color_jitter(x, jitter_strength, generator), x)
    do_b = (torch.rand(b, generator=generator) < blur_p).to(x.device)
    sig = (torch.rand(b, generator=generator) * (sigma[1] - sigma[0]) + sigma[0]).to(x.device)
    if do_b.any():
        x = torch.where(do_b.view(-1, 1, 1, 1), gaussian_blur(x, sig), x)
    return x
