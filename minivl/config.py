"""Configs for minivl: plain dataclasses with preset constructors.

This module holds the vision part (InternViT). The shapes of the released encoders come from
the InternVL 2.5 report (Table 1) and the released ``config.json`` files:

==========================  ===============  ==================
                            InternViT-300M   InternViT-6B
==========================  ===============  ==================
hidden_size                 1024             3200
num_hidden_layers           24               45
num_attention_heads         16 (dim 64)      25 (dim 128)
intermediate_size           4096             12800
norm_type                   layer_norm       rms_norm
qk_normalization            False            True
qkv_bias                    True             False
==========================  ===============  ==================

Explained in chapter 2 (``notebooks/02_internvit.ipynb``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

NORM_TYPES = ("layer_norm", "rms_norm")


@dataclass
class VisionConfig:
    """Shape and behaviour of an InternViT encoder (official ``InternVisionConfig`` field names).

    ``initializer_factor`` is the initial value of the layer-scale vectors ``ls1``/``ls2``;
    ``drop_path_rate`` is the stochastic-depth rate of the *last* layer (it rises linearly
    from 0 at layer 0). ``use_flash_attn`` asks for flash-attn when it is installed and the
    input is a CUDA fp16/bf16 tensor; otherwise PyTorch's ``scaled_dot_product_attention`` runs.

    Explained in chapter 2 (``notebooks/02_internvit.ipynb``).
    """

    image_size: int = 448
    patch_size: int = 14
    num_channels: int = 3
    hidden_size: int = 1024
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    intermediate_size: int = 4096
    qkv_bias: bool = True
    qk_normalization: bool = False
    norm_type: str = "layer_norm"
    layer_norm_eps: float = 1e-6
    drop_path_rate: float = 0.0
    initializer_factor: float = 0.1
    initializer_range: float = 0.02
    hidden_act: str = "gelu"
    use_flash_attn: bool = False

    def __post_init__(self) -> None:
        if self.norm_type not in NORM_TYPES:
            raise ValueError(f"VisionConfig.norm_type must be one of {NORM_TYPES}, got {self.norm_type!r}")
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"VisionConfig.hidden_size ({self.hidden_size}) must be divisible by "
                f"num_attention_heads ({self.num_attention_heads})"
            )
        if self.image_size % self.patch_size != 0:
            raise ValueError(
                f"VisionConfig.image_size ({self.image_size}) must be a multiple of patch_size ({self.patch_size})"
            )
        if self.hidden_act != "gelu":
            raise ValueError(f"VisionConfig.hidden_act: only 'gelu' (exact erf GELU) is supported, got {self.hidden_act!r}")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(f"VisionConfig.drop_path_rate must be in [0, 1), got {self.drop_path_rate}")

    # ----- derived sizes -------------------------------------------------------------------
    @property
    def grid_size(self) -> int:
        """Patches per side of a tile at the trained resolution (32 for 448 / 14)."""
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        """Patches per tile at the trained resolution (1024 for 448 / 14)."""
        return self.grid_size**2

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.hidden_size // self.num_attention_heads

    # ----- presets ---------------------------------------------------------------------------
    @classmethod
    def tiny(cls, **overrides: Any) -> VisionConfig:
        """A CPU-sized InternViT (300M-style): 112 px tiles, patch 14 -> 8x8 = 64 patches,
        16 tokens per tile after pixel unshuffle; width 128, 4 layers (about 0.8M parameters).

        Keyword arguments override any field, e.g. ``VisionConfig.tiny(hidden_size=64)``.
        """
        base = cls(
            image_size=112,
            patch_size=14,
            hidden_size=128,
            num_hidden_layers=4,
            num_attention_heads=4,
            intermediate_size=512,
            qkv_bias=True,
            qk_normalization=False,
            norm_type="layer_norm",
        )
        return dataclasses.replace(base, **overrides)

    @classmethod
    def internvit_300m(cls, **overrides: Any) -> VisionConfig:
        """InternViT-300M-448px-V2_5 (the encoder of InternVL 2.5 1B/2B/4B/8B)."""
        base = cls(
            image_size=448,
            patch_size=14,
            hidden_size=1024,
            num_hidden_layers=24,
            num_attention_heads=16,
            intermediate_size=4096,
            qkv_bias=True,
            qk_normalization=False,
            norm_type="layer_norm",
        )
        return dataclasses.replace(base, **overrides)

    @classmethod
    def internvit_6b(cls, **overrides: Any) -> VisionConfig:
        """InternViT-6B-448px-V2_5 (the encoder of InternVL 2.5 26B/38B/78B): 45 layers, RMSNorm,
        QK-norm, no qkv bias."""
        base = cls(
            image_size=448,
            patch_size=14,
            hidden_size=3200,
            num_hidden_layers=45,
            num_attention_heads=25,
            intermediate_size=12800,
            qkv_bias=False,
            qk_normalization=True,
            norm_type="rms_norm",
        )
        return dataclasses.replace(base, **overrides)

    # ----- other layouts ---------------------------------------------------------------------
    def to_official_dict(self) -> dict[str, Any]:
        """The fields of an official ``vision_config`` (``InternVisionConfig``) in ``config.json``."""
        return {
            "image_size": self.image_size,
            "patch_size": self.patch_size,
            "num_channels": self.num_channels,
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "intermediate_size": self.intermediate_size,
            "qkv_bias": self.qkv_bias,
            "qk_normalization": self.qk_normalization,
            "norm_type": self.norm_type,
            "layer_norm_eps": self.layer_norm_eps,
            "drop_path_rate": self.drop_path_rate,
            "initializer_factor": self.initializer_factor,
            "initializer_range": self.initializer_range,
            "hidden_act": self.hidden_act,
            "use_flash_attn": self.use_flash_attn,
        }

    @classmethod
    def from_official_dict(cls, d: dict[str, Any]) -> VisionConfig:
        """Read an official ``vision_config`` dict; unknown keys (``architectures``, ...) are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_transformers_dict(self) -> dict[str, Any]:
        """Keyword arguments for transformers' ``InternVLVisionConfig`` (renamed fields, lists for sizes)."""
        return {
            "image_size": [self.image_size, self.image_size],
            "patch_size": [self.patch_size, self.patch_size],
            "num_channels": self.num_channels,
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "intermediate_size": self.intermediate_size,
            "attention_bias": self.qkv_bias,
            "use_qk_norm": self.qk_normalization,
            "norm_type": self.norm_type,
            "layer_norm_eps": self.layer_norm_eps,
            "layer_scale_init_value": self.initializer_factor,
            "initializer_range": self.initializer_range,
            "hidden_act": self.hidden_act,
            "use_mean_pooling": True,
            "use_absolute_position_embeddings": True,
        }

    @classmethod
    def from_transformers_dict(cls, d: dict[str, Any]) -> VisionConfig:
        """Read a transformers ``vision_config`` dict (``InternVLVisionConfig.to_dict()``)."""

        def _square(value: Any, key: str) -> int:
            if isinstance(value, (list, tuple)):
                if len(value) != 2 or value[0] != value[1]:
                    raise ValueError(f"vision_config.{key}: minivl needs a square size, got {value}")
                return int(value[0])
            return int(value)

        if not d.get("use_mean_pooling", True):
            raise ValueError("vision_config.use_mean_pooling=False adds a final LayerNorm that InternViT does not have")
        return cls(
            image_size=_square(d.get("image_size", 448), "image_size"),
            patch_size=_square(d.get("patch_size", 14), "patch_size"),
            num_channels=d.get("num_channels", 3),
            hidden_size=d["hidden_size"],
            num_hidden_layers=d["num_hidden_layers"],
            num_attention_heads=d["num_attention_heads"],
            intermediate_size=d["intermediate_size"],
            qkv_bias=d.get("attention_bias", False),
            qk_normalization=d.get("use_qk_norm", False),
            norm_type=d.get("norm_type", "layer_norm"),
            layer_norm_eps=d.get("layer_norm_eps", 1e-6),
            initializer_factor=d.get("layer_scale_init_value", 0.1),
            initializer_range=d.get("initializer_range", 0.02),
            hidden_act=d.get("hidden_act", "gelu"),
        )


def vision_tiny(**overrides: Any) -> VisionConfig:
    """Same as :meth:`VisionConfig.tiny`."""
    return VisionConfig.tiny(**overrides)


def internvit_300m(**overrides: Any) -> VisionConfig:
    """Same as :meth:`VisionConfig.internvit_300m`."""
    return VisionConfig.internvit_300m(**overrides)


def internvit_6b(**overrides: Any) -> VisionConfig:
    """Same as :meth:`VisionConfig.internvit_6b`."""
    return VisionConfig.internvit_6b(**overrides)


__all__ = ["NORM_TYPES", "VisionConfig", "internvit_300m", "internvit_6b", "vision_tiny"]
