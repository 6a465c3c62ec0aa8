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

:class:`MiniVLConfig` assembles a whole model: the ViT, a transformers LLM config (a plain
dict) and the glue settings of the official ``InternVLChatConfig``. Its presets carry the
shapes of the released InternVL 2.5 models (chapter 5, ``notebooks/05_assembling_minivl.ipynb``).
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




# ----- the whole model ---------------------------------------------------------------------------

# The LLM configs below are written out from the public ``config.json`` files of the language
# models InternVL 2.5 starts from, with the vocabulary grown by InternVL's 9 special tokens and
# the embeddings untied (the official ``InternVLChatConfig`` forces ``tie_word_embeddings=False``).
# InternLM2 is a Llama-architecture model with a fused ``wqkv``: minivl runs it as transformers'
# Llama and converts the weights on load/save (see ``minivl/checkpoint.py``).


def _qwen2_llm(hidden: int, layers: int, heads: int, kv_heads: int, intermediate: int, vocab: int) -> dict[str, Any]:
    return {
        "model_type": "qwen2",
        "architectures": ["Qwen2ForCausalLM"],
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "hidden_act": "silu",
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
        "tie_word_embeddings": False,
        "bos_token_id": 151643,
        "eos_token_id": 151645,
        "use_sliding_window": False,
        "sliding_window": None,
        "max_window_layers": layers,
    }


def _internlm2_as_llama(hidden: int, layers: int, heads: int, kv_heads: int, intermediate: int,
                        rope_scaling_factor: float | None = None) -> dict[str, Any]:
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": 1000000.0}
    if rope_scaling_factor is not None:
        rope = {"rope_type": "dynamic", "factor": rope_scaling_factor, "rope_theta": 1000000.0}
    return {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": 92553,  # 92544 + InternVL's 9 special tokens
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "hidden_act": "silu",
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-5,
        "rope_parameters": rope,
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 2,
    }


@dataclass
class MiniVLConfig:
    """The assembled model: InternViT + ``mlp1`` + any transformers causal LM.

    * ``vision``: the :class:`VisionConfig` of InternViT;
    * ``llm``: a transformers config as a dict (``model_type`` required, e.g. ``"qwen2"`` or
      ``"llama"``), built with ``AutoConfig.for_model``;
    * ``downsample_ratio``, ``select_layer``, ``ps_version``, ``template``: as in the official
      ``InternVLChatConfig`` (2.5 values: 0.5, -1, ``"v2"``, ``"internvl2_5"``);
    * ``image_token_id``: the tokenizer id of ``<IMG_CONTEXT>`` (``None`` until a tokenizer
      is chosen; the model refuses images without it);
    * ``official_llm_architecture``: the LLM class name the official layout uses when it
      differs from the transformers one (``"InternLM2ForCausalLM"`` for 2B/8B, whose LLM runs
      as Llama here); ``None`` means the same.

    Explained in chapter 5 (notebooks/05_assembling_minivl.ipynb).
    """

    vision: VisionConfig
    llm: dict[str, Any]
    downsample_ratio: float = 0.5
    select_layer: int = -1
    template: str = "internvl2_5"
    image_token_id: int | None = None
    ps_version: str = "v2"
    official_llm_architecture: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.vision, dict):
            self.vision = VisionConfig(**self.vision)
        if not isinstance(self.llm, dict) or "model_type" not in self.llm:
            raise ValueError("MiniVLConfig.llm must be a transformers config dict with a 'model_type' key")
        if self.ps_version not in ("v1", "v2"):
            raise ValueError(f"MiniVLConfig.ps_version must be 'v1' or 'v2', got {self.ps_version!r}")
        r = round(1 / self.downsample_ratio)
        if self.vision.grid_size % r:
            raise ValueError(
                f"MiniVLConfig: the patch grid {self.vision.grid_size}x{self.vision.grid_size} is not divisible by "
                f"{r} (downsample_ratio {self.downsample_ratio})"
            )

    # ----- derived sizes -------------------------------------------------------------------
    @property
    def num_image_token(self) -> int:
        """LLM tokens per tile (256 for 448 px / patch 14 / ratio 0.5)."""
        return int(self.vision.num_patches * self.downsample_ratio**2)

    @property
    def llm_hidden_size(self) -> int:
        return int(self.llm["hidden_size"])

    @property
    def vocab_size(self) -> int:
        return int(self.llm["vocab_size"])

    # ----- (de)serialisation ---------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The ``config.json`` of a minivl checkpoint (``model_type: "minivl"``)."""
        return {
            "model_type": "minivl",
            "architectures": ["MiniVL"],
            "vision": dataclasses.asdict(self.vision),
            "llm": dict(self.llm),
            "downsample_ratio": self.downsample_ratio,
            "select_layer": self.select_layer,
            "template": self.template,
            "image_token_id": self.image_token_id,
            "ps_version": self.ps_version,
            "official_llm_architecture": self.official_llm_architecture,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MiniVLConfig:
        """Inverse of :meth:`to_dict`; raises ``ValueError`` for another ``model_type``."""
        if d.get("model_type") != "minivl":
            raise ValueError(f"not a minivl config (model_type={d.get('model_type')!r})")
        missing = [k for k in ("vision", "llm") if k not in d]
        if missing:
            raise ValueError(f"minivl config: missing keys {missing}")
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def replace(self, **changes: Any) -> MiniVLConfig:
        """A copy with some fields changed (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)

    # ----- presets ---------------------------------------------------------------------------
    @classmethod
    def tiny(cls, vocab_size: int = 4096, image_token_id: int | None = None, **llm_overrides: Any) -> MiniVLConfig:
        """The ``cpu``-scale model: ViT tiny (112 px, 128 wide x 4 layers, 16 tokens per tile) and a
        Qwen2 LLM 256 wide x 4 layers (about 5M parameters with a 4096-token vocabulary).
        Set ``vocab_size`` and ``image_token_id`` from the tokenizer.

        Explained in chapter 5 (notebooks/05_assembling_minivl.ipynb).
        """
        llm = _qwen2_llm(256, 4, 4, 2, 704, vocab_size)
        llm.update(bos_token_id=None, eos_token_id=None, max_position_embeddings=4096)
        llm.update(llm_overrides)
        return cls(vision=VisionConfig.tiny(), llm=llm, image_token_id=image_token_id)

    @classmethod
    def smoke(cls, vocab_size: int = 512, image_token_id: int | None = None, **llm_overrides: Any) -> MiniVLConfig:
        """The ``smoke``-scale model for tests: ViT 32 wide x 2 layers (112 px), Qwen2 64 wide x 2 layers.

        Explained in chapter 5 (notebooks/05_assembling_minivl.ipynb).
        """
        llm = _qwen2_llm(64, 2, 4, 2, 128, vocab_size)
        llm.update(bos_token_id=None, eos_token_id=None, max_position_embeddings=2048)
        llm.update(llm_overrides)
        vision = VisionConfig.tiny(hidden_size=32, num_attention_heads=2, intermediate_size=64, num_hidden_layers=2)
        return cls(vision=vision, llm=llm, image_token_id=image_token_id)

    @classmethod
    def internvl2_5_1b(cls) -> MiniVLConfig:
        """InternVL2.5-1B: InternViT-300M + Qwen2.5-0.5B-Instruct (about 0.94B parameters).

        Explained in chapter 5 (notebooks/05_assembling_minivl.ipynb).
        """
        return cls(vision=VisionConfig.internvit_300m(), llm=_qwen2_llm(896, 24, 14, 2, 4864, 151674),
                   image_token_id=151667)

    @classmethod
    def internvl2_5_2b(cls) -> MiniVLConfig:
        """InternVL2.5-2B: InternViT-300M + internlm2_5-1_8b-chat (about 2.2B parameters).

        Explained in chapter 5 (notebooks/05_assembling_minivl.ipynb).
        """
        return cls(vision=VisionConfig.internvit_300m(), llm=_internlm2_as_llama(2048, 24, 16, 8, 8192),
                   image_token_id=92546, official_llm_architecture="InternLM2ForCausalLM")

    @classmethod
    def internvl2_5_4b(cls) -> MiniVLConfig:
        """InternVL2.5-4B: InternViT-300M + Qwen2.5-3B-Instruct (about 3.7B parameters).

        Explained in chapter 5 (notebooks/05_assembling_minivl.ipynb).
        """
        return cls(vision=VisionConfig.internvit_300m(), llm=_qwen2_llm(2048, 36, 16, 2, 11008, 151674),
                   image_token_id=151667)

    @classmethod
    def internvl2_5_8b(cls) -> MiniVLConfig:
        """InternVL2.5-8B: InternViT-300M + internlm2_5-7b-chat (about 8.1B parameters).

        Explained in chapter 5 (notebooks/05_assembling_minivl.ipynb).
        """
        return cls(vision=VisionConfig.internvit_300m(),
                   llm=_internlm2_as_llama(4096, 32, 32, 8, 14336, rope_scaling_factor=2.0),
                   image_token_id=92546, official_llm_architecture="InternLM2ForCausalLM")

    @classmethod
    def preset(cls, name: str, **kwargs: Any) -> MiniVLConfig:
        """A preset by name: ``smoke``, ``tiny``, ``internvl2_5_1b``, ``_2b``, ``_4b``, ``_8b``."""
        if name not in PRESET_NAMES:
            raise ValueError(f"unknown MiniVLConfig preset {name!r}; expected one of {', '.join(PRESET_NAMES)}")
        return getattr(cls, name)(**kwargs)


PRESET_NAMES = ("smoke", "tiny", "internvl2_5_1b", "internvl2_5_2b", "internvl2_5_4b", "internvl2_5_8b")

__all__ = ["MiniVLConfig", "NORM_TYPES", "PRESET_NAMES", "VisionConfig", "internvit_300m", "internvit_6b", "vision_tiny"]
