"""Training stages as data: what trains, at which learning rate, for how long.

InternVL 2.5 trains in three stages (report section 3.2, Table 3):

* **Stage 1, MLP warm-up**: only the projector ``mlp1`` trains (lr 2e-4); the ViT and the
  LLM are frozen, so the randomly initialised MLP learns to map vision features into the
  LLM's embedding space without disturbing either.
* **Stage 1.5, ViT incremental learning** (8B and 26B only): ViT + MLP train (lr 1e-5),
  the LLM stays frozen; the ViT learns what the LLM needs (charts, documents, OCR).
* **Stage 2, full instruction tuning**: everything trains (lr 4e-5, 2e-5 from 26B up).

A stage is a :class:`StageConfig`; the same training loop (:mod:`minivl.train.trainer`)
runs all of them. Presets carry the official values per model size
(``stage1("1b")`` ...) and a ``tiny`` variant for the cpu scale; YAML files under
``configs/`` hold the same values for ``minivl train``.

Explained in chapters 10-12 (notebooks/10_stage1_mlp_warmup.ipynb,
notebooks/11_stage1_5_vit_incremental.ipynb, notebooks/12_stage2_instruction_tuning.ipynb).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

# LoRA target modules of the official code (modeling_internvl_chat.py, wrap_*_lora).
LORA_TARGETS = {
    "vision": ["attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"],
    "qwen2": ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
              "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"],
    "llama": ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
              "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"],
    "internlm2": ["attention.wqkv", "attention.wo", "feed_forward.w1", "feed_forward.w2", "feed_forward.w3"],
}


@dataclass
class LoraSpec:
    """LoRA on one tower: ``target`` is ``"llm"`` or ``"vision"``; alpha = 2r as in InternVL."""

    target: str = "llm"
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05

    def __post_init__(self) -> None:
        if self.target not in ("llm", "vision"):
            raise ValueError(f"LoRA target must be 'llm' or 'vision', got {self.target!r}")


@dataclass
class StageConfig:
    """Everything that differs between stages; one instance per training run.

    Trainable parts are ``train_vision`` (InternViT), ``train_projector`` (``mlp1``) and
    ``train_llm``. ``warmup_steps`` wins over ``warmup_ratio`` when both are set. The batch is
    ``batch_size`` samples (or packed rows, when ``packing``) per micro-step, times
    ``grad_accum`` micro-steps per optimizer step.
    """

    name: str = "stage2"
    train_vision: bool = True
    train_projector: bool = True
    train_llm: bool = True
    lr: float = 4e-5
    vision_lr_scale: float = 1.0  # the ViT's lr = lr * vision_lr_scale (1 in every InternVL preset)
    projector_lr_scale: float = 1.0  # the projector's lr = lr * projector_lr_scale (1 in every InternVL preset)
    min_lr_ratio: float = 0.0
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 0
    warmup_ratio: float = 0.03
    max_steps: int = 1000
    batch_size: int = 1
    grad_accum: int = 1
    max_grad_norm: float = 1.0
    drop_path_rate: float = 0.1
    loss_reduction: str = "square"
    max_dynamic_patch: int = 12
    max_seq_length: int = 16384
    packing: bool = True
    # InternVL's --group_by_length (its unpacked fine-tuning scripts): each step's samples dealt to
    # ranks and micro-batches by estimated length (MixtureDataset.length_estimates, map_loader);
    # unpacked runs only
    group_by_length: bool = False
    max_packed_tokens: int = 16384
    num_images_expected: int = 48
    max_buffer_size: int = 20
    # DataLoader worker processes per rank building the batches (InternVL's
    # dataloader_num_workers: 8 in its pre-training scripts, 4 in fine-tuning); 0 builds
    # them in the training process, the right choice on a 2-core CPU
    num_workers: int = 0
    mixed_precision: str = "auto"  # "auto" = bf16 on a GPU with bf16, else no (float32)
    gradient_checkpointing: bool = True
    lora: LoraSpec | None = None
    log_every: int = 1
    eval_every: int = 0
    save_every: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.lora, dict):
            self.lora = LoraSpec(**self.lora)
        self.betas = tuple(self.betas)
        if self.loss_reduction not in ("token", "sample", "square"):
            raise ValueError(f"loss_reduction must be token, sample or square, got {self.loss_reduction!r}")
        if self.mixed_precision not in ("auto", "no", "bf16", "fp16"):
            raise ValueError(f"mixed_precision must be auto, no, bf16 or fp16, got {self.mixed_precision!r}")
        if not (self.train_vision or self.train_projector or self.train_llm or self.lora):
            raise ValueError(f"stage {self.name!r} trains nothing")
        if self.vision_lr_scale < 0:
            raise ValueError(f"vision_lr_scale must be >= 0, got {self.vision_lr_scale}")
        if self.projector_lr_scale < 0:
            raise ValueError(f"projector_lr_scale must be >= 0, got {self.projector_lr_scale}")
        check_num_workers(self.num_workers)
        if self.group_by_length and self.packing:
            raise ValueError("group_by_length orders unpacked batches (packing=False); a packed stage packs by "
                             "length already: set group_by_length=False with packing=True")
        if self.max_steps < 1 or self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError("max_steps, batch_size and grad_accum must be >= 1")

    @property
    def num_warmup_steps(self) -> int:
        """``warmup_steps``, else ``ceil(max_steps * warmup_ratio)`` (HF's ``get_warmup_steps``)."""
        return self.warmup_steps if self.warmup_steps else math.ceil(self.max_steps * self.warmup_ratio)

    def replace(self, **changes: Any) -> StageConfig:
        """A copy with some fields changed (e.g. ``cfg.replace(max_steps=3)``)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StageConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown stage config keys: {unknown}; known keys: {sorted(known)}")
        return cls(**d)


# ---------------------------------------------------------------------------------------
# Presets. Official values from the InternVL 2.5 stage scripts (shell/internvl2.5/stage*/)
# and the fine-tuning scripts (shell/internvl2.5/2nd_finetune/); "tiny" is the cpu scale.
# ---------------------------------------------------------------------------------------

_SIZES = ("tiny", "1b", "2b", "4b", "8b")
_WEIGHT_DECAY = {"tiny": 0.01, "1b": 0.01, "2b": 0.01, "4b": 0.01, "8b": 0.05}
_STAGE2_STEPS = {"1b": 22000, "2b": 22000, "4b": 11000, "8b": 5500}

# The cpu-scale budget: short stages on 2 cores, small packs of 112 px tiles.
_TINY = dict(max_dynamic_patch=6, max_seq_length=1024, max_packed_tokens=1024, num_images_expected=24,
             max_buffer_size=20, mixed_precision="no", gradient_checkpointing=False, batch_size=1,
             grad_accum=1, log_every=10, num_workers=0)


def check_num_workers(num_workers: int) -> None:
    """Raise unless ``num_workers`` (DataLoader worker processes) is an integer >= 0."""
    if not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers must be an integer >= 0, got {num_workers!r}")


def _check_size(size: str) -> str:
    if size not in _SIZES:
        raise ValueError(f"unknown model size {size!r}; expected one of {', '.join(_SIZES)}")
    return size


def stage1(size: str = "1b") -> StageConfig:
    """Stage 1, MLP warm-up: projector only, lr 2e-4, 100 warm-up steps, no drop path."""
    size = _check_size(size)
    cfg = StageConfig(name="stage1", train_vision=False, train_projector=True, train_llm=False, lr=2e-4,
                      weight_decay=_WEIGHT_DECAY[size], warmup_steps=100, warmup_ratio=0.0, max_steps=100000,
                      drop_path_rate=0.0, num_workers=8)
    if size == "tiny":
        cfg = cfg.replace(lr=2e-3, warmup_steps=20, max_steps=300, **_TINY)
    return cfg


def stage1_5(size: str = "8b") -> StageConfig:
    """Stage 1.5, ViT incremental learning: ViT + projector, LLM frozen, lr 1e-5, drop path 0.1.

    The official 8B run uses a packed batch of 1024 (gradient accumulation 2).
    """
    size = _check_size(size)
    cfg = StageConfig(name="stage1_5", train_vision=True, train_projector=True, train_llm=False, lr=1e-5,
                      weight_decay=_WEIGHT_DECAY[size], warmup_steps=100, warmup_ratio=0.0, max_steps=100000,
                      drop_path_rate=0.1, grad_accum=2, num_workers=8)
    if size == "tiny":
        cfg = cfg.replace(lr=1e-3, warmup_steps=20, max_steps=300, **_TINY)
    return cfg


def stage2(size: str = "1b") -> StageConfig:
    """Stage 2, full instruction tuning: everything trains, lr 4e-5, warm-up ratio 0.03, drop path 0.1."""
    size = _check_size(size)
    cfg = StageConfig(name="stage2", train_vision=True, train_projector=True, train_llm=True, lr=4e-5,
                      weight_decay=_WEIGHT_DECAY[size], warmup_ratio=0.03,
                      max_steps=_STAGE2_STEPS.get(size, 1000), drop_path_rate=0.1, num_workers=8)
    if size == "tiny":
        cfg = cfg.replace(lr=1e-3, warmup_ratio=0.05, max_steps=400, **_TINY)
    return cfg


def finetune_full(size: str = "1b") -> StageConfig:
    """The official full fine-tuning recipe: projector + LLM, ViT frozen, not packed, 6 tiles.

    Not packed, so no loss reweighting: the scripts pass no ``--loss_reduction`` and InternVL's
    unpacked path is a plain cross-entropy, the mean over supervised tokens
    (``loss_reduction="token"``). minivl takes that mean over all the tokens of an optimizer
    step (its denominator spans the accumulated micro-batches and the ranks); the HF Trainer
    that InternVL pins averages each micro-batch's own mean, which differs when micro-batches
    hold different numbers of supervised tokens."""
    size = _check_size(size)
    cfg = StageConfig(name="finetune_full", train_vision=False, train_projector=True, train_llm=True, lr=4e-5,
                      weight_decay=_WEIGHT_DECAY[size], warmup_ratio=0.03, max_steps=1000, drop_path_rate=0.1,
                      loss_reduction="token", packing=False, group_by_length=True, max_dynamic_patch=6,
                      max_seq_length=8192, batch_size=4, grad_accum=4, num_workers=4)
    if size == "tiny":
        cfg = cfg.replace(lr=1e-3, max_steps=200, **{**_TINY, "max_dynamic_patch": 6})
        cfg = cfg.replace(packing=False, batch_size=8)
    return cfg


def finetune_lora(size: str = "1b", target: str = "llm") -> StageConfig:
    """LoRA fine-tuning (r 16, alpha 32, dropout 0.05) on the LLM (official) or the ViT; the rest frozen."""
    size = _check_size(size)
    base = finetune_full(size)
    return base.replace(name=f"finetune_lora_{target}", train_vision=False, train_projector=False, train_llm=False,
                        drop_path_rate=0.0, lora=LoraSpec(target=target),
                        **({} if size == "tiny" else {"batch_size": 4, "grad_accum": 2}))


PRESETS = {"stage1": stage1, "stage1_5": stage1_5, "stage2": stage2, "finetune_full": finetune_full,
           "finetune_lora": finetune_lora}


def get_stage(name: str, size: str = "1b", **overrides: Any) -> StageConfig:
    """A preset by name (``stage1``, ``stage1_5``, ``stage2``, ``finetune_full``, ``finetune_lora``)."""
    if name not in PRESETS:
        raise ValueError(f"unknown stage {name!r}; expected one of {', '.join(PRESETS)}")
    return PRESETS[name](size).replace(**overrides) if overrides else PRESETS[name](size)


@dataclass
class RunConfig:
    """A whole ``minivl train`` run: which model, which data, which stage, where to write.

    ``model`` is a preset name of :class:`minivl.config.MiniVLConfig` (``tiny``,
    ``internvl2_5_1b`` ...) or a checkpoint directory; ``data`` is an InternVL meta JSON.
    """

    model: str
    data: str
    stage: StageConfig
    output_dir: str = "runs/train"
    tokenizer: str | None = None
    eval_data: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_yaml(cls, path: str | Path) -> RunConfig:
        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"training config not found: {path}") from None
        if not isinstance(raw, dict) or "stage" not in raw:
            raise ValueError(f"{path}: a training config needs 'model', 'data' and 'stage' sections")
        stage_raw = dict(raw["stage"])
        preset, size = stage_raw.pop("preset", None), stage_raw.pop("size", "1b")
        stage = get_stage(preset, size, **stage_raw) if preset else StageConfig.from_dict(stage_raw)
        missing = [k for k in ("model", "data") if k not in raw]
        if missing:
            raise ValueError(f"{path}: missing keys {missing}")
        known = {"model", "data", "stage", "output_dir", "tokenizer", "eval_data"}
        return cls(model=str(raw["model"]), data=str(raw["data"]), stage=stage,
                   output_dir=str(raw.get("output_dir", "runs/train")), tokenizer=raw.get("tokenizer"),
                   eval_data=raw.get("eval_data"), extra={k: v for k, v in raw.items() if k not in known})
