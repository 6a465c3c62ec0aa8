"""InternViT, the vision encoder of InternVL 2.5.

A plain pre-norm ViT with three InternVL touches: layer scale (``ls1``/``ls2``), optional
QK-normalisation over the full width (the 6B model) and RMSNorm or LayerNorm. Module and
parameter names follow the official ``modeling_intern_vit.py`` so an official
``vision_model.*`` state dict loads after stripping its prefix::

    embeddings.class_embedding            (1, 1, C)
    embeddings.patch_embedding            Conv2d(3, C, 14, stride 14)
    embeddings.position_embedding         (1, 1 + P, C)
    encoder.layers.N.norm1 / norm2        LayerNorm or InternRMSNorm
    encoder.layers.N.attn.qkv             Linear(C, 3C), fused q, k, v
    encoder.layers.N.attn.q_norm / k_norm InternRMSNorm(C), only with qk_normalization
    encoder.layers.N.attn.proj            Linear(C, C)
    encoder.layers.N.mlp.fc1 / fc2        Linear(C, I) / Linear(I, C)
    encoder.layers.N.ls1 / ls2            (C,)

There is no final norm: the output is the last layer's hidden states, CLS included.

Explained in chapter 2 (``notebooks/02_internvit.ipynb``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from minivl.config import VisionConfig


class InternRMSNorm(nn.Module):
    """RMSNorm as InternViT computes it: in fp32, cast back to the input dtype, *then* scale.

    Explained in chapter 2 (``notebooks/02_internvit.ipynb``).
    """

    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


def build_norm(norm_type: str, hidden_size: int, eps: float) -> nn.Module:
    """``nn.LayerNorm`` for ``"layer_norm"`` (300M) or :class:`InternRMSNorm` for ``"rms_norm"`` (6B).

    Explained in chapter 2 (``notebooks/02_internvit.ipynb``).
    """
    if norm_type == "layer_norm":
        return nn.LayerNorm(hidden_size, eps=eps)
    if norm_type == "rms_norm":
        return InternRMSNorm(hidden_size, eps=eps)
    raise ValueError(f"unknown norm_type {norm_type!r}; expected 'layer_norm' or 'rms_norm'")


def drop_path(x: torch.Tensor, drop_prob: float = 0.0, training: bool = False) -> torch.Tensor:
    """Stochastic depth: zero the whole residual branch of a random subset of samples.

    Each sample (for InternViT, each *tile*) is kept with probability ``1 - drop_prob`` and
    the kept ones are scaled by ``1 / (1 - drop_prob)``, so the expectation is unchanged.
    The identity in eval mode or when ``drop_prob == 0``.

    Explained in chapter 2 (``notebooks/02_internvit.ipynb``).
    """
    if drop_prob == 0.0 or not training:
        return x
    keep = 1.0 - drop_prob
    # one Bernoulli draw per sample, broadcast over every other axis: (B, 1, 1, ...)
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask / keep


class DropPath(nn.Module):
    """Module wrapper around :func:`drop_path` (no parameters)."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = float(drop_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.drop_prob, self.training)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob:.3f}"


def interpolate_pos_embed(pos_embed: torch.Tensor, grid_h: int, grid_w: int) -> torch.Tensor:
    """Resize the patch part of a (1, 1 + g*g, C) position embedding to a ``grid_h x grid_w`` grid.

    The CLS position is kept as is. The g x g patch positions are resized bicubically
    (``align_corners=False``) in fp32, then cast back, as the official ``_get_pos_embed``
    does. At the trained grid this is an exact identity. Returns (1, 1 + grid_h*grid_w, C).

    Explained in chapter 2 (``notebooks/02_internvit.ipynb``).
    """
    _, n, c = pos_embed.shape
    g = int(round((n - 1) ** 0.5))
    if g * g != n - 1:
        raise ValueError(f"position embedding has {n - 1} patch positions, which is not a square grid")
    cls_pos, patch_pos = pos_embed[:, :1], pos_embed[:, 1:]
    # (1, g*g, C) -> (1, g, g, C) -> (1, C, g, g)
    grid = patch_pos.float().reshape(1, g, g, c).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(grid_h, grid_w), mode="bicubic", align_corners=False)
    # (1, C, h, w) -> (1, C, h*w) -> (1, h*w, C)
    patch_pos = grid.reshape(1, c, grid_h * grid_w).permute(0, 2, 1).to(pos_embed.dtype)
    return torch.cat([cls_pos, patch_pos], dim=1)


class InternVisionEmbeddings(nn.Module):
    """Conv patch embedding + CLS token + (interpolated) absolute position embedding.

    Explained in chapter 2 (``notebooks/02_internvit.ipynb``).
    """

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        c = config.hidden_size
        self.patch_size = config.patch_size
        self.class_embedding = nn.Parameter(torch.randn(1, 1, c))
        self.patch_embedding = nn.Conv2d(config.num_channels, c, kernel_size=config.patch_size, stride=config.patch_size)
        self.position_embedding = nn.Parameter(torch.randn(1, 1 + config.num_patches, c))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if pixel_values.ndim != 4:
            raise ValueError(f"pixel_values must be (N, 3, H, W), got shape {tuple(pixel_values.shape)}")
        h, w = pixel_values.shape[-2:]
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {self.patch_size}")
        target_dtype = self.patch_embedding.weight.dtype
        patches = self.patch_embedding(pixel_values.to(target_dtype))  # (N, C, h, w)
        n, c, gh, gw = patches.shape
        # (N, C, h, w) -> (N, C, h*w) -> (N, h*w, C): row-major patch order
        patches = patches.flatten(2).transpose(1, 2)
        cls = self.class_embedding.expand(n, 1, c).to(target_dtype)
        x = torch.cat([cls, patches], dim=1)  # (N, 1 + h*w, C)
        # the official code always passes through interpolate; at the trained grid it is the identity
        return x + interpolate_pos_embed(self.position_embedding, gh, gw).to(target_dtype)


def _flash_attn_func():
    """Return flash-attn's ``flash_attn_func`` or None when the package is not installed."""
    try:
        from flash_attn import flash_attn_func  # optional: pip install flash-attn
    except ImportError:
        return None
    return flash_attn_func


class InternAttention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` projection and optional full-width QK-norm.

    Explained in chapter 2 (``notebooks/02_internvit.ipynb``).
    """

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.embed_dim = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.scale = self.head_dim**-0.5
        self.use_flash_attn = config.use_flash_attn
        self.qkv = nn.Linear(self.embed_dim, 3 * self.embed_dim, bias=config.qkv_bias)
        self.qk_normalization = config.qk_normalization
        if self.qk_normalization:
            # over all heads at once (C wide), not per head
            self.q_norm = InternRMSNorm(self.embed_dim, eps=config.layer_norm_eps)
            self.k_norm = InternRMSNorm(self.embed_dim, eps=config.layer_norm_eps)
        self.proj = nn.Linear(self.embed_dim, self.embed_dim)

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v as (B, heads, N, head_dim)."""
        b, n, c = x.shape
        # (B, N, 3C) -> (B, N, 3, heads, d) -> (3, B, heads, N, d)
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        if self.qk_normalization:
            # (B, heads, N, d) -> (B, N, heads*d) for the full-width norm, then back
            q = self.q_norm(q.transpose(1, 2).reshape(b, n, c)).reshape(b, n, self.num_heads, self.head_dim).transpose(1, 2)
            k = self.k_norm(k.transpose(1, 2).reshape(b, n, c)).reshape(b, n, self.num_heads, self.head_dim).transpose(1, 2)
        return q, k, v

    def attention_probs(self, x: torch.Tensor) -> torch.Tensor:
        """The softmax attention matrix (B, heads, N, N), computed explicitly (for plots)."""
        q, k, _ = self._qkv(x)
        return ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self._qkv(x)
        flash = None
        if self.use_flash_attn and x.is_cuda and x.dtype in (torch.float16, torch.bfloat16):
            flash = _flash_attn_func()
        if flash is not None:
            # flash-attn wants (B, N, heads, d)
            out = flash(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), softmax_scale=self.scale)
        else:
            out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)  # (B, heads, N, d)
            out = out.transpose(1, 2)  # (B, heads, N, d) -> (B, N, heads, d)
        # (B, N, heads, d) -> (B, N, C)
        return self.proj(out.reshape(b, n, c))


class InternMLP(nn.Module):
    """``fc1`` -> exact (erf) GELU -> ``fc2``.

    Explained in chapter 2 (``notebooks/02_internvit.ipynb``).
    """

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class InternVisionEncoderLayer(nn.Module):
    """One pre-norm block with layer scale and stochastic depth::

        x = x + drop_path(attn(norm1(x)) * ls1)
        x = x + drop_path(mlp(norm2(x)) * ls2)

    Explained in chapter 2 (``notebooks/02_internvit.ipynb``).
    """

    def __init__(self, config: VisionConfig, drop_path_rate: float = 0.0) -> None:
        super().__init__()
        c = config.hidden_size
        self.attn = InternAttention(config)
        self.mlp = InternMLP(config)
        self.norm1 = build_norm(config.norm_type, c, config.layer_norm_eps)
        self.norm2 = build_norm(config.norm_type, c, config.layer_norm_eps)
        self.ls1 = nn.Parameter(config.initializer_factor * torch.ones(c))
        self.ls2 = nn.Parameter(config.initializer_factor * torch.ones(c))
        self.drop_path1 = DropPath(drop_path_rate)
        self.drop_path2 = DropPath(drop_path_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x)) * self.ls1)
        x = x + self.drop_path2(self.mlp(self.norm2(x)) * self.ls2)
        return x


class InternVisionEncoder(nn.Module):
    """The stack of layers; drop-path rates rise linearly from 0 (first) to ``drop_path_rate`` (last).

    Explained in chapter 2 (``notebooks/02_internvit.ipynb``).
    """

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        n = config.num_hidden_layers
        rates = torch.linspace(0, config.drop_path_rate, n, device="cpu").tolist()
        self.layers = nn.ModuleList([InternVisionEncoderLayer(config, rates[i]) for i in range(n)])
        # the official training code always turns this on for the ViT
        self.gradient_checkpointing = False

    def forward(self, x: torch.Tensor, num_layers: int | None = None) -> list[torch.Tensor]:
        """Run the first ``num_layers`` layers (all by default) and return every hidden state,
        the input first: a list of ``num_layers + 1`` tensors (N, 1 + P, C)."""
        layers = self.layers if num_layers is None else self.layers[:num_layers]
        states = [x]
        for layer in layers:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(layer, x, use_reentrant=False)
            else:
                x = layer(x)
            states.append(x)
        return states


class InternVisionModel(nn.Module):
    """InternViT: ``pixel_values`` (N, 3, H, W) -> hidden states (N, 1 + (H/p)*(W/p), C).

    ``forward(pixel_values, select_layer=-1)`` returns ``hidden_states[select_layer]`` where
    index 0 is the embedding output and index L the last layer (so -1 is the last layer,
    the official ``select_layer`` convention). Only the layers needed are run.
    ``model.gradient_checkpointing = True`` recomputes each layer in the backward pass
    while the model is in training mode.

    Explained in chapter 2 (``notebooks/02_internvit.ipynb``).
    """

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = InternVisionEmbeddings(config)
        self.encoder = InternVisionEncoder(config)
        self.init_weights()

    @property
    def gradient_checkpointing(self) -> bool:
        return self.encoder.gradient_checkpointing

    @gradient_checkpointing.setter
    def gradient_checkpointing(self, value: bool) -> None:
        self.encoder.gradient_checkpointing = bool(value)

    @torch.no_grad()
    def init_weights(self) -> None:
        """Truncated-normal Linear/Conv weights (std ``initializer_range``), zero biases, unit
        norms, layer scale at ``initializer_factor``; CLS and positions ~ N(0, 0.02)."""
        std = self.config.initializer_range
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                nn.init.trunc_normal_(module.weight, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, InternRMSNorm):
                nn.init.ones_(module.weight)
        nn.init.trunc_normal_(self.embeddings.class_embedding, std=std)
        nn.init.trunc_normal_(self.embeddings.position_embedding, std=std)
        for layer in self.encoder.layers:
            nn.init.constant_(layer.ls1, self.config.initializer_factor)
            nn.init.constant_(layer.ls2, self.config.initializer_factor)

    def forward(self, pixel_values: torch.Tensor, select_layer: int = -1) -> torch.Tensor:
        num_states = self.config.num_hidden_layers + 1
        if not -num_states <= select_layer < num_states:
            raise ValueError(f"select_layer={select_layer} is out of range for {num_states} hidden states")
        index = select_layer % num_states
        x = self.embeddings(pixel_values)
        return self.encoder(x, num_layers=index)[index]

    def hidden_states(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        """All L + 1 hidden states (embedding output first)."""
        return self.encoder(self.embeddings(pixel_values))


__all__ = [
    "DropPath",
    "InternAttention",
    "InternMLP",
    "InternRMSNorm",
    "InternVisionEmbeddings",
    "InternVisionEncoder",
    "InternVisionEncoderLayer",
    "InternVisionModel",
    "build_norm",
    "drop_path",
    "interpolate_pos_embed",
]
