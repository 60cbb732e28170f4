"""Batch augmentation on tensors, on whatever device the batch is on: the one
implementation behind every loader (``workers``, ``memory``, ``device``, ``device-cache``).

:class:`~facekd.data.transforms.AugmentCfg` says what to apply: a flip, one affine warp
(shift, zoom, rotation) per sample through ``affine_grid``/``grid_sample``, colour jitter,
grayscale and blur. Random draws come from a CPU ``torch.Generator`` (a few numbers per
sample), so a run is repeatable whatever the device, and the loaders give the same
batches for the same seed.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from facekd.data.transforms import AugmentCfg

_GRAY = (0.299, 0.587, 0.114)


def _uniform(n: int, low: float, high: float, gen: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=gen)


def _gray(x: torch.Tensor) -> torch.Tensor:
    w = torch.tensor(_GRAY, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


def affine_thetas(n: int, height: int, width: int, cfg: AugmentCfg, gen: torch.Generator) -> torch.Tensor:
    """(n, 2, 3) sampling matrices for ``F.affine_grid`` (normalised coordinates).

    Per sample: mirrored with probability ``cfg.flip``; with probability
    ``cfg.affine_p``, shifted by up to ``cfg.shift`` of the size, zoomed by up to
    ``cfg.scale`` and rotated by up to ``cfg.rotate`` degrees. The rotation is done in
    pixel space, so a 112x96 crop is not sheared.
    """
    return _draw_affine(n, height, width, cfg, gen)[0]


def _draw_affine(n: int, height: int, width: int, cfg: AugmentCfg,
                 gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`affine_thetas` and the per-sample flip and warp draws behind them."""
    flip = torch.rand(n, generator=gen) < cfg.flip
    warp = torch.rand(n, generator=gen) < cfg.affine_p
    angle = torch.where(warp, _uniform(n, -cfg.rotate, cfg.rotate, gen), torch.zeros(n)) * (math.pi / 180)
    zoom = torch.where(warp, _uniform(n, 1 - cfg.scale, 1 + cfg.scale, gen), torch.ones(n))
    tx = torch.where(warp, _uniform(n, -cfg.shift, cfg.shift, gen), torch.zeros(n)) * 2
    ty = torch.where(warp, _uniform(n, -cfg.shift, cfg.shift, gen), torch.zeros(n)) * 2
    c, s = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    sign = torch.where(flip, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    # Normalised coords scale x by 2/W and y by 2/H: R_norm = D R D^-1 with D = diag(2/W, 2/H).
    theta[:, 0, 0] = c * sign
    theta[:, 0, 1] = -s * (height / width)
    theta[:, 1, 0] = s * (width / height) * sign
    theta[:, 1, 1] = c
    theta[:, 0, 2] = tx
    theta[:, 1, 2] = ty
    return theta, flip, warp


def _on(mask: torch.Tensor, device: torch.device) -> torch.Tensor:
    return mask.nonzero().flatten().to(device)


def augment_batch(x: torch.Tensor, cfg: AugmentCfg, gen: torch.Generator) -> torch.Tensor:
    """Augments a batch of crops.

    Each operation runs only on the samples that drew it (a flip alone is an exact
    mirror, not a resampling), which on a CPU makes a batch about 3x cheaper than
    transforming every sample; the random draws are the same either way.

    Args:
        x: (N, 3, H, W) pixels on 0..255 (uint8 or float), any device.
        cfg: What to apply and how strongly.
        gen: CPU generator for the random draws.

    Returns:
        (N, 3, H, W) float32 pixels on 0..255, on ``x``'s device.
    """
    n, _, h, w = x.shape
    x = x.to(torch.float32, copy=True)  # changed in place below; the caller's batch is not
    theta, flip, warp = _draw_affine(n, h, w, cfg, gen)
    if warp.any():
        i = _on(warp, x.device)
        part = x.index_select(0, i)
        grid = F.affine_grid(theta[warp].to(x.device), list(part.shape), align_corners=False)
        x[i] = F.grid_sample(part, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if (flip & ~warp).any():
        i = _on(flip & ~warp, x.device)
        x[i] = x.index_select(0, i).flip(3)
    if cfg.color_p > 0 and cfg.color > 0:
        on = torch.rand(n, generator=gen) < cfg.color_p
        k = cfg.color
        factors = [1 + on.float() * _uniform(n, -k, k, gen) for _ in range(3)]  # brightness, contrast, saturation
        if on.any():
            i = _on(on, x.device)
            b, c, s = (f[on].to(x.device).view(-1, 1, 1, 1) for f in factors)
            part = x.index_select(0, i) * b
            mean = _gray(part).mean(dim=(2, 3), keepdim=True)
            part = (part - mean) * c + mean
            g = _gray(part)
            x[i] = (part - g) * s + g
    if cfg.gray_p > 0:
        on = torch.rand(n, generator=gen) < cfg.gray_p
        if on.any():
            i = _on(on, x.device)
            x[i] = _gray(x.index_select(0, i)).expand(-1, 3, -1, -1)
    if cfg.blur_p > 0:
        from torchvision.transforms.v2.functional import gaussian_blur

        on = torch.rand(n, generator=gen) < cfg.blur_p
        if on.any():
            i = _on(on, x.device)
            x[i] = gaussian_blur(x.index_select(0, i), kernel_size=[5, 5], sigma=[1.0, 1.0])
    return x.clamp_(0, 255)
