"""Image augmentation for training batches: random shift, rotation, scale and noise.

Applied on the fly to each training batch only; evaluation never sees it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field

from edgeslim.config.schema import StrictModel


class AugmentConfig(StrictModel):
    shift: float = Field(0.0, ge=0, description="max translation in pixels")
    rotate: float = Field(0.0, ge=0, le=180, description="max rotation in degrees")
    scale: float = Field(0.0, ge=0, lt=1, description="max relative zoom in or out")
    noise: float = Field(0.0, ge=0, description="std of added Gaussian noise (in normalised units)")


def augment_batch(x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """A randomly transformed copy of an image batch ``(N, C, H, W)``; other shapes get noise only."""
    n = x.shape[0]
    if x.dim() == 4 and (cfg.shift or cfg.rotate or cfg.scale):
        h, w = x.shape[-2:]
        angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(cfg.rotate)
        zoom = 1 + (torch.rand(n, generator=generator) * 2 - 1) * cfg.scale
        shift = (torch.rand(n, 2, generator=generator) * 2 - 1) * cfg.shift
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        theta = torch.stack(
            [torch.stack([cos, -sin, shift[:, 0] * 2 / w], 1), torch.stack([sin, cos, shift[:, 1] * 2 / h], 1)], 1
        )
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if cfg.noise:
        x = x + torch.randn(x.shape, generator=generator) * cfg.noise
    return x
