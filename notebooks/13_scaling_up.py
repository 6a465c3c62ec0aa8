# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 13. Scaling up: the same recipes for InternVL2.5-1B/2B/8B on GPUs
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/minivl/minivl/blob/main/notebooks/13_scaling_up.ipynb)
#
# Everything so far ran on two CPU cores with a tiny model. InternVL 2.5 trained its 1B model
# on 512 GPUs, with 16,384-token packed rows, bf16 and DeepSpeed ZeRO. The code does not
# change between the two: the training loop, the losses, the packing and the stage configs
# are the ones you have already used. What changes is sizes, precision, and how the model's
# memory is spread over GPUs.
#
# This chapter shows how to plan such a run before paying for GPUs, checks the plan against
# measurements, and launches real runs. It ends with a recipe for fine-tuning
# InternVL2.5-1B with LoRA on a real data set, which fits on a free Colab GPU.
#
# The code lives in `minivl/train/planner.py` (estimates), `minivl/train/measure.py`
# (measurements), `minivl/train/recipes.py` (the fine-tuning recipe) and
# `benchmarks/gpu_train.py` (the GPU benchmark).

# %%
import sys

if "google.colab" in sys.modules:  # install minivl itself on Colab
    get_ipython().run_line_magic("pip", 'install -q "minivl @ git+https://github.com/minivl/minivl"')

# %%
from minivl.scale import print_environment

env = print_environment()

# %% [markdown]
# ## What you will build
#
# - a table of what changes between the `cpu` scale and the official GPU runs, read from the
#   stage presets;
# - plans made with `minivl.train.planner`: parameter counts for 1B to 78B against the
#   report's Table 2, and memory per GPU and time per epoch for five real scenarios, from
#   Colab to 512 GPUs, each with the strategy `recommend` picks;
# - a check of the planner against a real model: a tiny MiniVL trained for two steps, its
#   measured weights, gradients, optimizer states, activations and FLOPs next to the
#   planner's numbers;
# - the commands and config files that launch a run on many GPUs with DDP, FSDP or DeepSpeed;
# - a Colab recipe that fine-tunes `OpenGVLab/InternVL2_5-1B` with LoRA on a data set from
#   the Hugging Face Hub and then chats with the result. At `cpu` scale the same cells run on
#   a tiny model and the synthetic suite;
# - the GPU benchmark script, and what its MFU number means.
#
# ## The idea: where the bytes go
#
# Mixed-precision training with AdamW keeps **16 bytes for every trainable parameter**. The
# model uses 2 bytes for its bf16 weight and 2 for the bf16 gradient. The optimizer keeps 4
# for an fp32 master copy of the weight and 4 + 4 for Adam's two fp32 moments. These numbers
# come from the ZeRO paper (Rajbhandari et al., 2020). Activations come on top, and they
# grow with the tokens in a row, not with the parameters.
#
# Data parallelism puts a full copy of all of this on every GPU. ZeRO splits it into shards
# over the N GPUs, in three steps:
#
# - stage 1 shards the optimizer's 12 bytes;
# - stage 2 also shards the gradients;
# - stage 3 also shards the weights, and gathers each layer only when it is needed.
#
# InternVL 2.5 uses ZeRO-1 up to 8B and ZeRO-3 from 26B up. The figure shows why, for
# InternVL2.5-8B trained in full on 8 GPUs.

# %%
import matplotlib.pyplot as plt

from minivl.train.planner import GB, param_counts, planner_config, static_memory

counts_8b = param_counts(planner_config("internvl2_5_8b"))
parts = ("weights", "gradients", "master_weights", "optimizer_states")
per_strategy = {s: static_memory(counts_8b, "bf16", s, num_gpus=8) for s in ("ddp", "zero1", "zero2", "zero3")}
fig, ax = plt.subplots(figsize=(6.5, 3.4))
bottom = [0.0] * len(per_strategy)
for part in parts:
    values = [m[part] / GB for m in per_strategy.values()]
    ax.bar(list(per_strategy), values, bottom=bottom, label=part.replace("_", " "))
    bottom = [b + v for b, v in zip(bottom, values)]
ax.axhline(80, color="k", ls="--", lw=1)
ax.text(3.45, 82, "80 GB card", ha="right", va="bottom", fontsize=8)
ax.set(ylabel="GB per GPU (before activations)",
       title=f"InternVL2.5-8B ({counts_8b['all']['total'] / 1e9:.1f}B parameters), all trainable, 8 GPUs")
ax.legend(fontsize=8)
plt.tight_layout()
plt.show()
for s, m in per_strategy.items():
    print(f"{s:6s} {sum(m.values()) / GB:6.1f} GB per GPU")
assert sum(per_strategy["ddp"].values()) == 16 * counts_8b["all"]["total"]  # 16 bytes per parameter

# %% [markdown]
# Without sharding, the 8B model needs about 130 GB per GPU before a single activation,
# which no card holds. ZeRO-1 brings that down to about 45 GB. The rest of the chapter puts
# numbers on the other half of the picture: activations, time, and the data-parallel
# strategy.
#
# ## From cpu to gpu scale
#
# A stage is a `StageConfig` (chapter 10). The `tiny` presets are the `cpu` scale, and the
# `1b` ... `8b` presets carry the values of the official stage scripts. The table reads
# both straight from `get_stage`. The GPU count and ZeRO stage are not part of a stage, so
# they come from `minivl.train.recipes.OFFICIAL_RUNS`.

# %%
from minivl.train.recipes import OFFICIAL_RUNS
from minivl.train.stages import get_stage

columns = {
    "cpu: stage2 tiny": (get_stage("stage2", "tiny"), {"gpus": 1, "micro_batch": 1, "zero": "none (1 CPU)"}),
    "1B stage 1": (get_stage("stage1", "1b"), OFFICIAL_RUNS["1b"]),
    "1B stage 2": (get_stage("stage2", "1b"), OFFICIAL_RUNS["1b"]),
    "8B stage 1.5": (get_stage("stage1_5", "8b"), OFFICIAL_RUNS["8b"]),
    "8B stage 2": (get_stage("stage2", "8b"), OFFICIAL_RUNS["8b"]),
}


def precision(stage):
    return "bf16 (auto on GPU)" if stage.mixed_precision == "auto" else f"fp32 ({stage.mixed_precision})"


rows = {
    "max tiles per image": lambda s, r: s.max_dynamic_patch,
    "context (max_seq_length)": lambda s, r: s.max_seq_length,
    "packing": lambda s, r: s.packing,
    "pack tokens T": lambda s, r: s.max_packed_tokens,
    "pack tiles K": lambda s, r: s.num_images_expected,
    "precision": lambda s, r: precision(s),
    "gradient checkpointing": lambda s, r: s.gradient_checkpointing,
    "ZeRO": lambda s, r: r["zero"],
    "GPUs": lambda s, r: r["gpus"],
    "rows per GPU x grad accum": lambda s, r: f"{s.batch_size} x {s.grad_accum}",
    "packed batch": lambda s, r: r["gpus"] * s.batch_size * s.grad_accum,
    "lr": lambda s, r: f"{s.lr:g}",
    "max_steps": lambda s, r: s.max_steps,
}
print(f"{'':26s}" + "".join(f"{c:>20s}" for c in columns))
for label, get in rows.items():
    print(f"{label:26s}" + "".join(f"{str(get(s, r)):>20s}" for s, r in columns.values()))

s2 = get_stage("stage2", "1b")
assert (s2.max_packed_tokens, s2.num_images_expected, s2.max_seq_length) == (16384, 48, 16384)
assert OFFICIAL_RUNS["8b"]["gpus"] * get_stage("stage1_5", "8b").grad_accum == 1024  # stage 1.5's packed batch

# %% [markdown]
# Three differences matter for memory and speed:
#
# - **Rows 64 times longer.** A `cpu` packed row holds 1,024 tokens and 24 tiles of 112 px.
#   A GPU row holds 16,384 tokens and 48 tiles of 448 px, and each of those tiles is 256 LLM
#   tokens after pixel unshuffle.
# - **bf16 and gradient checkpointing.** Both are on at GPU scale. Without checkpointing,
#   the activations of a 16k-token row would not fit.
# - **512 GPUs, one row each.** Gradient accumulation is 1, except in stage 1.5 of the 8B
#   model, which uses 2 for a packed batch of 1,024. Every GPU holds a full copy of the
#   model, with the optimizer states sharded by ZeRO-1.
#
# One more difference is about the host, not the GPU, so it is not in the table: the GPU
# presets build their batches in `num_workers` DataLoader processes per GPU (8 in
# pre-training, 4 in fine-tuning: InternVL's `dataloader_num_workers`), so that decoding,
# tiling and JPEG-augmenting 448 px tiles keeps up with the GPU. Each worker packs its own
# shard of every data set, as in InternVL, and the samples it skips are still counted in
# the training process. The `tiny` presets use 0: on a 2-core CPU a worker only takes a core
# from the model (`benchmarks/loader_workers.py`: a stage-2 step of the quickstart took 145 ms
# without a worker and 158 ms with one, on the same rows).
#
# ## The planner
#
# ### Parameters, against the report's Table 2
#
# `planner_config` returns the architecture of each released model. The 1B to 8B shapes are
# the `MiniVLConfig` presets. The 26B, 38B and 78B shapes (InternViT-6B with
# internlm2.5-20B, Qwen2.5-32B or Qwen2.5-72B) exist for planning only. The counts are
# exact formulas, which `tests/test_planner.py` checks against models built on the meta
# device.

# %%
PAPER_TABLE2 = {"1b": 0.9, "2b": 2.2, "4b": 3.7, "8b": 8.1, "26b": 25.5, "38b": 38.4, "78b": 78.4}  # #Param, B
print(f"{'model':18s}{'vision':>14s}{'projector':>12s}{'llm':>16s}{'total':>16s}{'paper':>8s}")
for size, paper in PAPER_TABLE2.items():
    c = param_counts(planner_config(f"internvl2_5_{size}"))
    print(f"InternVL2.5-{size.upper():5s}{c['vision']['total']:>14,}{c['projector']['total']:>12,}"
          f"{c['llm']['total']:>16,}{c['all']['total']:>16,}{paper:>7.1f}B")
    assert round(c["all"]["total"] / 1e9, 1) == paper

# %% [markdown]
# Every total rounds to the report's figure. The ViT is InternViT-300M up to 8B (0.3B
# parameters) and InternViT-6B from 26B up (5.5B). Most of the parameters sit in the LLM.
#
# ### Memory and time for five scenarios
#
# `plan(model, stage, num_gpus, gpu, strategy, ...)` returns a `Plan` with parameters, memory
# per GPU by component, FLOPs per sample, step time and epoch time. Time assumes a model
# FLOPs utilisation (MFU) of 40%, a typical value for well-tuned bf16 training. Five
# scenarios:
#
# 1. LoRA on InternVL2.5-1B on a free Colab **T4** (16 GB, fp16 only), and on an **L4**
#    (24 GB). The recipe at the end of this chapter.
# 2. Full fine-tuning of 1B on one **A100-80GB**, and on one **H100**. This uses the
#    official `finetune_full` recipe: ViT frozen, 4 samples per micro-batch.
# 3. Full fine-tuning of 8B on **8 x A100-80GB** with ZeRO-1, the setting of the official
#    fine-tuning scripts.
# 4. The official **26B stage 2**: 512 A100-80GB with ZeRO-3, 5,500 steps of packed rows.
#
# The fine-tuning scenarios use samples of 7 tiles (6 + thumbnail) and 2,048 (LoRA) or 4,096
# (full) tokens, and an epoch of 10,000 samples.

# %%
from minivl.train.planner import plan, recommend

ft = dict(tiles_per_sample=7, num_samples=10_000)
scenarios = {
    "1B LoRA, 1 x T4": ("internvl2_5_1b", get_stage("finetune_lora", "1b", batch_size=1), 1, "T4",
                        dict(ft, tokens_per_sample=2048, dtype="fp16")),
    "1B LoRA, 1 x L4": ("internvl2_5_1b", get_stage("finetune_lora", "1b", batch_size=1), 1, "L4",
                        dict(ft, tokens_per_sample=2048)),
    "1B full, 1 x A100-80GB": ("internvl2_5_1b", get_stage("finetune_full", "1b"), 1, "A100-80GB",
                               dict(ft, tokens_per_sample=4096)),
    "1B full, 1 x H100": ("internvl2_5_1b", get_stage("finetune_full", "1b"), 1, "H100-80GB",
                          dict(ft, tokens_per_sample=4096)),
    "8B full, 8 x A100-80GB": ("internvl2_5_8b", get_stage("finetune_full", "8b"), 8, "A100-80GB",
                               dict(ft, tokens_per_sample=4096)),
    # 26B stage 2: the 8B stage-2 preset with the 26B values (lr 2e-5, drop path 0.4), 5,500 x 512 rows
    "26B stage 2, 512 x A100": ("internvl2_5_26b", get_stage("stage2", "8b", lr=2e-5, drop_path_rate=0.4), 512,
                                "A100-80GB", dict(num_samples=5500 * 512)),
}
plans = {name: recommend(model, stage, n, gpu, **kw) for name, (model, stage, n, gpu, kw) in scenarios.items()}

print(f"{'scenario':25s}{'strategy':>9s}{'trainable':>16s}{'GB/GPU':>8s}{'of':>5s}{'TFLOP/sample':>13s}"
      f"{'step s':>8s}{'epoch h':>9s}")
for name, p in plans.items():
    print(f"{name:25s}{p.strategy:>9s}{p.params['all']['trainable']:>16,}{p.memory['total'] / GB:>8.1f}"
          f"{p.gpu.mem_gb:>5g}{p.flops['total'] / 1e12:>13.2f}{p.seconds_per_step:>8.2f}{p.seconds_per_epoch / 3600:>9.2f}")

assert plans["8B full, 8 x A100-80GB"].strategy == "zero1"  # as the official fine-tuning scripts
assert plans["26B stage 2, 512 x A100"].strategy == "zero3"  # as the official 26B stage scripts
assert plans["1B LoRA, 1 x T4"].params["all"]["trainable"] == 8_798_208  # r = 16 on the 7 LLM projections

# %% [markdown]
# `recommend` tries `ddp`, then `zero1`, `zero2` and `zero3`, and returns the first
# strategy that fits. On its own it lands where InternVL 2.5 did: ZeRO-1 for 8B, and ZeRO-3
# for 26B. ZeRO-1 leaves the 26B model at about 170 GB per GPU. The 26B stage 2 alone is
# about 56 hours on 512 A100s at 40% MFU.
#
# The full plan of one scenario, printed:

# %%
print(plans["1B LoRA, 1 x T4"])

# %% [markdown]
# The T4 plan trains about 8.8M LoRA parameters out of 938M. The frozen weights take 1.9 GB
# in fp16. The largest single item is the logits: 2,048 tokens x 151,674 vocabulary entries,
# kept in fp32 for the loss. The stacked bars show the same breakdown for every scenario.

# %%
import numpy as np

groups = {
    "weights": ("weights",),
    "gradients": ("gradients",),
    "optimizer (master + moments)": ("master_weights", "optimizer_states"),
    "activations": ("act_vision", "act_projector", "act_llm", "act_recompute", "gather_buffer"),
    "logits": ("act_logits_saved", "act_logits_transient"),
    "margin + CUDA context": ("margin", "cuda_context"),
}
names = list(plans)
fig, ax = plt.subplots(figsize=(8, 4))
left = np.zeros(len(names))
for label, keys in groups.items():
    values = np.array([sum(plans[n].memory.get(k, 0.0) for k in keys) / GB for n in names])
    ax.barh(names, values, left=left, label=label)
    left += values
for i, n in enumerate(names):
    ax.plot([plans[n].gpu.mem_gb] * 2, [i - 0.4, i + 0.4], color="k", lw=2)
ax.invert_yaxis()
ax.set(xlabel="GB per GPU (black tick: the card's memory)",
       title="Memory per GPU, by component, with the strategy recommend picks")
ax.legend(fontsize=7, loc="lower right")
plt.tight_layout()
plt.show()
for n in names:
    total = sum(sum(plans[n].memory.get(k, 0.0) for k in keys) for keys in groups.values())
    assert abs(total - plans[n].memory["total"]) < 1.0  # the groups cover every component

# %% [markdown]
# ## Checking the planner against measured numbers
#
# A plan is only as good as its formulas. We cannot measure a 1B model on two CPU cores,
# but the formulas hold for any width, so we check them on the smoke-scale MiniVL: a
# 2-layer ViT of width 32 and a 2-layer Qwen2 of width 64. For each stage we train it for
# two AdamW steps and measure four things with `minivl.train.measure`:
#
# - the weights, gradients and optimizer states that exist after the steps
#   (`training_state_bytes`);
# - the bytes autograd saved for backward during the forward (`saved_bytes`);
# - the FLOPs of the forward and backward, counted by PyTorch's `FlopCounterMode`
#   (`count_flops`).
#
# The planner gets the same config and stage, and nothing else.

# %%
import warnings

import torch
from transformers.utils import logging as hf_logging

from minivl.config import MiniVLConfig
from minivl.model import MiniVL
from minivl.train.measure import count_flops, saved_bytes, storage_keys, training_state_bytes
from minivl.train.planner import activation_bytes, flops_per_sample
from minivl.train.trainer import add_lora, apply_stage_freezing

hf_logging.set_verbosity_error()  # quiet notices about loading minivl's own checkpoint layouts
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

IMG = 5  # the image-context token id of this toy vocabulary
cfg = MiniVLConfig.smoke(vocab_size=512, image_token_id=IMG)
tiles, text = 2, 40
g = torch.Generator().manual_seed(0)
ids = torch.cat([torch.randint(10, 512, (4,), generator=g), torch.full((tiles * cfg.num_image_token,), IMG),
                 torch.randint(10, 512, (text,), generator=g)])[None]  # (L,) -> (1, L)
pixels = torch.randn(tiles, 3, cfg.vision.image_size, cfg.vision.image_size, generator=g)
print(f"one sample: {tiles} tiles, {ids.shape[1]} LLM tokens ({tiles * cfg.num_image_token} image tokens)")


def measure_stage(stage, steps=2):
    """Train the smoke model for `steps` AdamW steps; measured and planned numbers side by side."""
    stage = stage.replace(gradient_checkpointing=False)
    torch.manual_seed(0)
    model = MiniVL(cfg)
    if stage.lora is not None:
        add_lora(model, stage.lora)
    apply_stage_freezing(model, stage)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    exclude = storage_keys(model) | storage_keys([ids, pixels])
    losses = []
    for step in range(steps):
        opt.zero_grad(set_to_none=True)
        if step == 0:
            acts, loss = saved_bytes(lambda: model(input_ids=ids, pixel_values=pixels, labels=ids).loss, exclude)
            del loss  # its graph held the saved tensors; the FLOP count runs a fresh forward + backward
            flops = count_flops(lambda: model(input_ids=ids, pixel_values=pixels, labels=ids).loss.backward())
            opt.zero_grad(set_to_none=True)
        loss = model(input_ids=ids, pixel_values=pixels, labels=ids).loss
        loss.backward()
        opt.step()
        losses.append(loss.item())
    planned_acts = activation_bytes(cfg, stage, tiles, ids.shape[1], "fp32", gradient_checkpointing=False,
                                    lora=stage.lora)
    return {
        "losses": losses,
        "state": (training_state_bytes(model, opt),
                  static_memory(param_counts(cfg, stage), "fp32", "ddp", 1)),
        "activations": (acts, sum(planned_acts[k] for k in ("vision", "projector", "llm", "logits_saved"))),
        "flops": (flops, flops_per_sample(cfg, stage, tiles, ids.shape[1], lora=stage.lora)["total"]),
    }


stages = {name: get_stage(name, "tiny") for name in ("stage1", "stage1_5", "stage2", "finetune_full")}
stages["finetune_lora"] = get_stage("finetune_lora", "tiny")
measured = {name: measure_stage(stage) for name, stage in stages.items()}

print(f"{'stage':15s}{'state bytes meas.':>18s}{'planned':>10s}{'activ. meas.':>14s}{'planned':>10s}"
      f"{'FLOPs meas.':>13s}{'planned':>13s}  losses")
for name, m in measured.items():
    (s_meas, s_plan), (a_meas, a_plan), (f_meas, f_plan) = m["state"], m["activations"], m["flops"]
    print(f"{name:15s}{sum(s_meas.values()):>18,}{sum(s_plan.values()):>10,.0f}{a_meas:>14,}{a_plan:>10,}"
          f"{f_meas:>13,}{f_plan:>13,.0f}  {m['losses'][0]:.3f} -> {m['losses'][-1]:.3f}")

# %% [markdown]
# The checks behind the table:
#
# - **Weights, gradients and optimizer states** agree to the byte, component by component.
#   Frozen towers have no gradients and no moments, and LoRA adds only its adapters.
# - **FLOPs** agree exactly, except for LoRA, which is within 5%. The planner does not model
#   the partial backward of the first adapted layer.
# - **Activations** agree within 10%.
#
# `tests/test_planner.py` checks the same things in bf16, with gradient checkpointing, and
# for every formula on its own.

# %%
for name, m in measured.items():
    s_meas, s_plan = m["state"]
    assert s_meas == s_plan, (name, s_meas, s_plan)
    f_meas, f_plan = m["flops"]
    assert f_meas == f_plan if stages[name].lora is None else abs(f_meas - f_plan) <= 0.05 * f_meas, name
    a_meas, a_plan = m["activations"]
    assert abs(a_meas - a_plan) <= 0.10 * a_meas, (name, a_meas, a_plan)
    assert m["losses"][-1] < m["losses"][0], name  # two steps of AdamW lower the loss on the same sample
print("planner == measured: state bytes exact, FLOPs exact (LoRA within 5%), activations within 10%")

# %% [markdown]
# ## How to launch a run
#
# `minivl train CONFIG` runs one stage from a YAML file. The file names the model (a preset
# or a checkpoint), the data (an InternVL meta JSON, chapter 6) and the stage (the values of
# `get_stage`; `tests/test_stages.py` checks that the two agree). The same command runs on
# one CPU, one GPU or many GPUs. For many GPUs, `accelerate launch` starts one process per
# GPU and reads the distribution strategy from a config file:
#
# ```bash
# # one GPU (or a CPU)
# minivl train configs/internvl2_5_1b/finetune_lora.yaml
# # 8 GPUs, DeepSpeed ZeRO-1: the InternVL 2.5 setting for 1B-8B
# accelerate launch --config_file configs/accelerate/zero1.yaml -m minivl train configs/internvl2_5_1b/stage2.yaml
# # 8 GPUs, ZeRO-3, as for 26B and up; or PyTorch FSDP, or plain DDP
# accelerate launch --config_file configs/accelerate/zero3.yaml -m minivl train configs/internvl2_5_8b/stage2.yaml
# accelerate launch --config_file configs/accelerate/fsdp.yaml -m minivl train configs/internvl2_5_8b/stage2.yaml
# accelerate launch --config_file configs/accelerate/ddp.yaml -m minivl train configs/internvl2_5_1b/stage2.yaml
# ```
#
# For several machines, set `num_machines`, `machine_rank` and the main process's address in
# the Accelerate file, or generate one with `accelerate config`. The files, as they are in
# the repository:

# %%
from pathlib import Path

repo = next((p for p in (Path.cwd(), *Path.cwd().parents) if (p / "configs" / "accelerate").is_dir()), None)
if repo is None:
    print("configs/ not found: clone https://github.com/minivl/minivl to get the launch files")
else:
    for rel in ("configs/accelerate/zero1.yaml", "configs/accelerate/fsdp.yaml", "configs/internvl2_5_1b/stage2.yaml"):
        print(f"---- {rel}\n{(repo / rel).read_text()}")

# %% [markdown]
# The three strategies differ in what each GPU holds:
#
# - **DDP** (`ddp.yaml`, PyTorch DistributedDataParallel) keeps a full copy of the model,
#   gradients and optimizer on every GPU, and averages the gradients with an all-reduce after
#   backward. It is the fastest when the model fits, and it is what `recommend` tries first.
# - **FSDP** (`fsdp.yaml`, PyTorch Fully Sharded Data Parallel) shards parameters, gradients
#   and optimizer states over the GPUs, and gathers one wrapped layer (a ViT or decoder
#   layer) at a time for its forward and backward. The planner counts it as ZeRO-3.
# - **DeepSpeed ZeRO** (`zero1.yaml`, `zero3.yaml`) does the same sharding in three
#   selectable stages, and is what the official InternVL scripts use. Stage 1 costs almost no
#   extra communication, while stage 3 adds a gather of every layer's weights in forward and
#   in backward.
#
# The loop itself does not change: `minivl.train.trainer.train` wraps model and optimizer with
# `accelerator.prepare`. The weighted loss (square-averaged in the packed stages, a token mean
# in the unpacked fine-tuning recipes) stays exact across ranks because its denominator is
# all-reduced (chapter 9).
#
# ## A Colab recipe: InternVL2.5-1B with LoRA on a real data set
#
# The recipe fine-tunes the released `OpenGVLab/InternVL2_5-1B` with LoRA (r = 16 on the
# LLM's seven projections, the official `finetune_lora` preset) on the
# [ai2d subset of the_cauldron](https://huggingface.co/datasets/HuggingFaceM4/the_cauldron):
# diagram questions with multiple-choice answers. On Colab, pick a GPU runtime and set
# `MINIVL_SCALE=gpu` (`import os; os.environ["MINIVL_SCALE"] = "gpu"`) before running the
# cells. At `cpu` and `smoke` scale the same four steps run on a tiny random MiniVL, saved in
# the same official layout, and on the synthetic suite saved in the_cauldron's row layout.
# Only the inputs differ, so the tests exercise the code path the GPU recipe takes.
#
# First, the plan for this GPU. It picks the largest micro-batch that fits, out of 4, 2 and 1.
# On a T4 the plan assumes fp16, because the T4 has no bf16 tensor cores. The recipe has been
# planned for a T4 but not run on one, so an L4 or A100 runtime is the safer choice.

# %%
import shutil

from minivl.scale import default_device, get_scale, pick

scale = get_scale()
lora_stage = get_stage("finetune_lora", "1b")
gpu_name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
card = next((k for k in ("T4", "L4", "A100-80GB", "A100-40GB", "H100-80GB") if k.split("-")[0] in gpu_name), "T4")
dtype = "fp16" if card == "T4" else "bf16"
# the largest micro-batch that fits; gradient accumulation keeps 8 samples per optimizer step
for micro_batch in (4, 2, 1):
    colab_plan = plan("internvl2_5_1b", lora_stage, 1, card, tiles_per_sample=7, tokens_per_sample=2048,
                      dtype=dtype, micro_batch=micro_batch, num_samples=2000)
    if colab_plan.fits:
        break
print(f"GPU here: {gpu_name}; planning for {card}")
print(f"InternVL2.5-1B LoRA, micro-batch {micro_batch} x {8 // micro_batch} accumulation: "
      f"{colab_plan.memory['total'] / GB:.1f} GB of {colab_plan.gpu.mem_gb:g} GB, "
      f"{colab_plan.seconds_per_epoch / 60:.0f} min per 2,000 samples at 40% MFU")
assert colab_plan.fits

# %% [markdown]
# ### Step 1: the checkpoint
#
# At `gpu` scale this is the hub id. `MiniVL.from_pretrained` downloads the official layout
# (InternViT-300M + MLP + Qwen2.5-0.5B) and maps its weights onto minivl's modules
# (chapter 5). Elsewhere, `tiny_base_checkpoint` writes a tiny MiniVL in that same official
# layout, next to a tokenizer trained on the data.

# %%
import datasets

from minivl.data.synthetic import generate_suite
from minivl.train.recipes import (
    HUB_CHECKPOINT,
    hub_to_meta,
    suite_as_cauldron,
    tiny_base_checkpoint,
    write_run_config,
)

datasets.disable_progress_bars()
work = Path("runs") / "13_scaling_up" / scale  # relative to the notebook's folder
if scale == "gpu":
    base = HUB_CHECKPOINT
else:
    suite = generate_suite(work / "suite", scale=scale, splits=("train",), tasks=("shape_qa", "chart"))
    base = tiny_base_checkpoint(work / "base", suite["meta"]["train"], preset=pick(smoke="smoke", cpu="tiny", gpu=""))
model = MiniVL.from_pretrained(base)
print(f"{base}: " + ", ".join(f"{k} {v['total']:,}" for k, v in model.trainable_parameter_summary().items()))
print(f"image {model.config.vision.image_size} px, {model.num_image_token} tokens per tile, "
      f"<IMG_CONTEXT> id {model.config.image_token_id}")

# %% [markdown]
# ### Step 2: the data, from the Hub to InternVL records
#
# `hub_to_meta` loads the data set with `datasets`, maps each row with
# `minivl.data.hub.map_cauldron` (chapter 7) and writes `records.jsonl`, the images and a
# meta JSON. With `streaming=True` only the first `limit` rows are downloaded. The local
# stand-in is a `datasets` folder with the same columns (`images`, `texts`), written by
# `suite_as_cauldron`.

# %%
if scale == "gpu":
    source, load_kwargs = "HuggingFaceM4/the_cauldron", {"name": "ai2d", "streaming": True}
else:
    source, load_kwargs = suite_as_cauldron(suite["meta"]["train"], work / "cauldron"), {}
limit = pick(smoke=8, cpu=64, gpu=2000)
meta = hub_to_meta(source, work / "data", mapper="cauldron", limit=limit, max_dynamic_patch=6, **load_kwargs)
print(meta.read_text())

# %%
import json

records = [json.loads(line) for line in (meta.parent / "records.jsonl").read_text().splitlines()]
print(f"{len(records)} records; the first:")
print(json.dumps(records[0], indent=1)[:600])
assert len(records) == limit and records[0]["conversations"][0]["value"].startswith("<image>\n")

# %% [markdown]
# ### Step 3: a run config, and training
#
# The YAML names the checkpoint, the meta JSON and the `finetune_lora` preset, with overrides
# for this run's length. The `size` is `1b` at GPU scale and `tiny` otherwise. At `gpu` scale
# the run is one epoch of the 2,000 samples: 8 samples per optimizer step (the micro-batch the
# plan above picked, times gradient accumulation) make 250 steps. `run_training` is exactly what `minivl train run.yaml` runs. It loads the model,
# wraps the LLM with LoRA adapters and trains. At the end it merges the adapters into the
# weights and saves model and tokenizer to `run/final`.

# %%
from minivl.train.run import run_training
from minivl.train.stages import RunConfig

overrides = pick(smoke=dict(max_steps=2, batch_size=2, max_dynamic_patch=2),
                 cpu=dict(max_steps=24, batch_size=4, max_dynamic_patch=2),
                 # a free Colab runtime has 2 vCPUs: 2 DataLoader workers, not the preset's 4
                 gpu=dict(max_steps=250, batch_size=micro_batch, grad_accum=8 // micro_batch, num_workers=2))
shutil.rmtree(work / "run", ignore_errors=True)  # a fresh run (no resuming from an earlier one)
config = write_run_config(work / "run.yaml", base, meta, work / "run", preset="finetune_lora",
                          size="1b" if scale == "gpu" else "tiny", **overrides)
print(config.read_text())
run = RunConfig.from_yaml(config)
print(f"LoRA r={run.stage.lora.r} alpha={run.stage.lora.alpha} on the {run.stage.lora.target}, lr {run.stage.lr:g}, "
      f"{run.stage.max_steps} steps of {run.stage.batch_size} x {run.stage.grad_accum} samples, "
      f"device {default_device()}")

# %%
result = run_training(run, progress=False)
history = [json.loads(line) for line in (work / "run" / "log.jsonl").read_text().splitlines()]
print(f"{result['steps']} steps, loss {history[0]['loss']:.3f} -> {history[-1]['loss']:.3f}")
assert result["steps"] == run.stage.max_steps == len(history)

# %%
fig, ax = plt.subplots(figsize=(5.5, 3))
ax.plot([r["step"] for r in history], [r["loss"] for r in history], marker="o", ms=3)
ax.set(xlabel="optimizer step", ylabel=f"loss ({run.stage.loss_reduction} average)",
       title=f"LoRA fine-tuning ({scale} scale)")
plt.tight_layout()
plt.show()

# %% [markdown]
# The merged model has exactly the base checkpoint's weight names, so it loads anywhere the
# base does. LoRA on the LLM leaves the ViT and the projector untouched, which we check.

# %%
tuned = MiniVL.from_pretrained(result["final_model"])
before, after = model.state_dict(), tuned.state_dict()
changed = sorted({k.split(".")[0] for k in after if not torch.equal(after[k].to(before[k].dtype), before[k])})
print("towers whose weights changed:", changed)
assert set(after) == set(before) and changed == ["language_model"]

# %% [markdown]
# ### Step 4: chat with the result
#
# `minivl.eval.inference.chat_command` is the `minivl chat` command: it loads the model and tokenizer
# from the folder, tiles the image (chapter 1) and answers. At `gpu` scale you should see an
# ai2d answer. At `cpu` scale the tiny model has had 24 LoRA steps from random weights, so its
# answer is not meaningful. The cell checks the plumbing, not the quality.

# %%
from minivl.eval.inference import chat_command
from minivl.data.records import read_meta

image = next(iter(read_meta(meta).values())).image_path(records[0]["image"])
question = records[0]["conversations"][0]["value"].removeprefix("<image>\n")
print("Q:", question[:300])
answers = chat_command(result["final_model"], [image], question, max_num=pick(smoke=2, cpu=2, gpu=6),
                       max_new_tokens=pick(smoke=4, cpu=8, gpu=64), stream=False)
print("reference:", records[0]["conversations"][1]["value"][:200])
assert len(answers) == 1

# %% [markdown]
# `minivl.train.recipes.finetune_on_hub_dataset(base, source, out_dir, max_steps=...)` runs
# steps 2 and 3 in one call. The same four steps also work for LLaVA-style data sets
# (`mapper="llava"`) and for MMMU-style multiple choice (`mapper="mmmu"`).
#
# ## The GPU benchmark
#
# `benchmarks/gpu_train.py` measures what the planner assumes. It builds the InternVL2.5-1B
# architecture with random weights on one GPU and trains it on synthetic packed rows shaped
# like stage 2: 16,384 tokens, 48 tiles of 448 px and 8 samples per row, with packed
# attention and gradient checkpointing. It uses bf16 weights with fp32 master weights and
# fp32 AdamW. It reports tokens per second, the peak memory next to the planner's estimate,
# and the model FLOPs utilisation:
#
# $$\mathrm{MFU} = \frac{\text{model FLOPs per step}}{\text{step time} \times \text{peak FLOP/s}},$$
#
# The model FLOPs are `flops_per_sample`: forward and backward of every matmul and the
# attention. Gradient-checkpointing recompute is left out, because it is hardware work, not
# model work. The peak is 989 TFLOP/s, the dense bf16 tensor-core rate of an H100 SXM. So
# 40% MFU, the planner's default, means about 400 TFLOP/s of useful work.
#
# `--dry-run` runs on any machine. It builds the model on the meta device, prints the plan
# of the benchmark's own configuration, and rehearses two steps of the same loop on the smoke
# model on the CPU:

# %%
import subprocess

if repo is not None and (repo / "benchmarks" / "gpu_train.py").is_file():
    proc = subprocess.run([sys.executable, "benchmarks/gpu_train.py", "--dry-run"], cwd=repo, capture_output=True,
                          text=True, timeout=600)
    print(proc.stdout[-4000:])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "CPU rehearsal" in proc.stdout
else:
    print("benchmarks/ not found: clone the repository to run the benchmark")

# %% [markdown]
# On a CUDA machine, `python benchmarks/gpu_train.py` takes one to two minutes and writes
# `gpu_train.json` to `$OUT` when that is set. Comparing its measured MFU with the planner's
# 40% turns every time estimate in this chapter into a measured one. No GPU measurement is
# committed with this chapter: the outputs above come from a CPU.
#
# ## Measured result
#
# On the smoke model, trained for two steps in five stage configurations (stage 1, 1.5 and
# 2, full fine-tuning, LoRA), the planner predicted:
#
# - weights, gradients and optimizer states **to the byte**;
# - the forward and backward FLOPs **exactly**, and within 5% with LoRA;
# - the activations kept for backward **within 10%**.
#
# The same formulas reproduce the parameter counts of Table 2 for all seven InternVL 2.5
# models. With these formulas, the planner recommends the ZeRO stages InternVL 2.5 used: ZeRO-1
# for full 8B training on 80 GB cards, and ZeRO-3 for 26B. It also says that LoRA on 1B fits
# a free 16 GB T4.
#
# ## Summary
#
# - Scaling up changes sizes, not code. Packed rows are 16,384 tokens and 48 tiles, bf16 and
#   gradient checkpointing are on, and 512 GPUs each hold one row. The values come from the
#   same `get_stage` presets that the `cpu` scale uses.
# - Mixed-precision AdamW costs 16 bytes per trainable parameter. ZeRO-1/2/3 shard 12, 14,
#   then all 16 of them over the GPUs. Activations grow with the tokens per row. At 16k tokens
#   the fp32 logits over Qwen2.5's 151k vocabulary are the largest single item.
# - `plan` and `recommend` turn a model, a stage and a GPU into memory per GPU, step time and
#   epoch time. The formulas agree with measured tensors and FLOP counts.
# - `minivl train CONFIG` under `accelerate launch` runs DDP, FSDP or DeepSpeed ZeRO from one
#   config file. `minivl.train.recipes` fine-tunes InternVL2.5-1B with LoRA on a Hub data set
#   in four calls.
#
# ## Exercises
#
# 1. **Easy.** Plan InternVL2.5-2B LoRA on a T4 with `plan("internvl2_5_2b", ...)`. Does it fit
#    with 7 tiles and 2,048 tokens? What is the largest `tokens_per_sample` that fits?
# 2. **Medium.** Turn gradient checkpointing off (`gradient_checkpointing=False`) in the 1B
#    stage-2 plan on one H100. Which memory line grows, and by how much? Then measure the
#    same effect on the smoke model with `LiveTensors` (see `tests/test_planner.py`).
# 3. **Hard.** The 78B stage 2 uses Liger's fused linear cross-entropy. Compare
#    `plan("internvl2_5_78b", ..., strategy="zero3")` with and without `chunked_loss=True`
#    on 512 A100-80GB, and explain which memory line makes the difference. Then write the
#    chunked loss for MiniVL and check its memory with `saved_bytes`.
