"""The scaling planner: will this model and stage fit on these GPUs, and how long will it take?

Before renting GPUs for an InternVL 2.5 run you want four numbers, all computable from the
configs alone (no weights, no GPU):

1. **Parameters per tower**, exactly, from the shapes (``vision``, ``projector``, ``llm``),
   and how many of them train in the stage (all, none, or LoRA adapters).
2. **Memory per GPU**, as mixed-precision training lays it out (ZeRO paper, Rajbhandari et
   al. 2020): bf16 weights (2 bytes per parameter), bf16 gradients of the trainable ones
   (2), and, for the trainable ones only, an fp32 master copy (4) plus AdamW's two fp32
   moments (4 + 4). The strategy shards some of it over the ``N`` GPUs:

   ==========  ========================================================
   ``ddp``     nothing sharded
   ``zero1``   master weights and moments / N            (DeepSpeed ZeRO-1, InternVL 1B-8B)
   ``zero2``   ... and gradients / N
   ``zero3``   ... and weights / N, plus a buffer for two gathered layers (InternVL 26B-78B)
   ``fsdp``    the same as ``zero3`` (PyTorch FSDP full shard)
   ==========  ========================================================

   Activations come from per-token formulas of the bytes that autograd keeps for the backward
   pass, derived op by op for minivl's InternViT and for transformers' Qwen2 / Llama layers
   (see :func:`vit_layer_activation_bytes` and :func:`llm_layer_activation_bytes`; the tests
   check them against the measured saved tensors of tiny models). With gradient checkpointing
   a layer keeps only its input, and the backward pass re-creates one layer's activations at
   a time. The logits get their own line: ``tokens x vocab x (b + 8)`` bytes (the logits, their
   fp32 copy for the loss, and the fp32 log-softmax kept for backward), which for Qwen2.5's
   151,674-token vocabulary and a 16k-token pack is the largest activation of all. A margin
   (10 % by default) stands for the allocator's fragmentation and communication buffers, and
   1 GB for the CUDA context.
3. **FLOPs per sample**: ``2 x (matmul weights) x tokens`` forward per tower, plus attention
   ``4 x n x span x width`` per layer, times 3 for a trained tower (forward, input gradients,
   weight gradients), 2 for a frozen tower the gradient still has to cross (the LLM in stage
   1), 1 for a frozen tower nothing upstream of which trains (the ViT in stage 1). This is the
   ``6 N D`` rule made exact for InternVL's three towers.
4. **Time**: FLOPs / (GPUs x peak x MFU), per step and per epoch.

Usage::

    from minivl.train.planner import plan, recommend
    from minivl.train.stages import finetune_lora
    p = plan("internvl2_5_1b", finetune_lora("1b").replace(batch_size=1), num_gpus=1, gpu="T4",
             tiles_per_sample=7, tokens_per_sample=2048, dtype="fp16")
    print(p)                      # a table; p.to_dict() for the numbers
    recommend("internvl2_5_8b", stage, num_gpus=8, gpu="A100-80GB")   # cheapest strategy that fits

Explained in chapter 13 (notebooks/13_scaling_up.ipynb).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from minivl.config import PRESET_NAMES, MiniVLConfig, VisionConfig
from minivl.train.stages import LoraSpec, StageConfig

GB = 1e9
"""Memory is reported in decimal gigabytes (1e9 bytes): a conservative reading of a card's nominal size."""

STRATEGIES = ("ddp", "zero1", "zero2", "zero3", "fsdp")
"""Data-parallel strategies the planner knows, cheapest (least communication) first."""

DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}


# ----------------------------------------------------------------------------------------
# GPUs
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GPUSpec:
    """A GPU for planning: memory in GB and the dense bf16/fp16 tensor-core peak in TFLOP/s.

    Explained in chapter 13 (notebooks/13_scaling_up.ipynb).
    """

    name: str
    mem_gb: float
    peak_tflops: float
    bf16: bool = True

    def __post_init__(self) -> None:
        if self.mem_gb <= 0 or self.peak_tflops <= 0:
            raise ValueError(f"GPUSpec {self.name!r}: mem_gb and peak_tflops must be positive")


# Dense (no sparsity) half-precision tensor-core peaks from the vendors' data sheets.
GPUS: dict[str, GPUSpec] = {
    "H100-80GB": GPUSpec("H100-80GB", 80, 989.0),
    "A100-80GB": GPUSpec("A100-80GB", 80, 312.0),
    "A100-40GB": GPUSpec("A100-40GB", 40, 312.0),
    "L4": GPUSpec("L4", 24, 121.0),
    "T4": GPUSpec("T4", 16, 65.0, bf16=False),  # fp16 tensor cores only
}


def custom(mem_gb: float, peak_tflops: float, name: str = "custom") -> GPUSpec:
    """A GPU that is not in :data:`GPUS`: ``plan(..., gpu=custom(48, 362))``.

    Explained in chapter 13 (notebooks/13_scaling_up.ipynb).
    """
    return GPUSpec(name, float(mem_gb), float(peak_tflops))


def get_gpu(gpu: str | GPUSpec | tuple[float, float]) -> GPUSpec:
    """A :class:`GPUSpec` from a name in :data:`GPUS`, a spec, or a ``(mem_gb, peak_tflops)`` pair."""
    if isinstance(gpu, GPUSpec):
        return gpu
    if isinstance(gpu, tuple) and len(gpu) == 2:
        return custom(*gpu)
    if gpu not in GPUS:
        raise ValueError(f"unknown GPU {gpu!r}; expected one of {', '.join(GPUS)} or custom(mem_gb, peak_tflops)")
    return GPUS[gpu]


# ----------------------------------------------------------------------------------------
# Model configs (the large InternVL 2.5 models are planned here, never built)
# ----------------------------------------------------------------------------------------


def _llm_like(base: dict[str, Any], **shape: Any) -> dict[str, Any]:
    llm = dict(base)
    llm.update(shape)
    llm["max_window_layers"] = shape.get("num_hidden_layers", llm.get("num_hidden_layers"))
    return llm


def planner_config(name: str) -> MiniVLConfig:
    """A model config by preset name: the :class:`MiniVLConfig` presets (``internvl2_5_1b`` ...)
    plus ``internvl2_5_26b``, ``internvl2_5_38b`` and ``internvl2_5_78b`` (InternViT-6B +
    internlm2_5-20b-chat / Qwen2.5-32B / Qwen2.5-72B shapes, vocabularies grown by InternVL's
    special tokens as in the smaller presets). The large ones exist for planning only.

    Explained in chapter 13 (notebooks/13_scaling_up.ipynb).
    """
    if name in PRESET_NAMES:
        return MiniVLConfig.preset(name)
    qwen = MiniVLConfig.internvl2_5_1b().llm
    llama = MiniVLConfig.internvl2_5_8b().llm
    vit6b = VisionConfig.internvit_6b()
    if name == "internvl2_5_26b":
        llm = _llm_like(llama, hidden_size=6144, num_hidden_layers=48, num_attention_heads=48,
                        num_key_value_heads=8, intermediate_size=16384)
        return MiniVLConfig(vision=vit6b, llm=llm, image_token_id=92546,
                            official_llm_architecture="InternLM2ForCausalLM")
    if name == "internvl2_5_38b":
        llm = _llm_like(qwen, hidden_size=5120, num_hidden_layers=64, num_attention_heads=40,
                        num_key_value_heads=8, intermediate_size=27648)
        return MiniVLConfig(vision=vit6b, llm=llm, image_token_id=151667)
    if name == "internvl2_5_78b":
        llm = _llm_like(qwen, hidden_size=8192, num_hidden_layers=80, num_attention_heads=64,
                        num_key_value_heads=8, intermediate_size=29568)
        return MiniVLConfig(vision=vit6b, llm=llm, image_token_id=151667)
    names = list(PRESET_NAMES) + ["internvl2_5_26b", "internvl2_5_38b", "internvl2_5_78b"]
    raise ValueError(f"unknown model preset {name!r}; expected one of {', '.join(names)}")


# ----------------------------------------------------------------------------------------
# Parameter counts, by formula (checked against models built on the meta device)
# ----------------------------------------------------------------------------------------


def _llm_shape(llm: dict[str, Any]) -> dict[str, Any]:
    """The shape keys of a Qwen2 / Llama-style config dict, with defaults filled in."""
    missing = [k for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                           "vocab_size") if k not in llm]
    if missing:
        raise ValueError(f"LLM config dict: missing keys {missing} (model_type {llm.get('model_type')!r})")
    h, nh = int(llm["hidden_size"]), int(llm["num_attention_heads"])
    return {
        "h": h,
        "layers": int(llm["num_hidden_layers"]),
        "nh": nh,
        "kv": int(llm.get("num_key_value_heads") or nh),
        "d": int(llm.get("head_dim") or h // nh),
        "i": int(llm["intermediate_size"]),
        "v": int(llm["vocab_size"]),
        "tied": bool(llm.get("tie_word_embeddings", False)),
    }


def vision_param_count(vision: VisionConfig) -> int:
    """Parameters of InternViT: embeddings + layers (no final norm).

    Explained in chapter 13 (notebooks/13_scaling_up.ipynb).
    """
    c, i, p = vision.hidden_size, vision.intermediate_size, vision.patch_size
    embeddings = c + (vision.num_channels * p * p * c + c) + (1 + vision.num_patches) * c
    norm = 2 * c if vision.norm_type == "layer_norm" else c
    layer = (c * 3 * c + (3 * c if vision.qkv_bias else 0)  # qkv
             + (2 * c if vision.qk_normalization else 0)  # q_norm, k_norm (RMSNorm over C)
             + c * c + c  # proj
             + c * i + i + i * c + c  # fc1, fc2
             + 2 * norm + 2 * c)  # norm1, norm2, ls1, ls2
    return embeddings + vision.num_hidden_layers * layer


def projector_param_count(config: MiniVLConfig) -> int:
    """Parameters of ``mlp1``: LayerNorm(4C) + Linear(4C, H) + Linear(H, H).

    Explained in chapter 13 (notebooks/13_scaling_up.ipynb).
    """
    c_in = config.vision.hidden_size * round(1 / config.downsample_ratio) ** 2
    h = config.llm_hidden_size
    return 2 * c_in + c_in * h + h + h * h + h


def llm_param_count(llm: dict[str, Any]) -> int:
    """Parameters of a Qwen2 or Llama causal LM from its config dict (other ``model_type``\\ s are
    built on the meta device and counted).

    Qwen2 has biases on q, k, v; Llama has them on q, k, v, o when ``attention_bias`` and on the
    MLP when ``mlp_bias``. Tied embeddings count once.

    Explained in chapter 13 (notebooks/13_scaling_up.ipynb).
    """
    model_type = llm.get("model_type")
    if model_type not in ("qwen2", "llama"):
        return _meta_llm_param_count(llm)
    s = _llm_shape(llm)
    h, nh, kv, d, i = s["h"], s["nh"], s["kv"], s["d"], s["i"]
    q_out, kv_out = nh * d, kv * d
    attn = h * q_out + 2 * h * kv_out + q_out * h
    if model_type == "qwen2":
        attn += q_out + 2 * kv_out
    elif llm.get("attention_bias", False):
        attn += q_out + 2 * kv_out + h
    mlp = 3 * h * i + ((2 * i + h) if (model_type == "llama" and llm.get("mlp_bias", False)) else 0)
    layer = attn + mlp + 2 * h  # input_layernorm, post_attention_layernorm
    embeddings = s["v"] * h * (1 if s["tied"] else 2)
    return embeddings + s["layers"] * layer + h  # + final norm


def _meta_llm_param_count(llm: dict[str, Any]) -> int:
    import torch

    from minivl.model import build_language_model

    with torch.device("meta"):
        model = build_language_model(llm)
    return sum(p.numel() for p in model.parameters())


def lora_param_count(config: MiniVLConfig, lora: LoraSpec) -> int:
    """Parameters LoRA adds: ``r x (in + out)`` per adapted Linear, on InternVL's official targets
    (ViT: ``qkv, proj, fc1, fc2``; LLM: ``q, k, v, o, gate, up, down``).

    Explained in chapter 13 (notebooks/13_scaling_up.ipynb).
    """
    r = lora.r
    if lora.target == "vision":
        c, i = config.vision.hidden_size, config.vision.intermediate_size
        per_layer = r * ((c + 3 * c) + (c + c) + (c + i) + (i + c))
        return config.vision.num_hidden_layers * per_layer
    s = _llm_shape(config.llm)
    h, q_out, kv_out, i = s["h"], s["nh"] * s["d"], s["kv"] * s["d"], s["i"]
    per_layer = r * ((h + q_out) + 2 * (h + kv_out) + (q_out + h) + 2 * (h + i) + (i + h))
    return s["layers"] * per_layer


def param_counts(config: MiniVLConfig, stage: StageConfig | None = None, lora: LoraSpec | None = None
                 ) -> dict[str, dict[str, int]]:
    """``{tower: {"total", "trainable"}}`` for ``vision``, ``projector``, ``llm``, ``lora`` and ``all``.

    ``lora`` (default: the stage's) adds a ``lora`` tower of adapter parameters, all trainable.
    Without a stage everything is trainable.

    Explained in chapter 13 (notebooks/13_scaling_up.ipynb).
    """
    lora = lora if lora is not None else (stage.lora if stage is not None else None)
    flags = {"vision": True, "projector": True, "llm": True}
    if stage is not None:
        flags = {"vision": stage.train_vision, "projector": stage.train_projector, "llm": stage.train_llm}
    totals = {"vision": vision_param_count(config.vision), "projector": projector_param_count(config),
              "llm": llm_param_count(config.llm)}
    counts = {k: {"total": n, "trainable": n if flags[k] else 0} for k, n in totals.items()}
    n_lora = lora_param_count(config, lora) if lora is not None else 0
    counts["lora"] = {"total": n_lora, "trainable": n_lora}
    counts["all"] = {key: sum(c[key] for c in counts.values()) for key in ("total", "trainable")}
    return counts


# ----------------------------------------------------------------------------------------
# Activations: bytes kept for the backward pass, per token, derived op by op
# ----------------------------------------------------------------------------------------


def _rms_extra(width: int, b: int) -> int:
    """Bytes an RMSNorm computed in fp32 keeps beyond its input and output: the fp32 input copy
    (only when the input is not fp32 already), the fp32 ``rsqrt`` per token and the normalised
    tensor (saved by the weight multiply, in the compute dtype)."""
    return 4 + b * width + (4 * width if b != 4 else 0)


def _rms_extra_frozen(width: int, b: int) -> int:
    """The same when the norm's weight is frozen: the normalised tensor is no longer needed."""
    return 4 + (4 * width if b != 4 else 0)


def vit_layer_activation_bytes(vision: VisionConfig, dtype_bytes: int, mode: str = "train", lora_r: int = 16) -> int:
    """Bytes one InternViT layer keeps for backward, per token (``mode``: ``train`` / ``lora`` / ``none``).

    ``train`` (weights and input need gradients), per token, with C the width and I the MLP width:

    * the layer input and the mid-block residual (norm inputs), 2C
    * norm outputs (inputs of ``qkv`` and ``fc1``), 2C
    * q, k, v in one ``qkv`` buffer, 3C; the attention output (input of ``proj``), C;
      the softmax log-sum-exp, one fp32 per head
    * the ``proj`` and ``fc2`` outputs (multiplied by ``ls1`` / ``ls2``), 2C
    * the ``fc1`` output (GELU input) and the GELU output (``fc2`` input), 2I
    * LayerNorm statistics (mean, rstd in fp32) or RMSNorm extras, per norm

    so ``b x (10 C + 2 I)`` plus small fp32 terms. ``lora`` drops the inputs that only served
    frozen-weight gradients and adds the adapters' dropout outputs, masks and rank-r hiddens;
    ``none`` is 0 (nothing upstream needs a gradient). QK-norm (InternViT-6B) adds its two
    RMSNorms. Explained in chapter 13 (notebooks/13_scaling_up.ipynb).
    """
    if mode == "none":
        return 0
    b, c, i, heads = dtype_bytes, vision.hidden_size, vision.intermediate_size, vision.num_attention_heads
    if vision.norm_type == "layer_norm":
        norms = 2 * 8
    else:
        norms = 2 * (_rms_extra(c, b) if mode == "train" else _rms_extra_frozen(c, b))
    qk_norm = 2 * _rms_extra(c, b) + 2 * b * c if vision.qk_normalization else 0
    lse = 4 * heads
    if mode == "train":
        return b * (10 * c + 2 * i) + norms + qk_norm + lse
    if mode == "lora":
        # saved without weight gradients: residual inputs 2C, qkv 3C, attention out C (the proj
        # input is kept for its adapter), proj/fc2 outputs 2C, fc1 out and GELU out 2I (the latter
        # for fc2's adapter); adapters: dropout output + bool mask of their input, and r hiddens
        adapters = (b + 1) * (c + c + c + i) + 4 * b * lora_r
        return b * (8 * c + 2 * i) + norms + qk_norm + lse + adapters
    raise ValueError(f"unknown activation mode {mode!r}; expected train, lora or none")


def llm_layer_activation_bytes(llm: dict[str, Any], dtype_bytes: int, mode: str = "train", lora_r: int = 16) -> int:
    """Bytes one Qwen2 / Llama decoder layer keeps for backward, per token.

    ``train`` (weights train), per token, with H the width, I the MLP width, ``nh`` / ``kv``
    the query / key-value heads of width ``d``:

    * the two RMSNorm inputs (residual stream), 2H, and their outputs (inputs of the q/k/v
      and gate/up projections), 2H, plus :func:`_rms_extra` each
    * q and k after RoPE, v, and the attention output (input of ``o_proj``):
      ``2 nh d + 2 kv d``; the log-sum-exp, one fp32 per query head
    * gate output (SiLU input), SiLU output, up output, and their product (``down_proj``
      input): 4I

    so ``b x (4H + 2 nh d + 2 kv d + 4I) + 2 x rms_extra + 4 nh``. ``frozen`` (weights frozen,
    gradient passes through to the image tokens, as in stage 1) drops the Linear inputs that
    only weight gradients need (norm outputs, the SiLU x up product) and the normalised tensors.
    ``lora`` is ``frozen`` plus each adapter's dropout output and mask and its rank-r hidden.

    Explained in chapter 13 (notebooks/13_scaling_up.ipynb).
    """
    if mode == "none":
        return 0
    s = _llm_shape(llm)
    b, h, i, q_out, kv_out = dtype_bytes, s["h"], s["i"], s["nh"] * s["d"], s["kv"] * s["d"]
    lse = 4 * s["nh"]
    attention = b * (2 * q_out + 2 * kv_out) + lse
    if mode == "train":
        return b * (4 * h + 4 * i) + 2 * _rms_extra(h, b) + attention
    frozen = b * (2 * h + 3 * i) + 2 * _rms_extra_frozen(h, b) + attention
    if mode == "frozen":
        return frozen
    if mode == "lora":
        # q, k, v, gate, up adapters each drop out the norm output (H); o's input is the
        # attention output (nh d), down's the SiLU x up product (I), kept for the adapter
        adapters = (b + 1) * (5 * h + q_out + i) + b * i + 7 * b * lora_r
        return frozen + adapters
    raise ValueError(f"unknown activation mode {mode!r}; expected train, frozen, lora or none")


def _tower_modes(stage: StageConfig, lora: LoraSpec | None) -> dict[str, str]:
    """How each tower takes part in backward: ``train``, ``lora``, ``frozen`` (gradient passes
    through) or ``none`` (no backward at all)."""
    vision = "train" if stage.train_vision else ("lora" if lora is not None and lora.target == "vision" else "none")
    upstream = vision != "none"
    projector = "train" if stage.train_projector else ("frozen" if upstream else "none")
    upstream = upstream or projector != "none"
    if stage.train_llm:
        llm = "train"
    elif lora is not None and lora.target == "llm":
        llm = "lora"
    else:
        llm = "frozen" if upstream else "none"
    return {"vision": vision, "projector": projector, "llm": llm}


def activation_bytes(config: MiniVLConfig, stage: StageConfig, tiles: int, tokens: int, dtype: str = "bf16",
                     gradient_checkpointing: bool = True, lora: LoraSpec | None = None,
                     chunked_loss: bool = False) -> dict[str, int]:
    """Activation memory of one sample (one packed row) of ``tiles`` tiles and ``tokens`` LLM tokens.

    Returns bytes per component: ``vision``, ``projector``, ``llm`` (layers, final norm, RoPE
    tables, input ids) and ``logits_saved`` (the fp32 log-softmax the loss keeps): together
    what stays alive for the backward pass after the forward. ``logits_transient`` (the
    compute-dtype logits and the fp32 gradient they get) and ``recompute`` (with gradient
    checkpointing, the full activations of the largest single layer, re-created in backward)
    add to the peak. ``chunked_loss`` models a fused linear + cross-entropy kernel (Liger's,
    which InternVL 2.5 turns on for 38B/78B stage 2): the logits exist only for a chunk of
    ``2^ceil(log2(tokens / ceil(V / H)))`` tokens at a time, in fp32 with their gradient.
    Explained in chapter 13 (notebooks/13_scaling_up.ipynb).
    """
    b = DTYPE_BYTES[dtype]
    modes = _tower_modes(stage, lora)
    v = config.vision
    n_vit = (1 + v.num_patches) * tiles  # ViT tokens, CLS included
    vit_full = vit_layer_activation_bytes(v, b, modes["vision"], lora.r if lora is not None else 16)
    vit_ck = b * v.hidden_size if modes["vision"] != "none" else 0
    s = _llm_shape(config.llm)
    llm_full = llm_layer_activation_bytes(config.llm, b, modes["llm"], lora.r if lora is not None else 16)
    llm_ck = b * s["h"] if modes["llm"] != "none" else 0

    out: dict[str, int] = {}
    per_vit_layer = vit_ck if gradient_checkpointing else vit_full
    out["vision"] = n_vit * v.num_hidden_layers * per_vit_layer

    # pixel shuffle + mlp1, per image token: LayerNorm input 4C and statistics, its output,
    # fc1 output (GELU input) and GELU output; frozen keeps only what input gradients need
    n_img = config.num_image_token * tiles
    c4, h = v.hidden_size * round(1 / config.downsample_ratio) ** 2, s["h"]
    proj = {"train": b * (2 * c4 + 2 * h) + 8, "frozen": b * (c4 + h) + 8, "none": 0}[modes["projector"]]
    out["projector"] = n_img * proj

    if modes["llm"] == "none":
        out["llm"] = 0
        out["logits_saved"] = 0
        out["logits_transient"] = 0
    else:
        per_llm_layer = llm_ck if gradient_checkpointing else llm_full
        final_norm = b * h + (_rms_extra(h, b) + b * h if modes["llm"] == "train" else _rms_extra_frozen(h, b))
        rope = 2 * b * s["d"]
        ids = 8 if modes["llm"] == "train" else 0  # the embedding keeps its indices to scatter gradients
        out["llm"] = tokens * (s["layers"] * per_llm_layer + final_norm + rope + ids)
        if chunked_loss:
            chunk = min(tokens, 2 ** math.ceil(math.log2(max(1, math.ceil(tokens / math.ceil(s["v"] / h))))))
            out["logits_saved"] = 0
            out["logits_transient"] = chunk * s["v"] * 8
        else:
            out["logits_saved"] = tokens * s["v"] * 4
            out["logits_transient"] = tokens * s["v"] * (b + 4)
    recompute = 0
    if gradient_checkpointing:
        recompute = max(n_vit * vit_full, tokens * llm_full)
    out["recompute"] = recompute
    return out


# ----------------------------------------------------------------------------------------
# FLOPs
# ----------------------------------------------------------------------------------------


def flops_per_sample(config: MiniVLConfig, stage: StageConfig, tiles: int, tokens: int,
                     lora: LoraSpec | None = None, attention_span: int | None = None) -> dict[str, float]:
    """Model FLOPs of one training sample (forward + backward), per tower.

    Forward: ``2 x weights x tokens`` for every matrix multiply (patch conv, ViT layers,
    ``mlp1``, LLM layers, ``lm_head``; embeddings are look-ups, biases and norms are left out),
    plus attention ``2 x 2 x n x span x heads x d`` per layer (``QK^T`` and ``AV``; the ViT
    attends over its 1 + P tokens per tile, the LLM over ``attention_span`` tokens, by default
    the whole row, the PaLM convention that also counts the masked half of causal attention).
    Backward: a trained Linear costs 2 more (input and weight gradients), a frozen one 1 more
    when the gradient must pass through it, none when nothing upstream trains; attention
    costs 2 more when the gradient passes. ``recompute`` (``recompute_vision`` +
    ``recompute_llm``) is the extra forward of the checkpointed layers that gradient
    checkpointing adds (hardware FLOPs, not model FLOPs). Explained in chapter 13
    (notebooks/13_scaling_up.ipynb).
    """
    modes = _tower_modes(stage, lora)
    v = config.vision
    s = _llm_shape(config.llm)
    c, i = v.hidden_size, v.intermediate_size
    n_tile = 1 + v.num_patches

    def backward_factor(mode: str) -> tuple[int, int]:
        """(matmul multiplier, attention multiplier) for a tower's mode."""
        return {"train": (3, 3), "lora": (2, 3), "frozen": (2, 3), "none": (1, 1)}[mode]

    vit_mm, vit_att = backward_factor(modes["vision"])
    vit_layer_w = 3 * c * c + c * c + 2 * c * i
    vit_fwd = 2 * tiles * n_tile * v.num_hidden_layers * vit_layer_w
    vit_attn_fwd = 4 * tiles * n_tile * n_tile * c * v.num_hidden_layers
    conv_fwd = 2 * tiles * v.num_patches * v.num_channels * v.patch_size**2 * c
    conv_mult = 2 if modes["vision"] == "train" else 1  # no input gradient for the pixels
    out: dict[str, float] = {}
    out["vision"] = vit_mm * vit_fwd + vit_att * vit_attn_fwd + conv_mult * conv_fwd

    c4, h = c * round(1 / config.downsample_ratio) ** 2, s["h"]
    proj_fwd = 2 * config.num_image_token * tiles * (c4 * h + h * h)
    proj_mult = {"train": 3, "frozen": 2, "none": 1}[modes["projector"]]
    out["projector"] = proj_mult * proj_fwd

    llm_mm, llm_att = backward_factor(modes["llm"])
    q_out, kv_out = s["nh"] * s["d"], s["kv"] * s["d"]
    llm_layer_w = h * q_out + 2 * h * kv_out + q_out * h + 3 * h * s["i"]
    span = tokens if attention_span is None else attention_span
    llm_fwd = 2 * tokens * (s["layers"] * llm_layer_w + s["v"] * h)
    llm_attn_fwd = 4 * tokens * span * q_out * s["layers"]
    out["llm"] = llm_mm * llm_fwd + llm_att * llm_attn_fwd

    lora_flops = 0.0
    if lora is not None:
        n_lora = lora_param_count(config, lora)
        n_tok = tiles * n_tile if lora.target == "vision" else tokens
        lora_flops = 6 * n_lora * n_tok
    out["lora"] = lora_flops
    out["total"] = out["vision"] + out["projector"] + out["llm"] + out["lora"]
    out["recompute_vision"] = out["recompute_llm"] = 0.0
    if stage.gradient_checkpointing:
        if modes["vision"] != "none":
            out["recompute_vision"] = vit_fwd + vit_attn_fwd
        if modes["llm"] != "none":
            out["recompute_llm"] = 2 * tokens * s["layers"] * llm_layer_w + llm_attn_fwd
    out["recompute"] = out["recompute_vision"] + out["recompute_llm"]
    return out


# ----------------------------------------------------------------------------------------
# The plan
# ----------------------------------------------------------------------------------------


@dataclass
class Plan:
    """What :func:`plan` estimates for one model, stage, GPU type, GPU count and strategy.

    ``memory`` is bytes per GPU by component (``total`` included), ``params`` the counts per
    tower, ``flops`` model FLOPs per sample by tower, ``seconds_per_step`` one optimizer step
    (``micro_batch x grad_accum`` samples on every GPU) at ``mfu``. Print it for a table;
    :meth:`to_dict` for the numbers.

    Explained in chapter 13 (notebooks/13_scaling_up.ipynb).
    """

    model: str
    stage: str
    gpu: GPUSpec
    num_gpus: int
    strategy: str
    dtype: str
    tiles_per_sample: int
    tokens_per_sample: int
    micro_batch: int
    grad_accum: int
    gradient_checkpointing: bool
    lora: LoraSpec | None
    params: dict[str, dict[str, int]]
    memory: dict[str, float]
    flops: dict[str, float]
    mfu: float
    num_samples: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def capacity(self) -> float:
        """Bytes on one GPU."""
        return self.gpu.mem_gb * GB

    @property
    def fits(self) -> bool:
        return self.memory["total"] <= self.capacity

    @property
    def flops_per_step(self) -> float:
        """Model FLOPs of one optimizer step over all GPUs."""
        return self.flops["total"] * self.micro_batch * self.grad_accum * self.num_gpus

    @property
    def seconds_per_step(self) -> float:
        return self.flops_per_step / (self.num_gpus * self.gpu.peak_tflops * 1e12 * self.mfu)

    @property
    def tokens_per_second(self) -> float:
        """LLM tokens per second over all GPUs."""
        return self.tokens_per_sample * self.micro_batch * self.grad_accum * self.num_gpus / self.seconds_per_step

    @property
    def seconds_per_epoch(self) -> float | None:
        """``num_samples`` samples (packed rows) at ``mfu``; None when no data set size was given."""
        if self.num_samples is None:
            return None
        return self.num_samples * self.flops["total"] / (self.num_gpus * self.gpu.peak_tflops * 1e12 * self.mfu)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "stage": self.stage, "gpu": dataclasses.asdict(self.gpu),
            "num_gpus": self.num_gpus, "strategy": self.strategy, "dtype": self.dtype,
            "tiles_per_sample": self.tiles_per_sample, "tokens_per_sample": self.tokens_per_sample,
            "micro_batch": self.micro_batch, "grad_accum": self.grad_accum,
            "gradient_checkpointing": self.gradient_checkpointing,
            "lora": dataclasses.asdict(self.lora) if self.lora is not None else None,
            "params": self.params, "memory_bytes": dict(self.memory), "capacity_bytes": self.capacity,
            "fits": self.fits, "flops_per_sample": dict(self.flops), "flops_per_step": self.flops_per_step,
            "mfu": self.mfu, "seconds_per_step": self.seconds_per_step, "tokens_per_second": self.tokens_per_second,
            "num_samples": self.num_samples, "seconds_per_epoch": self.seconds_per_epoch, "notes": list(self.notes),
        }

    def __str__(self) -> str:
        lines = [f"plan: {self.model} | {self.stage} | {self.num_gpus} x {self.gpu.name} | {self.strategy} | "
                 f"{self.dtype} | {self.tiles_per_sample} tiles, {self.tokens_per_sample} tokens x {self.micro_batch}"
                 f" per GPU | grad ckpt {'on' if self.gradient_checkpointing else 'off'}"
                 + (f" | LoRA r={self.lora.r} on {self.lora.target}" if self.lora else "")]
        lines.append(f"{'parameters':<24}{'total':>14}{'trainable':>14}")
        for tower, c in self.params.items():
            if tower == "lora" and not c["total"]:
                continue
            lines.append(f"  {tower:<22}{c['total']:>14,}{c['trainable']:>14,}")
        lines.append(f"{'memory per GPU':<24}{'GB':>14}")
        for key, value in self.memory.items():
            if key == "total" or (not value and key not in ("weights",)):
                continue
            lines.append(f"  {key:<22}{value / GB:>14.2f}")
        verdict = "fits" if self.fits else "does NOT fit"
        lines.append(f"  {'total':<22}{self.memory['total'] / GB:>14.2f}   of {self.gpu.mem_gb:g} GB: {verdict}")
        lines.append(f"{'TFLOPs per sample':<24}{self.flops['total'] / 1e12:>14.2f}   (vision "
                     f"{self.flops['vision'] / 1e12:.2f}, projector {self.flops['projector'] / 1e12:.3f}, "
                     f"llm {self.flops['llm'] / 1e12:.2f})")
        lines.append(f"{'step time':<24}{self.seconds_per_step:>14.3f} s at {self.mfu:.0%} MFU "
                     f"({self.tokens_per_second:,.0f} tokens/s over {self.num_gpus} GPU(s))")
        if self.seconds_per_epoch is not None:
            lines.append(f"{'epoch time':<24}{self.seconds_per_epoch / 3600:>14.2f} h for {self.num_samples:,} samples")
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:  # IPython shows the table
        printer.text(str(self))


def _resolve_model(model: MiniVLConfig | str) -> tuple[MiniVLConfig, str]:
    if isinstance(model, MiniVLConfig):
        return model, "custom"
    if isinstance(model, str):
        return planner_config(model), model
    raise TypeError(f"plan: model must be a MiniVLConfig or a preset name, got {type(model).__name__}")


def static_memory(params: dict[str, dict[str, int]], dtype: str, strategy: str, num_gpus: int) -> dict[str, float]:
    """Weights, gradients, master weights and AdamW moments per GPU (bytes), sharded per ``strategy``.

    ``bf16`` / ``fp16``: weights and gradients in 2 bytes, plus an fp32 master copy and the two
    fp32 moments of every trainable parameter (the 2 + 2 + 12 bytes of the ZeRO paper).
    ``fp32``: 4-byte weights and gradients, no master copy, two 4-byte moments.

    Explained in chapter 13 (notebooks/13_scaling_up.ipynb).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; expected one of {', '.join(STRATEGIES)}")
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPE_BYTES)}")
    if num_gpus < 1:
        raise ValueError(f"num_gpus must be >= 1, got {num_gpus}")
    b = DTYPE_BYTES[dtype]
    total, trainable = params["all"]["total"], params["all"]["trainable"]
    weights = b * total
    grads = b * trainable
    master = 4 * trainable if b != 4 else 0
    moments = 8 * trainable
    n = num_gpus
    level = {"ddp": 0, "zero1": 1, "zero2": 2, "zero3": 3, "fsdp": 3}[strategy]
    return {
        "weights": weights / n if level >= 3 else weights,
        "gradients": grads / n if level >= 2 else grads,
        "master_weights": master / n if level >= 1 else master,
        "optimizer_states": moments / n if level >= 1 else moments,
    }


def _largest_layer(config: MiniVLConfig) -> int:
    """Parameters of the largest unit a fully sharded strategy gathers at once (a decoder
    layer, a ViT layer or the embedding matrix)."""
    v = config.vision
    vit_layer = (vision_param_count(v) - (vision_param_count(dataclasses.replace(v, num_hidden_layers=0)))) \
        // v.num_hidden_layers
    s = _llm_shape(config.llm)
    llm_layer = (llm_param_count(config.llm) - s["v"] * s["h"] * (1 if s["tied"] else 2) - s["h"]) // s["layers"]
    return max(vit_layer, llm_layer, s["v"] * s["h"])


def plan(
    model: MiniVLConfig | str,
    stage: StageConfig,
    num_gpus: int = 1,
    gpu: str | GPUSpec | tuple[float, float] = "H100-80GB",
    strategy: str = "ddp",
    tiles_per_sample: int | None = None,
    tokens_per_sample: int | None = None,
    lora: LoraSpec | None = None,
    gradient_checkpointing: bool | None = None,
    dtype: str = "bf16",
    micro_batch: int | None = None,
    num_samples: int | None = None,
    mfu: float = 0.4,
    margin: float = 0.10,
    cuda_context_gb: float = 1.0,
    attention_span: int | None = None,
    chunked_loss: bool = False,
) -> Plan:
    """Estimate parameters, memory per GPU, FLOPs and time for one training configuration.

    * ``model``: a :class:`MiniVLConfig` or a preset name (:func:`planner_config`).
    * ``stage``: what trains (``train_vision`` / ``train_projector`` / ``train_llm`` / ``lora``),
      the micro-batch (``batch_size``), ``grad_accum`` and, by default, the sample shape:
      packed stages use ``num_images_expected`` tiles and ``max_packed_tokens`` tokens,
      unpacked ones ``max_dynamic_patch + 1`` tiles (thumbnail) and ``max_seq_length`` tokens.
    * ``tiles_per_sample`` / ``tokens_per_sample``: override the sample shape (the tokens
      include the ``num_image_token`` tokens of every tile).
    * ``lora``, ``gradient_checkpointing``, ``micro_batch``: override the stage's.
    * ``num_samples``: data set size in samples (packed rows) for the epoch time.
    * ``chunked_loss``: a fused linear + cross-entropy loss (Liger) that never holds all logits;
    * ``margin``: fraction added for fragmentation and communication buffers;
      ``cuda_context_gb``: the CUDA context and library workspaces.

    Explained in chapter 13 (notebooks/13_scaling_up.ipynb).
    """
    config, name = _resolve_model(model)
    spec = get_gpu(gpu)
    if not 0 < mfu <= 1:
        raise ValueError(f"mfu must be in (0, 1], got {mfu}")
    lora = lora if lora is not None else stage.lora
    ckpt = stage.gradient_checkpointing if gradient_checkpointing is None else gradient_checkpointing
    if tiles_per_sample is None:
        tiles_per_sample = stage.num_images_expected if stage.packing else stage.max_dynamic_patch + 1
    if tokens_per_sample is None:
        tokens_per_sample = stage.max_packed_tokens if stage.packing else stage.max_seq_length
    image_tokens = tiles_per_sample * config.num_image_token
    if image_tokens > tokens_per_sample:
        raise ValueError(f"plan: {tiles_per_sample} tiles give {image_tokens} image tokens, more than "
                         f"tokens_per_sample={tokens_per_sample}")
    batch = stage.batch_size if micro_batch is None else micro_batch
    notes: list[str] = []
    if dtype == "bf16" and not spec.bf16:
        notes.append(f"{spec.name} has no bf16 tensor cores: train in fp16 (dtype='fp16') with loss scaling")
    if num_gpus == 1 and strategy != "ddp":
        notes.append(f"{strategy} on one GPU shards nothing (only CPU offload, not modelled, would help)")

    params = param_counts(config, stage, lora)
    if params["all"]["trainable"] == 0:
        raise ValueError(f"plan: stage {stage.name!r} trains nothing")
    memory: dict[str, float] = dict(static_memory(params, dtype, strategy, num_gpus))
    if strategy in ("zero3", "fsdp"):
        # two layers gathered in full at once (the current one and the prefetched next)
        memory["gather_buffer"] = 2 * _largest_layer(config) * DTYPE_BYTES[dtype]
    acts = activation_bytes(config, stage, tiles_per_sample, tokens_per_sample, dtype, ckpt, lora, chunked_loss)
    for key in ("vision", "projector", "llm", "logits_saved", "logits_transient"):
        memory[f"act_{key}"] = batch * acts[key]
    memory["act_recompute"] = batch * acts["recompute"]  # one layer, re-created for the whole micro-batch
    subtotal = sum(memory.values())
    memory["margin"] = margin * subtotal
    memory["cuda_context"] = cuda_context_gb * GB
    memory["total"] = subtotal + memory["margin"] + memory["cuda_context"]

    flops = flops_per_sample(config, stage.replace(gradient_checkpointing=ckpt), tiles_per_sample,
                             tokens_per_sample, lora, attention_span)
    return Plan(model=name, stage=stage.name, gpu=spec, num_gpus=num_gpus, strategy=strategy, dtype=dtype,
                tiles_per_sample=tiles_per_sample, tokens_per_sample=tokens_per_sample, micro_batch=batch,
                grad_accum=stage.grad_accum, gradient_checkpointing=ckpt, lora=lora, params=params,
                memory=memory, flops=flops, mfu=mfu, num_samples=num_samples, notes=notes)


def recommend(model: MiniVLConfig | str, stage: StageConfig, num_gpus: int = 1,
              gpu: str | GPUSpec | tuple[float, float] = "H100-80GB", **kwargs: Any) -> Plan:
    """The cheapest strategy that fits, as a :class:`Plan`: ``ddp``, then ``zero1``, ``zero2``,
    ``zero3`` (more sharding, more communication). Raises ``ValueError`` with every strategy's
    memory when none fits. Other keyword arguments go to :func:`plan`.

    Explained in chapter 13 (notebooks/13_scaling_up.ipynb).
    """
    if "strategy" in kwargs:
        raise TypeError("recommend chooses the strategy; call plan() to fix one")
    tried = []
    for strategy in ("ddp", "zero1", "zero2", "zero3"):
        if num_gpus == 1 and strategy != "ddp":
            break
        p = plan(model, stage, num_gpus=num_gpus, gpu=gpu, strategy=strategy, **kwargs)
        if p.fits:
            return p
        tried.append(f"{strategy}: {p.memory['total'] / GB:.1f} GB")
    spec = get_gpu(gpu)
    raise ValueError(f"no strategy fits {model if isinstance(model, str) else 'the model'} on {num_gpus} x "
                     f"{spec.name} ({spec.mem_gb:g} GB each): {'; '.join(tried)}. Use more GPUs, LoRA, a "
                     "smaller micro-batch or fewer tokens per sample")


def format_bytes(n: float) -> str:
    """``12.3 GB`` style (decimal units)."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"


__all__ = [
    "GPUS",
    "GPUSpec",
    "Plan",
    "STRATEGIES",
    "activation_bytes",
    "custom",
    "flops_per_sample",
    "format_bytes",
    "get_gpu",
    "llm_layer_activation_bytes",
    "llm_param_count",
    "lora_param_count",
    "param_counts",
    "plan",
    "planner_config",
    "projector_param_count",
    "recommend",
    "static_memory",
    "vision_param_count",
    "vit_layer_activation_bytes",
]

