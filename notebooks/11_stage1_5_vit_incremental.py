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
# # 11. Stage 1.5: ViT incremental learning, and reusing the ViT with a larger LLM
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/minivl/minivl/blob/main/notebooks/11_stage1_5_vit_incremental.ipynb)
#
# Stage 1 trained only the projector `mlp1`: the ViT kept the features it had. InternVL 2.5
# adds an optional **stage 1.5** in which the ViT trains too (with the projector), while the
# LLM stays frozen. The ViT then learns what the LLM needs from it: small text, charts,
# documents, things that are rare in web-scale image-text data (report section 3.2).
#
# Stage 1.5 is expensive: the ViT's backward pass is added to every step. The report's
# answer is **progressive scaling** (section 3.3). Run stage 1.5 once with a *small* LLM,
# then move the trained ViT to the *larger* LLMs and skip stage 1.5 there. InternViT-300M-V2.5
# comes from the 8B run and serves the 1B, 2B and 4B models. InternViT-6B-V2.5 comes from the
# 26B run and serves 38B and 78B.
#
# This chapter measures both claims at `cpu` scale. The code lives in
# `minivl/train/transfer.py`; the stage recipes in `minivl/train/stages.py`.

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
# - the three stage recipes side by side: what trains, at which learning rate, and what one
#   step costs in FLOPs (from the planner's formulas);
# - `transfer_vision`: a ViT trained with a small LLM, attached to a larger LLM with a fresh
#   projector, checked tensor by tensor;
# - the measured experiment, with two LLMs warmed up on the synthetic suite, LLM-S
#   (Qwen2, 128 wide x 2 layers) and LLM-L (256 wide x 4 layers):
#   - **(a)** a fresh ViT with LLM-S: stage 1, then stage 1.5;
#   - **(b)** the ViT of (a) moved to LLM-L: stage 1 only;
#   - **(c)** the baseline: LLM-L with a fresh ViT, stage 1 then stage 1.5, the same recipe;
# - accuracy before and after stage 1.5, and accuracy against cumulative compute for (b)
#   and (c), with the compute of (a) counted or treated as already paid.
#
# ## The idea
#
# The picture shows which tower trains in each stage, and the shortcut progressive scaling
# takes.

# %%
import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch, Rectangle

fig, ax = plt.subplots(figsize=(10, 3.6))
ax.set_xlim(0, 10)
ax.set_ylim(-0.9, 4.2)
ax.axis("off")
columns = [
    (0.2, "stage 1 (LLM-S)", {"ViT": False, "MLP": True, "LLM-S": False}),
    (2.7, "stage 1.5 (LLM-S)", {"ViT": True, "MLP": True, "LLM-S": False}),
    (5.6, "stage 1 (LLM-L)", {"ViT": False, "MLP": True, "LLM-L": False}),
    (8.1, "stage 2 (LLM-L)", {"ViT": True, "MLP": True, "LLM-L": True}),
]
for x, title, towers in columns:
    ax.text(x + 0.85, 3.9, title, ha="center", fontsize=10, weight="bold")
    for j, (name, trains) in enumerate(towers.items()):
        y = 0.4 + j * 1.1
        ax.add_patch(Rectangle((x, y), 1.7, 0.85, facecolor="tab:orange" if trains else "lightgrey",
                               edgecolor="black"))
        ax.text(x + 0.85, y + 0.42, name + (" (trains)" if trains else " (frozen)"), ha="center", va="center",
                fontsize=9)
ax.add_patch(FancyArrowPatch((4.4, 0.82), (5.6, 0.82), arrowstyle="-|>", mutation_scale=18, color="tab:blue",
                             linewidth=2))
ax.text(5.0, -0.75, "progressive scaling: transfer the ViT, new MLP, no stage 1.5 for LLM-L", ha="center",
        fontsize=9, color="tab:blue")
plt.show()

# %% [markdown]
# In numbers, from the report's Table 3 (training tokens): InternVL2.5-8B ran stage 1 on
# ~22B tokens, stage 1.5 on ~76B and stage 2 on ~44B. The 78B model ran stage 1 on ~76B
# and stage 2 on ~44B: the "about 120B tokens" the report compares with Qwen2-VL's 1.4T.
# Its ViT came from the 26B model's stage 1.5, ~146B tokens that are not part of the 120B.
# Whether that cost counts depends on the question asked: it is paid once and shared by the
# 38B and 78B models. We will show both ways of counting.
#
# ## The stage recipes and what a step costs
#
# `get_stage(name, size)` returns the official values per model size. The `tiny` presets
# used at `cpu` scale keep what trains and what is frozen, and use higher learning rates
# for runs of a few hundred steps.

# %%
from minivl.train.stages import get_stage

rows = []
for name in ("stage1", "stage1_5", "stage2"):
    official, tiny = get_stage(name, "8b"), get_stage(name, "tiny")
    trains = "+".join(k for k, v in (("ViT", official.train_vision), ("MLP", official.train_projector),
                                     ("LLM", official.train_llm)) if v)
    rows.append((name, trains, official.lr, official.drop_path_rate, official.grad_accum, tiny.lr))
print(f"{'stage':<10}{'trains':<14}{'lr (8B)':>9}{'drop path':>11}{'grad accum':>12}{'lr (tiny)':>11}")
for r in rows:
    print(f"{r[0]:<10}{r[1]:<14}{r[2]:>9.0e}{r[3]:>11}{r[4]:>12}{r[5]:>11.0e}")
assert [r[1] for r in rows] == ["MLP", "ViT+MLP", "ViT+MLP+LLM"]

# %% [markdown]
# What does a step cost? The planner (chapter 13) counts the FLOPs of one training sample
# per tower: `2 x weights x tokens` forward for every matrix multiply, plus attention. The
# backward pass costs 2 more for a tower that trains (input and weight gradients) and 1 more
# for a frozen tower the gradient must still cross. In stage 1 the LLM is frozen, but the
# gradient has to flow back through it to reach `mlp1`. In stage 1.5 the ViT's backward is
# added. `training_flops` multiplies the per-sample count by the batch and the steps.
#
# Here is a typical packed row of the `cpu` runs below: about 20 tiles of 112 px and 950
# tokens in 10 samples (shape scenes are one tile each, so the 1,024-token cap fills before
# the 24-tile cap). Each sample attends only to itself (chapter 8), so attention spans about
# 100 tokens, not the whole row.

# %%
from minivl.config import MiniVLConfig, VisionConfig
from minivl.scale import get_scale, pick
from minivl.train.planner import flops_per_sample
from minivl.train.transfer import TRANSFER_RECIPES, training_flops
from minivl.train.warmstart import llm_config

scale = get_scale()
recipe = TRANSFER_RECIPES[scale]
vision = VisionConfig.tiny(hidden_size=recipe.vision_width, num_hidden_layers=recipe.vision_layers,
                           num_attention_heads=4, intermediate_size=4 * recipe.vision_width)
configs = {size: MiniVLConfig(vision=vision, llm=llm_config(size, 1000)) for size in ("S", "L")}
tiles, tokens, span = 20, 950, 100
cost = {}
for size, cfg in configs.items():
    for name in ("stage1", "stage1_5"):
        f = flops_per_sample(cfg, get_stage(name, "tiny"), tiles, tokens, attention_span=span)
        cost[size, name] = f["total"]
        print(f"LLM-{size} {name:<9} vision {f['vision'] / 1e9:6.2f}  projector {f['projector'] / 1e9:5.2f}  "
              f"llm {f['llm'] / 1e9:6.2f}  total {f['total'] / 1e9:6.2f} GFLOPs per row")
print(f"stage 1.5 / stage 1 per step: LLM-S {cost['S', 'stage1_5'] / cost['S', 'stage1']:.2f}x, "
      f"LLM-L {cost['L', 'stage1_5'] / cost['L', 'stage1']:.2f}x")
print(f"one LLM-L stage-1 step costs {cost['L', 'stage1'] / cost['S', 'stage1']:.1f}x an LLM-S stage-1 step")
assert training_flops(configs["L"], get_stage("stage1", "tiny"), tiles, tokens, steps=10,
                      attention_span=span) == 10 * cost["L", "stage1"]

# %% [markdown]
# Stage 1.5 costs more per step than stage 1 because the ViT's backward is added, and every
# step on LLM-L costs several times a step on LLM-S. So stage 1.5 is cheapest when run with
# the small LLM. That is the arithmetic behind progressive scaling. The question the
# experiment answers is whether the ViT trained with LLM-S is still useful to LLM-L.
#
# ## Moving a ViT to another LLM
#
# `transfer_vision(small_model, large_llm, tokenizer)` returns a model made of three parts:
#
# - a **copy** of the small model's InternViT. Training the new model never changes the old one;
# - a **fresh** `mlp1` sized for the large LLM's width, as InternVL does. Stage 1 on the large
#   LLM trains it. `reset_projector=False` keeps the old one, but only when both LLMs have
#   the same width;
# - the large LLM itself.
#
# It fails loudly when the ViT does not fit. The checks cover width, depth, tile size, patch
# size and pixel-unshuffle ratio, and an `<IMG_CONTEXT>` id that differs from the one the
# small model was trained with.
#
# First the two LLMs. Both are Qwen2 models warmed up with next-token prediction on the
# suite's conversations, with the images left out (chapter 10). They share the tokenizer. The
# suite, the tokenizer and LLM-S are the ones chapters 10 and 12 use. Everything is cached, so
# a second run loads it.

# %%
import contextlib
import io
import time

from minivl.scale import cache_dir
from minivl.train.transfer import prepare_llms

t = time.perf_counter()
with contextlib.redirect_stdout(io.StringIO()):  # the step log names cache folders on this machine
    prepared = prepare_llms(cache_dir("chapters", scale), scale)
ws, tok = prepared["workspace"], prepared["workspace"].tokenizer
llm_s, llm_l = prepared["llm_small"], prepared["llm_large"]
for name, info in (("LLM-S", prepared["info_small"]), ("LLM-L", prepared["info_large"])):
    print(f"{name}: {info['parameters']:,} parameters, warm-start steps {info['key']['steps']}, "
          f"final text loss {info['final_loss']:.3f}")
print(f"ready in {time.perf_counter() - t:.0f} s")
assert prepared["info_large"]["parameters"] > 4 * prepared["info_small"]["parameters"]

# %% [markdown]
# Now the transfer on a fresh small model. The small model's ViT stands in for a trained
# one. The assertions are the contract: equal ViT tensors in separate storage, a fresh
# projector at the large width, and the large LLM itself.

# %%
import copy

import torch

from minivl.model import MiniVL
from minivl.text.tokenizer import image_token_id
from minivl.train.trainer import apply_stage_freezing
from minivl.train.transfer import transfer_vision

torch.manual_seed(0)
small = MiniVL(configs["S"].replace(llm=llm_config("S", len(tok)), image_token_id=image_token_id(tok)),
               language_model=copy.deepcopy(llm_s))
large = transfer_vision(small, copy.deepcopy(llm_l), tok)
for key, value in small.vision_model.state_dict().items():
    assert torch.equal(value, large.vision_model.state_dict()[key])
assert large.mlp1[1].weight.shape == (llm_l.config.hidden_size, 4 * recipe.vision_width)
print(f"new mlp1: LayerNorm({large.mlp1.in_features}) -> Linear({large.mlp1.in_features}, {large.mlp1.out_features})"
      f" -> GELU -> Linear({large.mlp1.out_features}, {large.mlp1.out_features})")
counts = apply_stage_freezing(large, get_stage("stage1", "tiny"))
print({k: f"{v:,}" for k, v in counts.items() if k.endswith("trainable")})
assert counts["trainable"] == counts["projector_trainable"] > 0  # stage 1 on LLM-L: only mlp1 trains

# %%
try:
    wide = MiniVL(MiniVLConfig(vision=VisionConfig.tiny(hidden_size=2 * recipe.vision_width, num_attention_heads=4),
                               llm=llm_config("L", len(tok)), image_token_id=image_token_id(tok)),
                  language_model=copy.deepcopy(llm_l))
    transfer_vision(small, wide, tok)
except ValueError as err:
    print(err)

# %% [markdown]
# ## The experiment
#
# All three runs use the same data: the suite's `shape_qa` task (count, colour, position
# of shapes) and its `chart` task (read bar and line charts and forms). Rows are packed with
# 1,024 tokens and up to 24 tiles, as in chapter 8. The stage recipes are the `tiny`
# presets. The LLMs stay frozen throughout, since stages 1 and 1.5 never train them.
# Accuracy is greedy exact match (`shape_qa`) and ChartQA relaxed accuracy (`chart`) on the
# first 60 held-out test questions of each task, measured every few steps. The compute at
# each point is the sum of `batch_flops` over the packed rows the run really drew, with
# attention counted per sample. Seconds are training time without the evaluations.
#
# The result is cached. The first `cpu` run trains for several minutes; later runs load it.

# %%
from minivl.eval.suite import majority_baseline
from minivl.train.transfer import format_compute_table, progressive_scaling_demo

t = time.perf_counter()
demo = progressive_scaling_demo(tok, ws.train_meta, ws.test_meta, llm_s, llm_l, recipe=recipe,
                                cache=cache_dir("ch11", scale) / "progressive_scaling.json")
print(f"{time.perf_counter() - t:.0f} s here ({demo['seconds']:.0f} s when it was computed)")
tasks = list(recipe.eval_tasks)
print(format_compute_table(demo["table"], tasks))
print("always the most common answer:",
      {k: f"{v:.1%}" for k, v in majority_baseline(ws.test_meta, tasks).items()})
for key, run in demo["runs"].items():
    for st in run["stages"]:
        print(f"{key:<10} {st['stage']:<9} {st['steps']:>4} steps {st['samples']:>6} samples "
              f"{st['tiles'] / st['batches']:5.1f} tiles and {st['tokens'] / st['batches']:5.0f} tokens per row, "
              f"{st['flops'] / st['batches'] / 1e9:6.2f} GFLOPs per row, final loss {st['final_loss']:.3f}")

# %% [markdown]
# ### Stage 1.5: what the ViT learns
#
# Look first at the two runs that have a stage 1.5: (a) with LLM-S and (c) with LLM-L.
# Compare the accuracy at the end of stage 1 (frozen random ViT, trained projector) with
# the accuracy at the end of stage 1.5.

# %%
import numpy as np


def at_end(run, stage):
    return [p for p in run["curve"] if p["stage"] == stage][-1]


fig, ax = plt.subplots(figsize=(7, 3.2))
labels, width = [], 0.2
for i, key in enumerate(("a_small", "c_scratch")):
    run = demo["runs"][key]
    for j, stage in enumerate(("stage1", "stage1_5")):
        point = at_end(run, stage)
        pos = np.arange(len(tasks)) + (2 * i + j) * width
        ax.bar(pos, [point[t] for t in tasks], width, label=f"{'LLM-S' if i == 0 else 'LLM-L'} after {stage}")
        print(f"{key:<10} after {stage:<9}" + "  ".join(f"{t} {point[t]:6.1%}" for t in tasks))
ax.set_xticks(np.arange(len(tasks)) + 1.5 * width, tasks)
ax.set(ylabel="held-out accuracy", ylim=(0, 1), title="before and after stage 1.5 (LLM frozen)")
ax.legend(fontsize=8)
plt.show()
before, after = at_end(demo["runs"]["a_small"], "stage1"), at_end(demo["runs"]["a_small"], "stage1_5")
gain = {t: after[t] - before[t] for t in tasks}
print("stage 1.5 gain with LLM-S:", {t: f"{g:+.1%}" for t, g in gain.items()})
n = recipe.eval_per_task or 0
if n:  # the sampling noise of one accuracy measured on n questions
    print(f"standard error of one accuracy near 30% on {n} questions: {(0.3 * 0.7 / n) ** 0.5:.1%}")

# %% [markdown]
# ### Transferred ViT vs ViT trained from scratch, per unit of compute
#
# The curves below put the large-LLM runs on one axis of cumulative training FLOPs:
#
# - (c) from scratch, stage 1 then stage 1.5. The dotted line marks where stage 1.5 starts;
# - (b) with the transferred ViT, stage 1 only, counted two ways. The solid line treats the
#   ViT as already paid for, as InternVL 2.5 does for its 1B-4B and 38B-78B models. The
#   dashed line adds all the compute of (a).

# %%
fig, axes = plt.subplots(1, 2, figsize=(12, 4))
from minivl.train.transfer import plot_progressive_scaling

plot_progressive_scaling(demo, metric="all", x="flops", ax=axes[0])
plot_progressive_scaling(demo, metric="all", x="seconds", ax=axes[1])
axes[1].set_title("the same, against training seconds")
plt.tight_layout()
plt.show()

rows = {r["run"]: r for r in demo["table"]}
b, b_paid, c = rows["(b) transfer, ViT reused"], rows["(b) transfer + cost of (a)"], rows["(c) LLM-L from scratch"]
print(f"(b) reaches mean accuracy {b['mean']:.1%} with {b['flops'] / 1e12:.2f} TFLOPs on LLM-L "
      f"({b['flops'] / c['flops']:.0%} of (c)'s compute; {b_paid['flops'] / c['flops']:.0%} counting (a))")
print(f"(c) reaches {c['mean']:.1%} with {c['flops'] / 1e12:.2f} TFLOPs")
assert b["flops"] < c["flops"] and b_paid["flops"] == b["flops"] + rows["(a) LLM-S: stage 1 -> 1.5"]["flops"]

# %% [markdown]
# ## Measured result
#
# Measured on 2 idle CPU cores at `cpu` scale: LLM-S with 0.52M parameters, LLM-L with
# 3.4M, a ViT 64 wide x 4 layers, 100 stage-1 steps and 200 stage-1.5 steps of 1,024-token
# packed rows, and 60 test questions per task. The whole experiment took 166 s (87 s on a
# faster machine).
#
# **The compute accounting is clear-cut.** A row of these runs costs about 15.1 GFLOPs in
# stage 1 on LLM-L and 16.3 in stage 1.5, against 3.1 and 4.3 on LLM-S. Run (b) spent 1.51
# TFLOPs (25 s) on LLM-L. Run (c) spent 4.76 TFLOPs (76 s), so (b) used 32% of (c)'s
# compute. Counting the 1.17 TFLOPs of run (a) that produced its ViT, (b) used 2.68
# TFLOPs, 56% of (c). That is because the stage 1.5 of (a) ran on an LLM 6.5 times smaller.
#
# **The accuracy side shows no transfer effect at this budget.** With the LLM frozen, no
# run learns to read its images (chapter 10 shows that looking is learnt in stage 2, from a
# pretrained ViT):
#
# - Run (a) ends at 30.0% on `shape_qa` and 8.3% on `chart`; its stage 1.5 changed
#   `shape_qa` by +3.3 points and `chart` by -1.7. That 30.0% is mostly the warmed-up
#   LLM-S's answer prior per question type (the warm start read these questions as text),
#   well above the 11.8% of always giving the one most common answer.
# - Run (b) ends at 28.3% / 1.7% and run (c) at 31.7% / 1.7%: on LLM-L both land where (a)
#   does, at the answer prior, with the transferred ViT or without it, and below the
#   most-common-answer level on `chart` (8.8%). The 3-point gap between them on `shape_qa`
#   is well under one standard error of a difference of two such numbers, so it is no
#   evidence either way; nor are their final training losses of stage 1 (1.077 for (b),
#   1.079 for (c)).
#
# With 60 questions the standard error of each number is about 6 points. The runs are too
# short for a frozen LLM of 2 or 4 layers to learn to read the image tokens: each saw 976
# samples in stage 1 and 1,954 in stage 1.5 (9.8 samples per packed row). So the
# measurement cannot confirm or refute the report's claim that the transferred ViT is as
# good as one trained with the large LLM. It does confirm the compute side: the small LLM is
# the cheap place to run stage 1.5. To look for the accuracy effect, give the stages many
# more steps and a stage 2 (a longer `TransferRecipe`, or `TRANSFER_RECIPES["gpu"]` on a
# GPU) and score the whole test split, as the exercises ask.
#
# ## Summary
#
# - Stage 1.5 trains the ViT and the projector against a frozen LLM, with next-token
#   prediction on the same data as stage 1. The ViT adapts its features to what the LLM
#   has to read from them.
# - It is the expensive stage. The ViT's backward is added to each step, and InternVL's 8B
#   run used a doubled batch. So it runs once, with a small LLM.
# - `transfer_vision` moves the trained ViT to a larger LLM with a fresh `mlp1`. Stage 1
#   then trains only that projector. The function checks shapes and the `<IMG_CONTEXT>` id.
# - Compute comparisons depend on what is counted. `FlopMeter` counts the FLOPs of every
#   packed row a run draws. `compute_table` reports the transferred run with and without
#   the cost of producing its ViT.
#
# ## Exercises
#
# 1. **Easy.** Rerun `progressive_scaling_demo` with
#    `dataclasses.replace(recipe, eval_per_task=None, stage1_steps=400, stage1_5_steps=800)`
#    (the whole test split, four times the steps; about half an hour on two cores). Compute
#    the standard error of each accuracy. Which differences are now larger than two
#    standard errors?
# 2. **Medium.** Rerun the transfer with `reset_projector=False` between two LLMs of the same
#    width (two warm starts of `"S"` with different seeds). Does stage 1 start from a higher
#    accuracy than with a fresh projector? Then add `small_text` to the recipe's tasks and
#    compare one tile with dynamic tiling (`evaluate_suite(..., max_num=1)`) before and
#    after stage 1.5.
# 3. **Hard.** The report transfers the ViT and then runs stage 2 on the large LLM. Extend
#    `progressive_scaling_demo` with a short stage 2 for (b) and (c) (`get_stage("stage2",
#    "tiny")`). Check whether the gap between the transferred and the from-scratch ViT
#    grows or shrinks once the LLM trains too.
