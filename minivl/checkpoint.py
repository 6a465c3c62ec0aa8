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
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import torch
from torch import nn

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


__all__ = [
    "HF_PROJECTOR_PREFIXES",
    "HF_VISION_PREFIXES",
    "OFFICIAL_PROJECTOR_PREFIX",
    "OFFICIAL_VISION_PREFIX",
    "StateDictKeyError",
    "add_prefix",
    "check_state_dict",
    "detect_hf_prefix",
    "load_state_dict_strict",
    "projector_minivl_to_official",
    "projector_minivl_to_transformers",
    "projector_official_to_minivl",
    "projector_transformers_to_minivl",
    "select_prefix",
    "vit_minivl_to_official",
    "vit_minivl_to_transformers",
    "vit_official_to_minivl",
    "vit_transformers_to_minivl",
]
