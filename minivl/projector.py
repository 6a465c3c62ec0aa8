"""Pixel unshuffle and the MLP projector: from ViT patches to LLM tokens.

InternVL merges each 2x2 block of neighbouring patch features into one token with 4x the
channels (``pixel_shuffle`` with ``scale_factor=0.5``), cutting a 448 px tile from 1024 to
256 tokens, then maps it to the LLM width with ``mlp1``::

    (N, 32, 32, C) -> pixel_shuffle -> (N, 16, 16, 4C) -> (N, 256, 4C) -> mlp1 -> (N, 256, H_llm)

Explained in chapter 3 (``notebooks/03_pixel_unshuffle_and_projector.ipynb``).
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn


def pixel_shuffle(x: torch.Tensor, scale_factor: float = 0.5, version: str = "v2") -> torch.Tensor:
    """(N, H, W, C) -> (N, H*s, W*s, C/s^2), InternVL's space-to-depth merge.

    With ``s = 0.5`` and ``version="v2"`` (InternVL 2.x), output token ``[i, j]`` is the
    concatenation of the 2x2 block ``x[2i, 2j], x[2i, 2j+1], x[2i+1, 2j], x[2i+1, 2j+1]``
    (top-left, top-right, bottom-left, bottom-right). ``version="v1"`` (InternVL 1.x) skips
    the last permute, so its output grid is transposed; it is kept for documentation only.

    Explained in chapter 3 (``notebooks/03_pixel_unshuffle_and_projector.ipynb``).
    """
    if x.ndim != 4:
        raise ValueError(f"pixel_shuffle expects (N, H, W, C), got shape {tuple(x.shape)}")
    if version not in ("v1", "v2"):
        raise ValueError(f"pixel_shuffle version must be 'v1' or 'v2', got {version!r}")
    n, h, w, c = x.shape
    r = round(1 / scale_factor)
    if not math.isclose(r * scale_factor, 1.0) or r < 1:
        raise ValueError(f"scale_factor must be 1/r for an integer r, got {scale_factor}")
    if h % r or w % r:
        raise ValueError(f"pixel_shuffle: grid {h}x{w} is not divisible by {r} (scale_factor {scale_factor})")
    # (N, H, W, C) -> (N, H, W/r, C*r): merge r neighbouring columns
    x = x.reshape(n, h, w // r, c * r)
    # (N, H, W/r, C*r) -> (N, W/r, H, C*r)
    x = x.permute(0, 2, 1, 3)
    # (N, W/r, H, C*r) -> (N, W/r, H/r, C*r*r): merge r neighbouring rows
    x = x.reshape(n, w // r, h // r, c * r * r)
    if version == "v1":
        warnings.warn(
            "pixel_shuffle version 'v1' returns a transposed grid; InternVL 2.x uses 'v2'",
            stacklevel=2,
        )
        return x
    # (N, W/r, H/r, C*r*r) -> (N, H/r, W/r, C*r*r)
    return x.permute(0, 2, 1, 3).contiguous()


def num_image_token(image_size: int = 448, patch_size: int = 14, scale_factor: float = 0.5) -> int:
    """LLM tokens per tile: ``(image_size // patch_size)^2 * scale_factor^2`` (256 for 448/14/0.5).

    Explained in chapter 3 (``notebooks/03_pixel_unshuffle_and_projector.ipynb``).
    """
    return int((image_size // patch_size) ** 2 * scale_factor**2)


class MLPProjector(nn.Sequential):
    """InternVL's ``mlp1``: LayerNorm(4C, eps 1e-5) -> Linear(4C, H_llm) -> GELU -> Linear(H_llm, H_llm).

    A ``nn.Sequential`` so the state-dict keys are ``0.*``, ``1.*`` and ``3.*``, as under the
    official ``mlp1.`` prefix. ``vit_hidden_size`` is C; the input width is
    ``C * (1 / downsample_ratio)^2``.

    Explained in chapter 3 (``notebooks/03_pixel_unshuffle_and_projector.ipynb``).
    """

    def __init__(self, vit_hidden_size: int, llm_hidden_size: int, downsample_ratio: float = 0.5) -> None:
        in_features = vit_hidden_size * round(1 / downsample_ratio) ** 2
        super().__init__(
            nn.LayerNorm(in_features),  # torch default eps 1e-5, unlike the ViT's 1e-6
            nn.Linear(in_features, llm_hidden_size),
            nn.GELU(),
            nn.Linear(llm_hidden_size, llm_hidden_size),
        )
        self.in_features = in_features
        self.out_features = llm_hidden_size


def extract_feature(
    vision_model: nn.Module,
    projector: nn.Module,
    pixel_values: torch.Tensor,
    select_layer: int = -1,
    downsample_ratio: float = 0.5,
    ps_version: str = "v2",
) -> torch.Tensor:
    """Tiles (N, 3, H, W) -> LLM-ready image tokens (N, (H/p * W/p) * r^2, H_llm).

    Runs the ViT to ``select_layer``, drops CLS, restores the square patch grid,
    pixel-shuffles and applies the projector, as the official ``extract_feature`` does.

    Explained in chapter 3 (``notebooks/03_pixel_unshuffle_and_projector.ipynb``).
    """
    vit_embeds = vision_model(pixel_values, select_layer=select_layer)  # (N, 1 + P, C)
    vit_embeds = vit_embeds[:, 1:, :]  # drop CLS: (N, P, C)
    n, p, c = vit_embeds.shape
    side = math.isqrt(p)
    if side * side != p:
        raise ValueError(f"extract_feature: {p} patches do not form a square grid (use square tiles)")
    # (N, P, C) -> (N, side, side, C)
    vit_embeds = vit_embeds.reshape(n, side, side, c)
    vit_embeds = pixel_shuffle(vit_embeds, scale_factor=downsample_ratio, version=ps_version)
    # (N, side*r, side*r, C/r^2) -> (N, tokens, C/r^2), row-major over the merged grid
    vit_embeds = vit_embeds.reshape(n, -1, vit_embeds.shape[-1])
    return projector(vit_embeds)


__all__ = ["MLPProjector", "extract_feature", "num_image_token", "pixel_shuffle"]
