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
# # 0. Introduction: InternVL 2.5 from the ground up
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/minivl/minivl/blob/main/notebooks/00_introduction.ipynb)
#
# This book rebuilds **InternVL 2.5** (*Expanding Performance Boundaries of Open-Source
# Multimodal Models with Model, Data, and Test-Time Scaling*, arXiv 2412.05271) one
# component at a time, in a small Python package, `minivl`, that every chapter imports.
# On Colab, the next cell installs it; on your own machine, `make setup` in the repository
# has already done so.

# %%
import sys

if "google.colab" in sys.modules:  # install minivl itself on Colab
    get_ipython().run_line_magic("pip", 'install -q "minivl @ git+https://github.com/minivl/minivl"')

# %% [markdown]
# Every chapter starts by printing what it runs on: versions, device, dtype and the
# **scale** (more on scales below).

# %%
from minivl.scale import print_environment

env = print_environment()

# %% [markdown]
# ## What InternVL 2.5 is and why it matters
#
# InternVL 2.5 (December 2024) is a family of open vision-language models, from 1B to 78B
# parameters. Its largest member was the **first open model above 70 % on MMMU** (70.1 %
# with chain-of-thought), the college-level multimodal reasoning benchmark, putting an
# open model in the range of GPT-4o and Claude 3.5 Sonnet at the time. The report's
# thesis is that the architecture barely changed since InternVL 1.5; what moved the
# numbers was *how* the model is scaled, trained, fed and used at test time:
#
# - **ViT-MLP-LLM.** A vision transformer (InternViT, 300M or 6B parameters) encodes
#   image tiles; a two-layer MLP projects its features into the embedding space of a
#   pretrained LLM (Qwen2.5 or InternLM2.5), which reads image and text tokens together.
# - **Dynamic high resolution.** An image is cut into 1 to 12 tiles of 448 x 448 pixels
#   whose grid matches its aspect ratio, plus a thumbnail; each tile becomes 256 tokens
#   after a 2 x 2 *pixel unshuffle*.
# - **Progressive scaling.** The vision encoder is first trained with a *small* LLM, then
#   moved to larger ones, saving most of the compute of training each pair from scratch.
# - **Data quality.** A filtering pipeline removes repetitive and low-quality samples,
#   which the authors found mattered more than quantity (repetition makes a model loop at
#   inference).
# - **Test-time scaling.** Chain-of-thought prompting and majority voting over several
#   sampled answers raise MMMU scores further.
#
# The figure shows the data flow of one image through the model.

# %%
from minivl.viz import architecture_figure

fig = architecture_figure(num_tiles=6)

# %% [markdown]
# The arithmetic of the figure, computed: a 448 x 448 tile has (448 / 14)^2 = 1024 patches
# of 14 x 14 pixels; pixel unshuffle merges each 2 x 2 block of patches into one token, so
# 1024 x 0.5^2 = 256 tokens reach the LLM per tile.

# %%
# NBVAL_CHECK_OUTPUT
image_size, patch_size, scale_factor = 448, 14, 0.5
patches = (image_size // patch_size) ** 2
tokens_per_tile = int(patches * scale_factor**2)
print(f"{patches} patches -> {tokens_per_tile} tokens per tile")
for tiles in (1, 6 + 1, 12 + 1):
    print(f"{tiles:2d} tiles (thumbnail included): {tiles * tokens_per_tile:5d} image tokens")

# %% [markdown]
# ## The InternVL 2.5 model zoo
#
# All seven sizes share the same recipe (paper Table 2). The three smallest vision towers
# are InternViT-300M; the largest three use InternViT-6B.
#
# | Model | Parameters | Vision encoder | LLM |
# |---|---|---|---|
# | InternVL2.5-1B | 0.9B | InternViT-300M-448px-V2.5 | Qwen2.5-0.5B-Instruct |
# | InternVL2.5-2B | 2.2B | InternViT-300M-448px-V2.5 | internlm2_5-1_8b-chat |
# | InternVL2.5-4B | 3.7B | InternViT-300M-448px-V2.5 | Qwen2.5-3B-Instruct |
# | InternVL2.5-8B | 8.1B | InternViT-300M-448px-V2.5 | internlm2_5-7b-chat |
# | InternVL2.5-26B | 25.5B | InternViT-6B-448px-V2.5 | internlm2_5-20b-chat |
# | InternVL2.5-38B | 38.4B | InternViT-6B-448px-V2.5 | Qwen2.5-32B-Instruct |
# | InternVL2.5-78B | 78.4B | InternViT-6B-448px-V2.5 | Qwen2.5-72B-Instruct |
#
# The two vision encoders differ in more than size (paper Table 1): InternViT-300M has
# width 1024, 24 layers, 16 heads and LayerNorm; InternViT-6B has width 3200, 45 layers,
# 25 heads, RMSNorm and QK-normalisation. Chapter 2 builds both and counts their
# parameters; chapter 5 does the same for whole models.

# %% [markdown]
# ## Three scales, one codebase
#
# Every chapter and every command runs at one of three **scales**, chosen by the
# environment variable `MINIVL_SCALE` (or by `minivl.scale.get_scale("...")` in code):
#
# | scale | where | models | data | budget |
# |---|---|---|---|---|
# | `smoke` | tests and CI | a few layers, width 32-64 | a few synthetic samples | seconds per notebook |
# | `cpu` (default) | your laptop, 2 cores | a tiny VLM that really learns | the synthetic suite | minutes per chapter |
# | `gpu` | Colab or a cluster | real InternVL 2.5 checkpoints | real data sets | a real run |
#
# A scale only picks sizes, step counts and sources; the functions are the same. Code asks
# for a value per scale with `pick`:

# %%
from minivl.scale import SCALES, get_scale, pick

for scale in SCALES:
    steps = pick(smoke=3, cpu=400, gpu=20_000, scale=scale)
    print(f"{scale:>5}: {steps} training steps")
print("active scale:", get_scale())
assert pick(smoke="s", cpu="c", gpu="g", scale="cpu") == "c"

# %% [markdown]
# The outputs you read in the book come from an honest run at `cpu` scale on a 2-core
# CPU: numbers, losses and accuracies are what that run produced, not pasted values. The
# test suite re-runs every notebook at `smoke` scale, and `make notebooks` re-runs them at
# `cpu` scale. To run a chapter at another scale, set the variable before starting Jupyter,
# for example `MINIVL_SCALE=gpu jupyter lab`.
#
# ## How to read this book
#
# Each chapter follows the same skeleton: *what you will build*, the idea (with a figure),
# the code in small cells whose output you can check, a measured result, a summary, and
# exercises (easy, medium, hard). A chapter may rebuild a component step by step to teach
# it, but it then checks its version against the package's with an assertion and uses the
# package from there on: `minivl` is the single source of truth, and what you learn is
# what trains the models.
#
# ## Chapters and the modules that hold their code
#
# The table below is computed from `minivl.chapters`; a chapter is *written* once all its
# modules exist in this installation.

# %%
from minivl.chapters import chapter_map

rows = chapter_map()
width = max(len(r["title"]) for r in rows)
for r in rows:
    print(f"{r['chapter']}  {r['title']:<{width}}  {r['status']:<11}  {r['modules']}")

# %% [markdown]
# ## Summary
#
# - InternVL 2.5 is a ViT-MLP-LLM model: InternViT encodes 448-pixel tiles, pixel
#   unshuffle turns 1024 patches into 256 tokens, an MLP maps them into an LLM.
# - Its gains come from scaling strategy, data quality and test-time scaling more than
#   from architectural change; the rest of the book rebuilds each of these.
# - One setting, `MINIVL_SCALE`, moves every chapter between CI (`smoke`), a laptop
#   (`cpu`) and real checkpoints (`gpu`).
#
# ## Exercises
#
# 1. *Easy.* How many image tokens does a 1344 x 896 image produce with `max_num=12`
#    tiles and a thumbnail? (Hint: its aspect ratio is 3:2.)
# 2. *Medium.* InternVL2.5-78B's context is 16,384 tokens in training. How many
#    448-pixel tiles fit, leaving 2,048 tokens for text?
# 3. *Hard.* The report calls the 300M encoder a distillation of the 6B one. From the
#    widths and depths in Table 1, estimate both parameter counts by hand (attention
#    4C^2 plus MLP 2 x C x 4C per layer) and compare with 0.3B and 5.5B.
