"""Checkpoint layouts: key maps between minivl, official OpenGVLab and transformers-native InternVL.

This part covers the vision half (InternViT + projector). minivl's own module names are the
official ones, so the official layout is minivl's plus a prefix:

=====================================  ==========================================================
official / minivl (``vision_model.``)  transformers (``vision_tower.`` on disk,
                                       ``model.vision_tower.`` in memory)
=====================================  ==========================================================
embeddings.class_embedding             embeddings.cls_token
embeddings.position_embedding          embeddings.position_embeddings
embeddings.patch_embedding.*           embeddings.patch_embeddings.projection.*
encoder.layers.i.ls1 / ls2             encoder.layer.i.lambda_1 / lambda_2
encoder.layers.i.attn.qkv.*            encoder.layer.i.attention.{q,k,v}_proj.* (split in 3 rows)
encoder.layers.i.attn.q_norm / k_norm  encoder.layer.i.attention.q_norm / k_norm
encoder.layers.i.attn.proj.*           encoder.layer.i.attention.projection_layer.*
encoder.layers.i.mlp.fc1 / fc2         encoder.layer.i.mlp.fc1 / fc2
encoder.layers.i.norm1 / norm2         encoder.layer.i.layernorm_before / layernorm_after
mlp1.0 / mlp1.1 / mlp1.3               multi_modal_projector.layer_norm / linear_1 / linear_2
=====================================  ==========================================================

Every function is strict: a key it does not know, or a q/k/v part without its partners,
raises :class:`StateDictKeyError` listing the keys. :func:`load_state_dict_strict` checks a
converted dict against a module before loading it.

Explained in chapter 2 (``notebooks/02_internvit.ipynb``).

The second half (chapter 5) reads and writes whole-model checkpoints in three layouts, told
apart by ``config.json``:

* ``minivl``: ``model_type: "minivl"``; the names of ``MiniVL.state_dict()``
  (``vision_model.*``, ``mlp1.*``, ``language_model.model.*``, ``language_model.lm_head.weight``);
* ``official``: ``architectures: ["InternVLChatModel"]`` with ``vision_config`` and
  ``llm_config``; the same names for Qwen2 / Llama LLMs, while InternLM2 LLMs use
  ``tok_embeddings``, a fused ``wqkv``, ``wo``, ``feed_forward.w1/w2/w3``,
  ``attention_norm``, ``ffn_norm`` and ``language_model.output``;
* ``hf``: transformers' ``InternVLForConditionalGeneration`` (``model_type: "internvl"``):
  ``vision_tower.*`` with split q/k/v, ``multi_modal_projector.*`` and
  ``language_model.model.*`` on disk, or the in-memory ``model.*`` / ``lm_head.weight``.

Safetensors only: pickle files (``.bin``, ``.pt``) are refused, since loading one runs code.
Explained in chapter 5 (notebooks/05_assembling_minivl.ipynb).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:  # type hints only: minivl.model imports this module lazily
    from minivl.config import MiniVLConfig
    from minivl.model import MiniVL

StateDict = Mapping[str, torch.Tensor]

OFFICIAL_VISION_PREFIX = "vision_model."
OFFICIAL_PROJECTOR_PREFIX = "mlp1."
HF_VISION_PREFIXES = ("model.vision_tower.", "vision_tower.")
HF_PROJECTOR_PREFIXES = ("model.multi_modal_projector.", "multi_modal_projector.")


class StateDictKeyError(KeyError):
    """Missing or unexpected keys while converting or loading a state dict."""

    def __init__(self, where: str, missing: Iterable[str] = (), unexpected: Iterable[str] = ()) -> None:
        self.where = where
        self.missing = sorted(missing)
        self.unexpected = sorted(unexpected)
        lines = [f"{where}: state dict keys do not match"]
        if self.missing:
            lines.append(f"  missing ({len(self.missing)}): " + ", ".join(self.missing))
        if self.unexpected:
            lines.append(f"  unexpected ({len(self.unexpected)}): " + ", ".join(self.unexpected))
        self.message = "\n".join(lines)
        super().__init__(self.message)

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return self.message


# ----- prefixes ----------------------------------------------------------------------------------


def select_prefix(state_dict: StateDict, prefix: str) -> dict[str, torch.Tensor]:
    """The entries whose key starts with ``prefix``, with the prefix removed."""
    return {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}


def add_prefix(state_dict: StateDict, prefix: str) -> dict[str, torch.Tensor]:
    """Every key with ``prefix`` in front."""
    return {prefix + k: v for k, v in state_dict.items()}


def detect_hf_prefix(state_dict: StateDict, prefixes: tuple[str, ...]) -> str:
    """The first of ``prefixes`` that some key starts with (the in-memory ``model.`` one is tried
    first); raises ``KeyError`` naming the prefixes when none does."""
    for prefix in prefixes:
        if any(k.startswith(prefix) for k in state_dict):
            return prefix
    raise KeyError(f"no key starts with any of {prefixes}; is this a transformers InternVL state dict?")


# ----- InternViT: minivl (= official without prefix) <-> transformers ----------------------------

# simple one-to-one renames, minivl regex -> transformers template (and the reverse below)
_VIT_TO_HF = [
    (r"embeddings\.class_embedding", r"embeddings.cls_token"),
    (r"embeddings\.position_embedding", r"embeddings.position_embeddings"),
    (r"embeddings\.patch_embedding\.(weight|bias)", r"embeddings.patch_embeddings.projection.\1"),
    (r"encoder\.layers\.(\d+)\.ls1", r"encoder.layer.\1.lambda_1"),
    (r"encoder\.layers\.(\d+)\.ls2", r"encoder.layer.\1.lambda_2"),
    (r"encoder\.layers\.(\d+)\.attn\.(q_norm|k_norm)\.weight", r"encoder.layer.\1.attention.\2.weight"),
    (r"encoder\.layers\.(\d+)\.attn\.proj\.(weight|bias)", r"encoder.layer.\1.attention.projection_layer.\2"),
    (r"encoder\.layers\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)", r"encoder.layer.\1.mlp.\2.\3"),
    (r"encoder\.layers\.(\d+)\.norm1\.(weight|bias)", r"encoder.layer.\1.layernorm_before.\2"),
    (r"encoder\.layers\.(\d+)\.norm2\.(weight|bias)", r"encoder.layer.\1.layernorm_after.\2"),
]
_VIT_FROM_HF = [
    (r"embeddings\.cls_token", r"embeddings.class_embedding"),
    (r"embeddings\.position_embeddings", r"embeddings.position_embedding"),
    (r"embeddings\.patch_embeddings\.projection\.(weight|bias)", r"embeddings.patch_embedding.\1"),
    (r"encoder\.layer\.(\d+)\.lambda_1", r"encoder.layers.\1.ls1"),
    (r"encoder\.layer\.(\d+)\.lambda_2", r"encoder.layers.\1.ls2"),
    (r"encoder\.layer\.(\d+)\.attention\.(q_norm|k_norm)\.weight", r"encoder.layers.\1.attn.\2.weight"),
    (r"encoder\.layer\.(\d+)\.attention\.projection_layer\.(weight|bias)", r"encoder.layers.\1.attn.proj.\2"),
    (r"encoder\.layer\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)", r"encoder.layers.\1.mlp.\2.\3"),
    (r"encoder\.layer\.(\d+)\.layernorm_before\.(weight|bias)", r"encoder.layers.\1.norm1.\2"),
    (r"encoder\.layer\.(\d+)\.layernorm_after\.(weight|bias)", r"encoder.layers.\1.norm2.\2"),
]
_MINIVL_QKV = re.compile(r"encoder\.layers\.(\d+)\.attn\.qkv\.(weight|bias)")
_HF_QKV = re.compile(r"encoder\.layer\.(\d+)\.attention\.([qkv])_proj\.(weight|bias)")


def _rename(key: str, table: list[tuple[str, str]]) -> str | None:
    for pattern, template in table:
        m = re.fullmatch(pattern, key)
        if m:
            return m.expand(template)
    return None


def vit_minivl_to_transformers(state_dict: StateDict, prefix: str = "model.vision_tower.") -> dict[str, torch.Tensor]:
    """InternViT weights, minivl names (no prefix) -> transformers names under ``prefix``.

    The fused ``attn.qkv`` rows ``[0:C]``, ``[C:2C]``, ``[2C:3C]`` become ``q_proj``,
    ``k_proj``, ``v_proj``. Use ``prefix="vision_tower."`` for the on-disk layout.

    Explained in chapter 2 (``notebooks/02_internvit.ipynb``).
    """
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state_dict.items():
        m = _MINIVL_QKV.fullmatch(key)
        if m:
            layer, kind = m.groups()
            if value.shape[0] % 3:
                raise ValueError(f"{key}: first dimension {value.shape[0]} is not 3 * hidden_size")
            for name, part in zip("qkv", value.chunk(3, dim=0)):
                out[f"{prefix}encoder.layer.{layer}.attention.{name}_proj.{kind}"] = part.clone()
            continue
        new = _rename(key, _VIT_TO_HF)
        if new is None:
            unknown.append(key)
        else:
            out[prefix + new] = value
    if unknown:
        raise StateDictKeyError("vit_minivl_to_transformers", unexpected=unknown)
    return out


def vit_transformers_to_minivl(state_dict: StateDict, prefix: str | None = None) -> dict[str, torch.Tensor]:
    """InternViT weights, transformers names -> minivl names (no prefix).

    Only keys under ``prefix`` are read (default: ``model.vision_tower.`` or ``vision_tower.``,
    whichever is present), so a whole-model state dict can be passed. ``q_proj``/``k_proj``/
    ``v_proj`` are concatenated (dim 0) into ``attn.qkv``.

    Explained in chapter 2 (``notebooks/02_internvit.ipynb``).
    """
    if prefix is None:
        prefix = detect_hf_prefix(state_dict, HF_VISION_PREFIXES)
    sub = select_prefix(state_dict, prefix)
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    unknown = []
    for key, value in sub.items():
        m = _HF_QKV.fullmatch(key)
        if m:
            layer, name, kind = m.groups()
            qkv.setdefault((layer, kind), {})[name] = value
            continue
        new = _rename(key, _VIT_FROM_HF)
        if new is None:
            unknown.append(prefix + key)
        else:
            out[new] = value
    missing = []
    for (layer, kind), parts in sorted(qkv.items()):
        absent = [n for n in "qkv" if n not in parts]
        if absent:
            missing += [f"{prefix}encoder.layer.{layer}.attention.{n}_proj.{kind}" for n in absent]
            continue
        out[f"encoder.layers.{layer}.attn.qkv.{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    if unknown or missing:
        raise StateDictKeyError("vit_transformers_to_minivl", missing=missing, unexpected=unknown)
    return out


def vit_official_to_minivl(state_dict: StateDict, prefix: str = OFFICIAL_VISION_PREFIX) -> dict[str, torch.Tensor]:
    """InternViT weights, official ``vision_model.*`` -> minivl names: the prefix is stripped.

    Explained in chapter 2 (``notebooks/02_internvit.ipynb``).
    """
    sub = select_prefix(state_dict, prefix)
    if not sub:
        raise KeyError(f"no key starts with {prefix!r}; is this an official InternVL state dict?")
    return sub


def vit_minivl_to_official(state_dict: StateDict, prefix: str = OFFICIAL_VISION_PREFIX) -> dict[str, torch.Tensor]:
    """InternViT weights, minivl names -> official ``vision_model.*``.

    Explained in chapter 2 (``notebooks/02_internvit.ipynb``).
    """
    return add_prefix(state_dict, prefix)


# ----- projector: minivl (``0/1/3``) <-> official (``mlp1.0/1/3``) <-> transformers ------------

_PROJ_TO_HF = {"0": "layer_norm", "1": "linear_1", "3": "linear_2"}
_PROJ_FROM_HF = {v: k for k, v in _PROJ_TO_HF.items()}


def projector_minivl_to_transformers(
    state_dict: StateDict, prefix: str = "model.multi_modal_projector."
) -> dict[str, torch.Tensor]:
    """Projector weights ``{0,1,3}.{weight,bias}`` -> ``layer_norm/linear_1/linear_2`` under ``prefix``.

    Explained in chapter 3 (``notebooks/03_pixel_unshuffle_and_projector.ipynb``).
    """
    out, unknown = {}, []
    for key, value in state_dict.items():
        index, _, param = key.partition(".")
        if index in _PROJ_TO_HF and param in ("weight", "bias"):
            out[f"{prefix}{_PROJ_TO_HF[index]}.{param}"] = value
        else:
            unknown.append(key)
    if unknown:
        raise StateDictKeyError("projector_minivl_to_transformers", unexpected=unknown)
    return out


def projector_transformers_to_minivl(state_dict: StateDict, prefix: str | None = None) -> dict[str, torch.Tensor]:
    """Projector weights from a transformers state dict (keys under ``prefix``) -> ``{0,1,3}.*``.

    Explained in chapter 3 (``notebooks/03_pixel_unshuffle_and_projector.ipynb``).
    """
    if prefix is None:
        prefix = detect_hf_prefix(state_dict, HF_PROJECTOR_PREFIXES)
    out, unknown = {}, []
    for key, value in select_prefix(state_dict, prefix).items():
        name, _, param = key.partition(".")
        if name in _PROJ_FROM_HF and param in ("weight", "bias"):
            out[f"{_PROJ_FROM_HF[name]}.{param}"] = value
        else:
            unknown.append(prefix + key)
    if unknown:
        raise StateDictKeyError("projector_transformers_to_minivl", unexpected=unknown)
    return out


def projector_official_to_minivl(state_dict: StateDict, prefix: str = OFFICIAL_PROJECTOR_PREFIX) -> dict[str, torch.Tensor]:
    """Projector weights, official ``mlp1.*`` -> ``{0,1,3}.*`` (prefix stripped).

    Explained in chapter 3 (``notebooks/03_pixel_unshuffle_and_projector.ipynb``).
    """
    sub = select_prefix(state_dict, prefix)
    if not sub:
        raise KeyError(f"no key starts with {prefix!r}; is this an official InternVL state dict?")
    return sub


def projector_minivl_to_official(state_dict: StateDict, prefix: str = OFFICIAL_PROJECTOR_PREFIX) -> dict[str, torch.Tensor]:
    """Projector weights ``{0,1,3}.*`` -> official ``mlp1.*``.

    Explained in chapter 3 (``notebooks/03_pixel_unshuffle_and_projector.ipynb``).
    """
    return add_prefix(state_dict, prefix)


# ----- strict loading ---------------------------------------------------------------------------


def state_digest(module: nn.Module) -> str:
    """A short hash of ``module``'s weights (names, shapes, dtypes and values): cache keys use it
    to tell a result computed from other starting weights apart."""
    import hashlib

    digest = hashlib.sha1()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def check_state_dict(module: nn.Module, state_dict: StateDict, where: str = "state dict") -> None:
    """Raise :class:`StateDictKeyError` unless ``state_dict`` has exactly the keys of ``module``,
    and ``ValueError`` listing every tensor whose shape differs.

    Explained in chapter 2 (``notebooks/02_internvit.ipynb``).
    """
    expected = module.state_dict()
    missing = set(expected) - set(state_dict)
    unexpected = set(state_dict) - set(expected)
    if missing or unexpected:
        raise StateDictKeyError(where, missing=missing, unexpected=unexpected)
    wrong = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    if wrong:
        raise ValueError(f"{where}: shape mismatch\n  " + "\n  ".join(wrong))


def load_state_dict_strict(module: nn.Module, state_dict: StateDict, where: str = "state dict") -> None:
    """:func:`check_state_dict`, then ``module.load_state_dict(state_dict, strict=True)``.

    Explained in chapter 2 (``notebooks/02_internvit.ipynb``).
    """
    check_state_dict(module, state_dict, where)
    module.load_state_dict(dict(state_dict), strict=True)


# =================================================================================================
# Whole-model checkpoints (chapter 5)
# =================================================================================================

LAYOUTS = ("minivl", "official", "hf")
"""The checkpoint layouts :func:`save_pretrained` writes and :func:`load_pretrained` reads."""

INTERNLM2_ARCHITECTURE = "InternLM2ForCausalLM"
_IMG_CONTEXT = "<IMG_CONTEXT>"
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"


# ----- InternLM2's fused, grouped wqkv ----------------------------------------------------------


def split_wqkv(wqkv: torch.Tensor, num_heads: int, num_kv_heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """InternLM2's fused ``wqkv`` -> separate q, k, v (weights ``(rows, D)`` or biases ``(rows,)``).

    The rows are grouped per KV head: for each of the ``num_kv_heads`` heads there are
    ``g = num_heads / num_kv_heads`` query heads, then one key head, then one value head, each
    ``head_dim`` rows (the official einops pattern ``"(h gs d) z"`` with ``gs = g + 2``).

    Explained in chapter 5 (notebooks/05_assembling_minivl.ipynb).
    """
    if num_heads % num_kv_heads:
        raise ValueError(f"split_wqkv: num_heads {num_heads} is not a multiple of num_kv_heads {num_kv_heads}")
    g = num_heads // num_kv_heads
    rows = wqkv.shape[0]
    if rows % (num_kv_heads * (g + 2)):
        raise ValueError(f"split_wqkv: {rows} rows do not split into {num_kv_heads} groups of {g + 2} heads")
    d = rows // (num_kv_heads * (g + 2))
    rest = wqkv.shape[1:]
    # (kv*(g+2)*d, ...) -> (kv, g+2, d, ...)
    grouped = wqkv.reshape(num_kv_heads, g + 2, d, *rest)
    q = grouped[:, :g].reshape(num_kv_heads * g * d, *rest)  # (kv, g, d, ...) -> (heads*d, ...)
    k = grouped[:, g].reshape(num_kv_heads * d, *rest)  # (kv, d, ...) -> (kv*d, ...)
    v = grouped[:, g + 1].reshape(num_kv_heads * d, *rest)
    return q.clone(), k.clone(), v.clone()


def fuse_wqkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int, num_kv_heads: int) -> torch.Tensor:
    """Inverse of :func:`split_wqkv`: q (heads*d, ...), k and v (kv*d, ...) -> ``wqkv``.

    Explained in chapter 5 (notebooks/05_assembling_minivl.ipynb).
    """
    if num_heads % num_kv_heads:
        raise ValueError(f"fuse_wqkv: num_heads {num_heads} is not a multiple of num_kv_heads {num_kv_heads}")
    g = num_heads // num_kv_heads
    d = k.shape[0] // num_kv_heads
    if q.shape[0] != num_heads * d or v.shape != k.shape:
        raise ValueError(f"fuse_wqkv: shapes q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} do not "
                         f"fit {num_heads} heads / {num_kv_heads} KV heads")
    rest = q.shape[1:]
    parts = [
        q.reshape(num_kv_heads, g, d, *rest),  # (heads*d, ...) -> (kv, g, d, ...)
        k.reshape(num_kv_heads, 1, d, *rest),  # (kv*d, ...) -> (kv, 1, d, ...)
        v.reshape(num_kv_heads, 1, d, *rest),
    ]
    # (kv, g+2, d, ...) -> (kv*(g+2)*d, ...)
    return torch.cat(parts, dim=1).reshape(-1, *rest)


_LLAMA_TO_INTERNLM2 = [
    (r"model\.embed_tokens\.weight", r"model.tok_embeddings.weight"),
    (r"model\.layers\.(\d+)\.self_attn\.o_proj\.(weight|bias)", r"model.layers.\1.attention.wo.\2"),
    (r"model\.layers\.(\d+)\.mlp\.gate_proj\.(weight|bias)", r"model.layers.\1.feed_forward.w1.\2"),
    (r"model\.layers\.(\d+)\.mlp\.down_proj\.(weight|bias)", r"model.layers.\1.feed_forward.w2.\2"),
    (r"model\.layers\.(\d+)\.mlp\.up_proj\.(weight|bias)", r"model.layers.\1.feed_forward.w3.\2"),
    (r"model\.layers\.(\d+)\.input_layernorm\.weight", r"model.layers.\1.attention_norm.weight"),
    (r"model\.layers\.(\d+)\.post_attention_layernorm\.weight", r"model.layers.\1.ffn_norm.weight"),
    (r"model\.norm\.weight", r"model.norm.weight"),
    (r"lm_head\.weight", r"output.weight"),
]
_INTERNLM2_TO_LLAMA = [
    (r"model\.tok_embeddings\.weight", r"model.embed_tokens.weight"),
    (r"model\.layers\.(\d+)\.attention\.wo\.(weight|bias)", r"model.layers.\1.self_attn.o_proj.\2"),
    (r"model\.layers\.(\d+)\.feed_forward\.w1\.(weight|bias)", r"model.layers.\1.mlp.gate_proj.\2"),
    (r"model\.layers\.(\d+)\.feed_forward\.w2\.(weight|bias)", r"model.layers.\1.mlp.down_proj.\2"),
    (r"model\.layers\.(\d+)\.feed_forward\.w3\.(weight|bias)", r"model.layers.\1.mlp.up_proj.\2"),
    (r"model\.layers\.(\d+)\.attention_norm\.weight", r"model.layers.\1.input_layernorm.weight"),
    (r"model\.layers\.(\d+)\.ffn_norm\.weight", r"model.layers.\1.post_attention_layernorm.weight"),
    (r"model\.norm\.weight", r"model.norm.weight"),
    (r"output\.weight", r"lm_head.weight"),
]
_LLAMA_QKV = re.compile(r"model\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)")
_INTERNLM2_WQKV = re.compile(r"model\.layers\.(\d+)\.attention\.wqkv\.(weight|bias)")


def llama_to_internlm2(state_dict: StateDict, num_heads: int, num_kv_heads: int) -> dict[str, torch.Tensor]:
    """LLM weights, transformers Llama names (no prefix) -> official InternLM2 names.

    Explained in chapter 5 (notebooks/05_assembling_minivl.ipynb).
    """
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    unknown = []
    for key, value in state_dict.items():
        m = _LLAMA_QKV.fullmatch(key)
        if m:
            layer, name, kind = m.groups()
            qkv.setdefault((layer, kind), {})[name] = value
            continue
        new = _rename(key, _LLAMA_TO_INTERNLM2)
        if new is None:
            unknown.append(key)
        else:
            out[new] = value
    missing = []
    for (layer, kind), parts in sorted(qkv.items()):
        absent = [n for n in "qkv" if n not in parts]
        if absent:
            missing += [f"model.layers.{layer}.self_attn.{n}_proj.{kind}" for n in absent]
            continue
        out[f"model.layers.{layer}.attention.wqkv.{kind}"] = fuse_wqkv(parts["q"], parts["k"], parts["v"],
                                                                      num_heads, num_kv_heads)
    if unknown or missing:
        raise StateDictKeyError("llama_to_internlm2", missing=missing, unexpected=unknown)
    return out


def internlm2_to_llama(state_dict: StateDict, num_heads: int, num_kv_heads: int) -> dict[str, torch.Tensor]:
    """LLM weights, official InternLM2 names (no prefix) -> transformers Llama names.

    Explained in chapter 5 (notebooks/05_assembling_minivl.ipynb).
    """
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state_dict.items():
        m = _INTERNLM2_WQKV.fullmatch(key)
        if m:
            layer, kind = m.groups()
            for name, part in zip("qkv", split_wqkv(value, num_heads, num_kv_heads)):
                out[f"model.layers.{layer}.self_attn.{name}_proj.{kind}"] = part
            continue
        new = _rename(key, _INTERNLM2_TO_LLAMA)
        if new is None:
            unknown.append(key)
        else:
            out[new] = value
    if unknown:
        raise StateDictKeyError("internlm2_to_llama", unexpected=unknown)
    return out


# ----- LLM configs across layouts ----------------------------------------------------------------


def _rope_from_legacy(cfg: dict[str, Any]) -> dict[str, Any]:
    """``rope_theta`` + ``rope_scaling`` (transformers 4.x files) -> ``rope_parameters`` (5.x)."""
    cfg = dict(cfg)
    if "rope_parameters" not in cfg and ("rope_theta" in cfg or cfg.get("rope_scaling")):
        scaling = dict(cfg.pop("rope_scaling", None) or {})
        rope_type = scaling.pop("rope_type", None) or scaling.pop("type", None) or "default"
        cfg["rope_parameters"] = {"rope_type": rope_type, "rope_theta": float(cfg.pop("rope_theta", 10000.0)), **scaling}
    cfg.pop("rope_theta", None)
    cfg.pop("rope_scaling", None)
    return cfg


def _rope_to_legacy(cfg: dict[str, Any]) -> dict[str, Any]:
    """``rope_parameters`` -> ``rope_theta`` + ``rope_scaling`` (what the official remote code reads)."""
    cfg = dict(cfg)
    rope = dict(cfg.pop("rope_parameters", None) or {})
    cfg["rope_theta"] = float(rope.pop("rope_theta", cfg.get("rope_theta", 10000.0)))
    rope_type = rope.pop("rope_type", "default")
    cfg["rope_scaling"] = None if rope_type == "default" else {"type": rope_type, **rope}
    return cfg


def internlm2_config_to_llama(cfg: dict[str, Any]) -> dict[str, Any]:
    """An official InternLM2 ``llm_config`` -> a transformers ``LlamaConfig`` dict (same shapes).

    Explained in chapter 5 (notebooks/05_assembling_minivl.ipynb).
    """
    keep = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "hidden_act", "max_position_embeddings", "rms_norm_eps", "initializer_range",
            "tie_word_embeddings", "bos_token_id", "eos_token_id", "pad_token_id", "use_cache",
            "rope_theta", "rope_scaling", "rope_parameters")
    missing = [k for k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads") if k not in cfg]
    if missing:
        raise ValueError(f"InternLM2 llm_config: missing keys {missing}")
    out = {k: cfg[k] for k in keep if k in cfg}
    out.setdefault("num_key_value_heads", cfg["num_attention_heads"])
    out["attention_bias"] = bool(cfg.get("bias", False))
    out["mlp_bias"] = False
    out["model_type"] = "llama"
    out["architectures"] = ["LlamaForCausalLM"]
    return _rope_from_legacy(out)


def llama_config_to_internlm2(cfg: dict[str, Any]) -> dict[str, Any]:
    """A Llama config dict -> an official InternLM2 ``llm_config`` (the inverse of
    :func:`internlm2_config_to_llama`).

    Explained in chapter 5 (notebooks/05_assembling_minivl.ipynb).
    """
    if cfg.get("mlp_bias"):
        raise ValueError("InternLM2 has no MLP biases; this Llama config has mlp_bias=True")
    keep = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "hidden_act", "max_position_embeddings", "rms_norm_eps", "initializer_range",
            "bos_token_id", "eos_token_id", "pad_token_id", "use_cache", "rope_parameters", "rope_theta", "rope_scaling")
    out = {k: cfg[k] for k in keep if k in cfg}
    out = _rope_to_legacy(out)
    out.update(model_type="internlm2", architectures=[INTERNLM2_ARCHITECTURE], bias=bool(cfg.get("attention_bias", False)),
               tie_word_embeddings=False, attn_implementation="eager")
    return out


# ----- config.json of each layout ---------------------------------------------------------------


def detect_layout(config: Mapping[str, Any]) -> str:
    """``"minivl"``, ``"official"`` or ``"hf"`` from a checkpoint's ``config.json`` dict.

    Explained in chapter 5 (notebooks/05_assembling_minivl.ipynb).
    """
    architectures = config.get("architectures") or []
    model_type = config.get("model_type")
    if model_type == "minivl":
        return "minivl"
    if "InternVLChatModel" in architectures or model_type == "internvl_chat" or "llm_config" in config:
        return "official"
    if model_type == "internvl" or "InternVLForConditionalGeneration" in architectures:
        return "hf"
    raise ValueError(
        f"config.json: unknown checkpoint layout (model_type={model_type!r}, architectures={architectures}); "
        "expected model_type 'minivl', an official InternVLChatModel or transformers' InternVLForConditionalGeneration"
    )


def config_from_official(d: Mapping[str, Any]) -> MiniVLConfig:
    """An official ``InternVLChatConfig`` dict -> :class:`MiniVLConfig` (InternLM2 becomes Llama).

    Explained in chapter 5 (notebooks/05_assembling_minivl.ipynb).
    """
    from minivl.config import MiniVLConfig, VisionConfig

    for key in ("vision_config", "llm_config"):
        if key not in d:
            raise ValueError(f"official config.json: missing {key!r}")
    llm = dict(d["llm_config"])
    architectures = llm.get("architectures") or []
    official_arch = None
    if llm.get("model_type") == "internlm2" or INTERNLM2_ARCHITECTURE in architectures:
        llm = internlm2_config_to_llama(llm)
        official_arch = INTERNLM2_ARCHITECTURE
    else:
        llm = _rope_from_legacy(llm)
    llm["tie_word_embeddings"] = False  # InternVLChatConfig forces untied embeddings
    vision = VisionConfig.from_official_dict(dict(d["vision_config"]))
    force = d.get("force_image_size")
    if force is not None and int(force) != vision.image_size:
        raise ValueError(f"official config.json: force_image_size {force} != vision_config.image_size "
                         f"{vision.image_size}; minivl does not resize position embeddings at load time")
    return MiniVLConfig(vision=vision, llm=llm, downsample_ratio=float(d.get("downsample_ratio", 0.5)),
                        select_layer=int(d.get("select_layer", -1)), template=d.get("template") or "internvl2_5",
                        ps_version=d.get("ps_version", "v1"), official_llm_architecture=official_arch)


def config_to_official(config: MiniVLConfig, dtype: str = "float32") -> dict[str, Any]:
    """:class:`MiniVLConfig` -> an official ``InternVLChatConfig`` dict (2.5 inference settings).

    Explained in chapter 5 (notebooks/05_assembling_minivl.ipynb).
    """
    if config.official_llm_architecture == INTERNLM2_ARCHITECTURE:
        llm = llama_config_to_internlm2(config.llm)
    else:
        llm = _rope_to_legacy({k: v for k, v in config.llm.items() if k not in ("dtype", "torch_dtype")})
        llm.setdefault("architectures", [_causal_lm_class_name(config.llm["model_type"])])
    llm["tie_word_embeddings"] = False
    llm["torch_dtype"] = dtype
    vision = config.vision.to_official_dict()
    vision.update(architectures=["InternVisionModel"], model_type="intern_vit_6b", torch_dtype=dtype)
    return {
        "architectures": ["InternVLChatModel"],
        "model_type": "internvl_chat",
        "torch_dtype": dtype,
        "vision_config": vision,
        "llm_config": llm,
        "downsample_ratio": config.downsample_ratio,
        "select_layer": config.select_layer,
        "ps_version": config.ps_version,
        "template": config.template,
        "force_image_size": config.vision.image_size,
        "dynamic_image_size": True,
        "use_thumbnail": True,
        "min_dynamic_patch": 1,
        "max_dynamic_patch": 12,
        "pad2square": False,
        "use_backbone_lora": 0,
        "use_llm_lora": 0,
    }


def _causal_lm_class_name(model_type: str) -> str:
    from transformers import AutoConfig, AutoModelForCausalLM

    config_class = type(AutoConfig.for_model(model_type))
    return AutoModelForCausalLM._model_mapping[config_class].__name__


def config_from_hf(d: Mapping[str, Any]) -> MiniVLConfig:
    """A transformers ``InternVLConfig`` dict -> :class:`MiniVLConfig`.

    ``vision_feature_layer`` is ``select_layer``; the top-level ``tie_word_embeddings`` decides
    tying (transformers ignores the text config's flag here); ``image_token_id`` is kept.

    Explained in chapter 5 (notebooks/05_assembling_minivl.ipynb).
    """
    from minivl.config import MiniVLConfig, VisionConfig

    for key in ("vision_config", "text_config"):
        if key not in d:
            raise ValueError(f"transformers InternVL config.json: missing {key!r}")
    if d.get("vision_feature_select_strategy", "default") != "default":
        raise ValueError("config.json: vision_feature_select_strategy must be 'default' (CLS dropped)")
    if d.get("projector_hidden_act", "gelu") != "gelu":
        raise ValueError(f"config.json: projector_hidden_act {d['projector_hidden_act']!r}; mlp1 uses exact GELU")
    llm = _rope_from_legacy(dict(d["text_config"]))
    llm["tie_word_embeddings"] = bool(d.get("tie_word_embeddings", True))
    return MiniVLConfig(vision=VisionConfig.from_transformers_dict(dict(d["vision_config"])), llm=llm,
                        downsample_ratio=float(d.get("downsample_ratio", 0.5)),
                        select_layer=int(d.get("vision_feature_layer", -1)), image_token_id=d.get("image_token_id"),
                        ps_version="v2")


def config_to_hf(config: MiniVLConfig) -> dict[str, Any]:
    """:class:`MiniVLConfig` -> the ``config.json`` dict of transformers' ``InternVLForConditionalGeneration``.

    Explained in chapter 5 (notebooks/05_assembling_minivl.ipynb).
    """
    from transformers import AutoConfig, InternVLConfig, InternVLVisionConfig

    if config.ps_version != "v2":
        raise ValueError("transformers' InternVL only implements pixel shuffle 'v2'")
    if config.image_token_id is None:
        raise ValueError("config_to_hf: config.image_token_id is not set (transformers needs it in config.json)")
    from minivl.model import _LLM_CONFIG_DROP

    text = AutoConfig.for_model(config.llm["model_type"],
                                **{k: v for k, v in config.llm.items() if k not in _LLM_CONFIG_DROP})
    tied = bool(config.llm.get("tie_word_embeddings", False))
    hf = InternVLConfig(vision_config=InternVLVisionConfig(**config.vision.to_transformers_dict()), text_config=text,
                        image_token_id=config.image_token_id, downsample_ratio=config.downsample_ratio,
                        vision_feature_layer=config.select_layer, tie_word_embeddings=tied,
                        image_seq_length=config.num_image_token)
    out = hf.to_dict()
    out["architectures"] = ["InternVLForConditionalGeneration"]
    return out


# ----- state dicts of each layout ----------------------------------------------------------------


def _llm_heads(config: MiniVLConfig) -> tuple[int, int]:
    heads = int(config.llm["num_attention_heads"])
    return heads, int(config.llm.get("num_key_value_heads") or heads)


def minivl_to_official(state_dict: StateDict, config: MiniVLConfig) -> dict[str, torch.Tensor]:
    """minivl weights -> official ones: identical names, except for an InternLM2 LLM (renamed,
    q/k/v fused into ``wqkv``). An absent (tied) ``lm_head`` is written out as a copy of the
    embeddings, since official checkpoints are untied.

    Explained in chapter 5 (notebooks/05_assembling_minivl.ipynb).
    """
    out = dict(state_dict)
    if "language_model.lm_head.weight" not in out:
        out["language_model.lm_head.weight"] = out["language_model.model.embed_tokens.weight"].clone()
    if config.official_llm_architecture != INTERNLM2_ARCHITECTURE:
        return out
    llm = select_prefix(out, "language_model.")
    rest = {k: v for k, v in out.items() if not k.startswith("language_model.")}
    return {**rest, **add_prefix(llama_to_internlm2(llm, *_llm_heads(config)), "language_model.")}


def official_to_minivl(state_dict: StateDict, config: MiniVLConfig) -> dict[str, torch.Tensor]:
    """Official weights -> minivl names (the inverse of :func:`minivl_to_official`).

    Explained in chapter 5 (notebooks/05_assembling_minivl.ipynb).
    """
    out = dict(state_dict)
    if config.official_llm_architecture != INTERNLM2_ARCHITECTURE:
        return out
    llm = select_prefix(out, "language_model.")
    rest = {k: v for k, v in out.items() if not k.startswith("language_model.")}
    return {**rest, **add_prefix(internlm2_to_llama(llm, *_llm_heads(config)), "language_model.")}


def minivl_to_hf(state_dict: StateDict, in_memory: bool = False) -> dict[str, torch.Tensor]:
    """minivl weights -> transformers InternVL names, on disk (default) or in memory (``model.`` prefix).

    Explained in chapter 5 (notebooks/05_assembling_minivl.ipynb).
    """
    vision = select_prefix(state_dict, OFFICIAL_VISION_PREFIX)
    projector = select_prefix(state_dict, OFFICIAL_PROJECTOR_PREFIX)
    base = select_prefix(state_dict, "language_model.model.")
    head = {k: v for k, v in state_dict.items() if k == "language_model.lm_head.weight"}
    known = len(vision) + len(projector) + len(base) + len(head)
    if known != len(state_dict):
        prefixes = (OFFICIAL_VISION_PREFIX, OFFICIAL_PROJECTOR_PREFIX, "language_model.model.", "language_model.lm_head.")
        raise StateDictKeyError("minivl_to_hf", unexpected=[k for k in state_dict if not k.startswith(prefixes)])
    root = "model." if in_memory else ""
    out = vit_minivl_to_transformers(vision, prefix=f"{root}vision_tower.")
    out.update(projector_minivl_to_transformers(projector, prefix=f"{root}multi_modal_projector."))
    out.update(add_prefix(base, "model.language_model." if in_memory else "language_model.model."))
    if head:
        out["lm_head.weight" if in_memory else "language_model.lm_head.weight"] = head["language_model.lm_head.weight"]
    return out


def hf_to_minivl(state_dict: StateDict) -> dict[str, torch.Tensor]:
    """transformers InternVL weights (on-disk or in-memory names) -> minivl names.

    Explained in chapter 5 (notebooks/05_assembling_minivl.ipynb).
    """
    in_memory = any(k.startswith("model.vision_tower.") for k in state_dict)
    root = "model." if in_memory else ""
    vision_prefix, projector_prefix = f"{root}vision_tower.", f"{root}multi_modal_projector."
    base_prefix = "model.language_model." if in_memory else "language_model.model."
    head_key = "lm_head.weight" if in_memory else "language_model.lm_head.weight"
    out = add_prefix(vit_transformers_to_minivl(state_dict, prefix=vision_prefix), OFFICIAL_VISION_PREFIX)
    out.update(add_prefix(projector_transformers_to_minivl(state_dict, prefix=projector_prefix), OFFICIAL_PROJECTOR_PREFIX))
    out.update(add_prefix(select_prefix(state_dict, base_prefix), "language_model.model."))
    if head_key in state_dict:
        out["language_model.lm_head.weight"] = state_dict[head_key]
    unknown = [k for k in state_dict if not k.startswith((vision_prefix, projector_prefix, base_prefix)) and k != head_key]
    if unknown:
        raise StateDictKeyError("hf_to_minivl", unexpected=unknown)
    return out


# ----- files ---------------------------------------------------------------------------------------


def resolve_checkpoint_dir(path: str | os.PathLike) -> Path:
    """A local directory as is; otherwise a hub id (``"OpenGVLab/InternVL2_5-1B"``) downloaded with
    ``huggingface_hub.snapshot_download`` (safetensors, JSON and tokenizer files only).

    Explained in chapter 5 (notebooks/05_assembling_minivl.ipynb).
    """
    local = Path(path).expanduser()
    if local.is_dir():
        return local
    if local.exists():
        raise NotADirectoryError(f"{local} is a file; from_pretrained needs the checkpoint directory")
    repo_id = str(path)
    if repo_id.count("/") != 1 or repo_id.startswith((".", "/", "~")):
        raise FileNotFoundError(f"{repo_id}: no such directory, and not a hub id of the form 'owner/name'")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ImportError(f"{repo_id} is not a local directory; downloading it needs huggingface_hub "
                          "(pip install huggingface_hub)") from None
    try:
        return Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt",
                                                                 "*.tiktoken"]))
    except Exception as err:  # offline, unknown repo, gated repo ...
        raise OSError(f"{repo_id}: not a local directory and could not be downloaded from the hub ({err}); "
                      "download it first and pass the directory") from err


def _refuse_pickle(directory: Path) -> None:
    pickles = sorted(p.name for p in directory.iterdir() if p.suffix in _PICKLE_SUFFIXES)
    raise FileNotFoundError(
        f"{directory}: no safetensors weights ({SAFETENSORS_FILE} or {SAFETENSORS_INDEX})"
        + (f"; found pickle files {pickles}, which minivl refuses to load because unpickling can run code. "
           "Convert them to safetensors first (safetensors.torch.save_file)" if pickles else "")
    )


def read_safetensors(directory: str | os.PathLike) -> dict[str, torch.Tensor]:
    """All tensors of ``model.safetensors``, or of the shards listed in ``model.safetensors.index.json``.

    A directory with only pickle weights (``.bin``, ``.pt``) is refused with an error.

    Explained in chapter 5 (notebooks/05_assembling_minivl.ipynb).
    """
    from safetensors.torch import load_file

    directory = Path(directory)
    index = directory / SAFETENSORS_INDEX
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        out: dict[str, torch.Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            if not (directory / shard).exists():
                raise FileNotFoundError(f"{index}: shard {shard} is missing")
            out.update(load_file(directory / shard))
        absent = sorted(set(weight_map) - set(out))
        if absent:
            raise StateDictKeyError(f"{index}", missing=absent)
        return out
    if (directory / SAFETENSORS_FILE).exists():
        return load_file(directory / SAFETENSORS_FILE)
    shards = sorted(directory.glob("*.safetensors"))
    if len(shards) == 1:
        return load_file(shards[0])
    _refuse_pickle(directory)
    raise AssertionError("unreachable")


def write_safetensors(state_dict: StateDict, directory: str | os.PathLike, max_shard_size: int | None = None) -> list[str]:
    """Write ``model.safetensors``, or shards of at most ``max_shard_size`` bytes plus
    ``model.safetensors.index.json``. Returns the file names written.

    Explained in chapter 5 (notebooks/05_assembling_minivl.ipynb).
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    if max_shard_size is None:
        save_file(tensors, directory / SAFETENSORS_FILE, metadata={"format": "pt"})
        return [SAFETENSORS_FILE]
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key in sorted(tensors):
        nbytes = tensors[key].numel() * tensors[key].element_size()
        if shards[-1] and size + nbytes > max_shard_size:
            shards.append({})
            size = 0
        shards[-1][key] = tensors[key]
        size += nbytes
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map = {}
    for name, shard in zip(names, shards):
        save_file(shard, directory / name, metadata={"format": "pt"})
        weight_map.update({k: name for k in shard})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    (directory / SAFETENSORS_INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map},
                                                          indent=2))
    return names + [SAFETENSORS_INDEX]


def find_image_token_id(directory: str | os.PathLike) -> int | None:
    """The id of ``<IMG_CONTEXT>`` from the tokenizer files beside the weights: ``added_tokens.json``,
    then ``tokenizer_config.json`` (``added_tokens_decoder``), then ``tokenizer.json``; ``None`` if absent.

    Explained in chapter 5 (notebooks/05_assembling_minivl.ipynb).
    """
    directory = Path(directory)
    added = directory / "added_tokens.json"
    if added.exists():
        tokens = json.loads(added.read_text())
        if _IMG_CONTEXT in tokens:
            return int(tokens[_IMG_CONTEXT])
    tok_config = directory / "tokenizer_config.json"
    if tok_config.exists():
        for tid, entry in (json.loads(tok_config.read_text()).get("added_tokens_decoder") or {}).items():
            if entry.get("content") == _IMG_CONTEXT:
                return int(tid)
    tok_json = directory / "tokenizer.json"
    if tok_json.exists():
        data = json.loads(tok_json.read_text())
        for entry in data.get("added_tokens") or []:
            if entry.get("content") == _IMG_CONTEXT:
                return int(entry["id"])
        vocab = (data.get("model") or {}).get("vocab")
        if isinstance(vocab, dict) and _IMG_CONTEXT in vocab:
            return int(vocab[_IMG_CONTEXT])
    return None


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _no_init() -> contextlib.AbstractContextManager:
    """Skip random initialisation while building a model whose weights are loaded next."""
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # older transformers: initialise (slower, same result)
        return contextlib.nullcontext()
    return no_init_weights()


def load_pretrained(
    path: str | os.PathLike,
    image_token_id: int | None = None,
    dtype: torch.dtype | None = None,
    strict: bool = True,
    attn_implementation: str = "sdpa",
    model_class: type | None = None,
) -> MiniVL:
    """Build a :class:`~minivl.model.MiniVL` from a checkpoint directory in any of the three layouts.

    1. ``config.json`` decides the layout (:func:`detect_layout`) and the model shape.
    2. The image-token id: the ``image_token_id`` argument, else the config's (minivl and
       transformers layouts), else ``<IMG_CONTEXT>`` in the tokenizer files beside the weights
       (:func:`find_image_token_id`, how released OpenGVLab checkpoints carry it); an error if
       none of them has it.
    3. The safetensors weights are renamed to minivl names and loaded. With ``strict`` (the
       default) any missing or unexpected key, or a wrong shape, is an error listing them all;
       ``strict=False`` loads what matches and warns with the lists. A tied model whose files
       lack ``lm_head`` (transformers and minivl layouts drop it) ties it to the embeddings.

    ``dtype`` defaults to the dtype of the stored floating-point weights.

    Explained in chapter 5 (notebooks/05_assembling_minivl.ipynb).
    """
    import warnings

    from minivl.config import MiniVLConfig

    if model_class is None:
        from minivl.model import MiniVL as model_class

    directory = resolve_checkpoint_dir(path)
    config_path = directory / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{directory}: no config.json")
    raw = json.loads(config_path.read_text())
    layout = detect_layout(raw)
    if layout == "minivl":
        config = MiniVLConfig.from_dict(raw)
    elif layout == "official":
        config = config_from_official(raw)
    else:
        config = config_from_hf(raw)
    if image_token_id is None:
        image_token_id = config.image_token_id if layout != "official" else None
    if image_token_id is None:
        image_token_id = find_image_token_id(directory)
    if image_token_id is None:
        raise ValueError(f"{directory}: no image token id: config.json has no image_token_id and no tokenizer file "
                         "(added_tokens.json, tokenizer_config.json, tokenizer.json) names <IMG_CONTEXT>; "
                         "pass from_pretrained(..., image_token_id=...)")
    config.image_token_id = int(image_token_id)

    stored = read_safetensors(directory)
    if layout == "official":
        state = official_to_minivl(stored, config)
    elif layout == "hf":
        state = hf_to_minivl(stored)
    else:
        state = dict(stored)
    if dtype is None:
        floats = [t.dtype for t in state.values() if t.is_floating_point()]
        dtype = floats[0] if floats else torch.float32

    with _default_dtype(dtype), _no_init():
        model = model_class(config, attn_implementation=attn_implementation)
    tied = bool(config.llm.get("tie_word_embeddings", False))
    head, embed = "language_model.lm_head.weight", "language_model.model.embed_tokens.weight"
    if tied:
        if head in state and embed in state and not torch.equal(state[head], state[embed]):
            raise ValueError(f"{directory}: the config ties the embeddings but {head} differs from {embed}")
        if embed in state:
            state[head] = state[embed]
    where = f"{directory} ({layout} layout)"
    if strict:
        check_state_dict(model, state, where)
        model.load_state_dict(state, strict=True)
    else:
        result = model.load_state_dict(state, strict=False)
        if result.missing_keys or result.unexpected_keys:
            warnings.warn(str(StateDictKeyError(where, result.missing_keys, result.unexpected_keys)), stacklevel=2)
    if tied:
        model.language_model.tie_weights()
    return model.to(dtype).eval()


def save_pretrained(
    model: MiniVL,
    path: str | os.PathLike,
    format: str = "minivl",
    tokenizer: Any = None,
    max_shard_size: int | None = None,
) -> Path:
    """Write ``model`` as a checkpoint directory in the ``minivl``, ``official`` or ``hf`` layout.

    Safetensors only, one file or shards of at most ``max_shard_size`` bytes. Tied embeddings
    are stored once (``lm_head`` dropped) in the minivl and hf layouts; the official layout is
    always untied. ``tokenizer`` (optional) is saved beside the weights; for the official layout
    without one, ``added_tokens.json`` records the ``<IMG_CONTEXT>`` id so the directory loads back.

    Explained in chapter 5 (notebooks/05_assembling_minivl.ipynb).
    """
    if format not in LAYOUTS:
        raise ValueError(f"save_pretrained: format must be one of {LAYOUTS}, got {format!r}")
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    config = model.config
    state = {k: v for k, v in model.state_dict().items()}
    tied = bool(config.llm.get("tie_word_embeddings", False))
    if tied:
        state.pop("language_model.lm_head.weight", None)
    dtype = str(model.dtype).replace("torch.", "")
    if format == "minivl":
        raw = config.to_dict()
        weights = state
    elif format == "official":
        raw = config_to_official(config, dtype)
        weights = minivl_to_official(state, config)
    else:
        raw = config_to_hf(config)
        weights = minivl_to_hf(state)
    (directory / "config.json").write_text(json.dumps(raw, indent=2, ensure_ascii=False))
    write_safetensors(weights, directory, max_shard_size)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    elif format == "official" and config.image_token_id is not None:
        (directory / "added_tokens.json").write_text(json.dumps({_IMG_CONTEXT: config.image_token_id}))
    return directory


__all__ = [
    "state_digest",
    "HF_PROJECTOR_PREFIXES",
    "HF_VISION_PREFIXES",
    "INTERNLM2_ARCHITECTURE",
    "LAYOUTS",
    "OFFICIAL_PROJECTOR_PREFIX",
    "OFFICIAL_VISION_PREFIX",
    "SAFETENSORS_FILE",
    "SAFETENSORS_INDEX",
    "StateDictKeyError",
    "add_prefix",
    "check_state_dict",
    "config_from_hf",
    "config_from_official",
    "config_to_hf",
    "config_to_official",
    "detect_hf_prefix",
    "detect_layout",
    "find_image_token_id",
    "fuse_wqkv",
    "hf_to_minivl",
    "internlm2_config_to_llama",
    "internlm2_to_llama",
    "llama_config_to_internlm2",
    "llama_to_internlm2",
    "load_pretrained",
    "load_state_dict_strict",
    "minivl_to_hf",
    "minivl_to_official",
    "official_to_minivl",
    "projector_minivl_to_official",
    "projector_minivl_to_transformers",
    "projector_official_to_minivl",
    "projector_transformers_to_minivl",
    "read_safetensors",
    "resolve_checkpoint_dir",
    "save_pretrained",
    "select_prefix",
    "split_wqkv",
    "vit_minivl_to_official",
    "vit_minivl_to_transformers",
    "vit_official_to_minivl",
    "vit_transformers_to_minivl",
    "write_safetensors",
]
