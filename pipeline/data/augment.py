"""Training-batch augmentation: images (random shift, rotation, scale, noise) and token ids
(random deletion and neighbour swaps, as in "easy data augmentation" for small text tasks).

Applied on the fly to each training batch only, from the run's seeded generator; evaluation
never sees it.
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
    token_delete: float = Field(0.0, ge=0, lt=1, description="text: probability that a token is deleted")
    token_swap: float = Field(0.0, ge=0, le=1, description="text: neighbour swaps per token")

    @property
    def for_images(self) -> bool:
        return bool(self.shift or self.rotate or self.scale or self.noise)

    @property
    def for_tokens(self) -> bool:
        return bool(self.token_delete or self.token_swap)


def check_augment(cfg: AugmentConfig, sample: torch.Tensor | dict[str, torch.Tensor], where: str) -> None:
    """Image options need an image tensor; token options need ``input_ids`` + ``attention_mask``."""
    from edgeslim.errors import UserError

    named = isinstance(sample, dict)
    if named and cfg.for_images:
        raise UserError(
            f"{where}: shift/rotate/scale/noise work on image tensors, not on named inputs ({list(sample)})"
        )
    if cfg.for_tokens and not (named and {"input_ids", "attention_mask"} <= set(sample)):
        got = list(sample) if named else "one tensor"
        raise UserError(f"{where}: token_delete/token_swap need input_ids and attention_mask inputs (got {got})")


def augment_inputs(
    x: torch.Tensor | dict[str, torch.Tensor], cfg: AugmentConfig, generator: torch.Generator
) -> torch.Tensor | dict[str, torch.Tensor]:
    if isinstance(x, dict):
        return augment_tokens(x, cfg, generator) if cfg.for_tokens else x
    return augment_batch(x, cfg, generator)


def augment_tokens(
    x: dict[str, torch.Tensor], cfg: AugmentConfig, generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """Delete and swap tokens between the first and last real token of each right-padded text
    (``[CLS]`` and ``[SEP]`` stay); the freed positions become padding and the mask follows."""
    ids, mask = x["input_ids"], x["attention_mask"]
    out_ids, out_mask = ids.clone(), mask.clone()
    padded = ids[mask == 0]
    pad_id = int(padded[0]) if len(padded) else 0
    for i in range(len(ids)):
        length = int(mask[i].sum())
        if length <= 3:
            continue
        inner = ids[i, 1 : length - 1]
        keep = torch.rand(len(inner), generator=generator) >= cfg.token_delete
        if keep.any():
            inner = inner[keep]
        inner = inner.clone()
        for _ in range(round(cfg.token_swap * len(inner))):
            if len(inner) < 2:
                break
            j = int(torch.randint(len(inner) - 1, (1,), generator=generator))
            inner[[j, j + 1]] = inner[[j + 1, j]]
        text = torch.cat([ids[i, :1], inner, ids[i, length - 1 : length]])
        out_ids[i] = pad_id
        out_ids[i, : len(text)] = text
        out_mask[i] = 0
        out_mask[i, : len(text)] = 1
    return {**x, "input_ids": out_ids, "attention_mask": out_mask}


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
