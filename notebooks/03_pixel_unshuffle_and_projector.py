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
# # 3. Pixel unshuffle and the MLP projector
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/minivl/minivl/blob/main/notebooks/03_pixel_unshuffle_and_projector.ipynb)
#
# InternViT (chapter 2) turns a 448 px tile into 1024 patch features. Handing all of them to
# the LLM would make a 12-tile image cost over 13,000 tokens. InternVL first merges every
# 2 x 2 block of neighbouring patches into one token with four times the channels (a
# *pixel unshuffle*, 1024 -> 256 tokens), then maps each token to the LLM's width with a
# small MLP, `mlp1`. Both live in `minivl.projector`.

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
# - `pixel_shuffle(x, 0.5)`: (N, H, W, C) -> (N, H/2, W/2, 4C), first drawn on a grid of
#   numbered patches, then rebuilt from its four reshapes and permutes.
# - The difference between InternVL's `v1` and `v2` orderings (2.5 uses `v2`).
# - The projector `mlp1`: LayerNorm, Linear, GELU, Linear, with its shapes for the tiny and
#   the real models.
# - `extract_feature`: tiles in, LLM-ready image tokens out.
# - The token budget of an image, per tile and for up to 12 tiles plus a thumbnail.
#
# ## The idea
#
# Think of the ViT output as a g x g image whose "pixels" are C-dimensional vectors. The
# pixel unshuffle (also called space-to-depth) cuts it into 2 x 2 blocks and stacks each
# block's four vectors along the channel axis: top-left, top-right, bottom-left,
# bottom-right. The grid shrinks by 2 per side, the width grows by 4, nothing is lost.
# The figure numbers the 16 patches of a 4 x 4 grid row by row and shows which ones each
# output token holds.

# %%
import time
import warnings

import matplotlib.pyplot as plt
import numpy as np
import torch

from minivl.projector import pixel_shuffle

grid = torch.arange(16).reshape(1, 4, 4, 1).float()  # patch numbers as a 1-channel feature
v2 = pixel_shuffle(grid, 0.5, version="v2")  # (1, 4, 4, 1) -> (1, 2, 2, 4)
with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # v1 warns that its output is transposed
    v1 = pixel_shuffle(grid, 0.5, version="v1")

colors = plt.cm.Pastel1(np.arange(4))
block = lambda r, c: (r // 2) * 2 + c // 2  # noqa: E731, which 2x2 block a patch is in

fig, axes = plt.subplots(1, 3, figsize=(11, 3.6))
ax = axes[0]
for r in range(4):
    for c in range(4):
        ax.add_patch(plt.Rectangle((c, 3 - r), 1, 1, color=colors[block(r, c)], ec="k"))
        ax.text(c + 0.5, 3.5 - r, str(r * 4 + c), ha="center", va="center", fontsize=13)
ax.set_title("ViT patches\n4 x 4 grid, C channels each")
for ax, out, name in ((axes[1], v2, "v2 (InternVL 2.5)"), (axes[2], v1, "v1 (transposed)")):
    for i in range(2):
        for j in range(2):
            ids = out[0, i, j].int().tolist()
            ax.add_patch(plt.Rectangle((j * 2, 2 - i * 2), 2, 2, color=colors[block(ids[0] // 4, ids[0] % 4)], ec="k"))
            ax.text(j * 2 + 1, 3 - i * 2, f"{ids[0]:>2} {ids[1]:>2}\n{ids[2]:>2} {ids[3]:>2}", ha="center", va="center", fontsize=13, family="monospace")
    ax.set_title(f"{name}\n2 x 2 tokens, 4C channels each")
for ax in axes:
    ax.set_xlim(0, 4)
    ax.set_ylim(0, 4)
    ax.set_aspect("equal")
    ax.axis("off")
plt.show()

# %% [markdown]
# In `v2` each output token sits where its block was. `v1`, the ordering of InternVL 1.x
# (and still the default of the official config class), puts the top-right block at the
# bottom-left: the merged grid is transposed. A model trained with one ordering sees a
# mirrored layout with the other, which is why the ordering must match the checkpoint.
#
# ## The hand values
#
# With two channels per patch, `torch.arange(32).reshape(1, 4, 4, 2)` gives patch (r, c)
# the values `[2(4r + c), 2(4r + c) + 1]`. Output token (0, 0) must hold patches 0, 1, 4, 5,
# i.e. the channels 0-3 and 8-11.

# %%
# NBVAL_CHECK_OUTPUT
x = torch.arange(32).reshape(1, 4, 4, 2).float()
out = pixel_shuffle(x)
print(tuple(x.shape), "->", tuple(out.shape))
for i in range(2):
    for j in range(2):
        print(f"v2[0,{i},{j}] =", out[0, i, j].int().tolist())
assert out[0, 0, 1].tolist() == [4, 5, 6, 7, 12, 13, 14, 15]
assert out[0, 1, 0].tolist() == [16, 17, 18, 19, 24, 25, 26, 27]

# %% [markdown]
# ## Rebuilding it from reshapes
#
# The official code does it with two views and two permutes. Because patches are stored
# row-major, the first view glues each pair of neighbouring *columns* together; after
# swapping the two grid axes, the second view glues neighbouring *rows*; the last permute
# (`v2` only) swaps the axes back.

# %%
N, Hg, Wg, C = 1, 4, 4, 2
step = x.reshape(N, Hg, Wg // 2, 2 * C)  # (N, H, W, C) -> (N, H, W/2, 2C): column pairs
print("columns merged:", tuple(step.shape), step[0, 0, 0].int().tolist())
step = step.permute(0, 2, 1, 3)  # (N, H, W/2, 2C) -> (N, W/2, H, 2C)
step = step.reshape(N, Wg // 2, Hg // 2, 4 * C)  # (N, W/2, H, 2C) -> (N, W/2, H/2, 4C): row pairs
print("rows merged:   ", tuple(step.shape), "(this is v1)")
step = step.permute(0, 2, 1, 3)  # (N, W/2, H/2, 4C) -> (N, H/2, W/2, 4C): v2
print("v2:            ", tuple(step.shape))
assert torch.equal(step, pixel_shuffle(x))

# %% [markdown]
# ## 1024 -> 256 tokens per 448 px tile
#
# For InternViT-300M, one tile's output without CLS is (1, 32, 32, 1024); after the
# unshuffle it is (1, 16, 16, 4096), flattened row-major to 256 tokens of width 4096.
# `num_image_token` gives the count from the sizes alone.

# %%
from minivl.projector import num_image_token

features = torch.randn(1, 32, 32, 1024)
merged = pixel_shuffle(features)
tokens = merged.reshape(1, -1, merged.shape[-1])  # (1, 16, 16, 4096) -> (1, 256, 4096)
print(tuple(features.shape), "->", tuple(merged.shape), "->", tuple(tokens.shape))
print("num_image_token(448, 14, 0.5) =", num_image_token(448, 14, 0.5))
assert tokens.shape[1] == num_image_token(448, 14, 0.5) == 256

# %% [markdown]
# ## The projector `mlp1`
#
# Each merged token goes through `LayerNorm(4C) -> Linear(4C, H_llm) -> GELU ->
# Linear(H_llm, H_llm)`. Two details matter when loading a checkpoint: the LayerNorm keeps
# PyTorch's default eps of 1e-5 (the ViT's norms use 1e-6), and the GELU is the exact erf
# form. `MLPProjector` is an `nn.Sequential`, so its weights are named `0.*`, `1.*` and `3.*`
# exactly as under the official `mlp1.` prefix (index 2, the GELU, has no weights).

# %%
from minivl.projector import MLPProjector

with torch.device("meta"):
    proj = MLPProjector(vit_hidden_size=1024, llm_hidden_size=896)  # InternVL2.5-1B: Qwen2.5-0.5B width
print(proj)
for name, t in proj.state_dict().items():
    print(f"mlp1.{name:10s} {tuple(t.shape)}")

# %% [markdown]
# The projector sizes of the InternVL 2.5 family (ViT width C, LLM width H), counted on the
# meta device:

# %%
# NBVAL_CHECK_OUTPUT
family = [
    ("InternVL2.5-1B", 1024, 896),
    ("InternVL2.5-2B", 1024, 2048),
    ("InternVL2.5-4B", 1024, 2048),
    ("InternVL2.5-8B", 1024, 4096),
    ("InternVL2.5-26B", 3200, 6144),
    ("InternVL2.5-38B", 3200, 5120),
    ("InternVL2.5-78B", 3200, 8192),
]
for name, c, h in family:
    with torch.device("meta"):
        m = MLPProjector(c, h)
    print(f"{name:16s} LN({4 * c}) -> {4 * c}x{h} -> GELU -> {h}x{h}   {sum(t.numel() for t in m.parameters()) / 1e6:7.1f}M params")

# %% [markdown]
# ## Tiles in, image tokens out
#
# `extract_feature` chains the two chapters: run InternViT, drop CLS, restore the square
# grid, pixel-unshuffle, flatten and project. With the tiny encoder (112 px tiles, an 8 x 8
# grid) each tile becomes 16 tokens of the LLM's width; here the tiny LLM width is 256.

# %%
from minivl.config import VisionConfig
from minivl.projector import extract_feature
from minivl.scale import pick
from minivl.vision.intern_vit import InternVisionModel

torch.manual_seed(0)
vcfg = pick(smoke=VisionConfig.tiny(hidden_size=64, num_hidden_layers=2), cpu=VisionConfig.tiny(), gpu=VisionConfig.internvit_300m())
llm_hidden = pick(smoke=64, cpu=256, gpu=896)
vit = InternVisionModel(vcfg).eval()
mlp1 = MLPProjector(vcfg.hidden_size, llm_hidden).eval()
tiles = torch.randn(7, 3, vcfg.image_size, vcfg.image_size)  # e.g. 6 tiles + 1 thumbnail
with torch.no_grad():
    vit_out = vit(tiles)
    image_tokens = extract_feature(vit, mlp1, tiles)
print("ViT output:   ", tuple(vit_out.shape), "(CLS + patches, ViT width)")
print("image tokens: ", tuple(image_tokens.shape), "(tokens per tile, LLM width)")
assert image_tokens.shape == (7, num_image_token(vcfg.image_size, vcfg.patch_size), llm_hidden)

# %% [markdown]
# And by hand, the same four steps, checked against `extract_feature`:

# %%
with torch.no_grad():
    patches = vit_out[:, 1:]  # drop CLS: (T, g*g, C)
    g = vcfg.grid_size
    square = patches.reshape(-1, g, g, vcfg.hidden_size)  # (T, g*g, C) -> (T, g, g, C)
    merged = pixel_shuffle(square).flatten(1, 2)  # (T, g/2, g/2, 4C) -> (T, g*g/4, 4C)
    by_hand = mlp1(merged)
print(tuple(square.shape), "->", tuple(merged.shape), "->", tuple(by_hand.shape))
assert torch.allclose(by_hand, image_tokens, atol=1e-6)

# %% [markdown]
# ## The token budget of an image
#
# Chapter 1 cuts an image into up to `max_num` tiles plus a thumbnail when there is more
# than one tile. Each tile costs `num_image_token` LLM tokens, so the budget grows linearly
# with the tile count; without the unshuffle it would be four times larger.

# %%
# NBVAL_CHECK_OUTPUT
configs = {"tiny (112 px, patch 14)": (112, 14), "real (448 px, patch 14)": (448, 14)}
for name, (size, patch) in configs.items():
    per_tile = num_image_token(size, patch, 0.5)
    print(f"{name}: {(size // patch) ** 2} patches -> {per_tile} tokens per tile; "
          f"12 tiles + thumbnail = {13 * per_tile} tokens (without unshuffle {13 * (size // patch) ** 2})")

# %%
tile_counts = np.arange(1, 13)
with_thumb = tile_counts + (tile_counts > 1)  # thumbnail only when there is more than one tile
fig, ax = plt.subplots(figsize=(7, 3.5))
ax.bar(tile_counts - 0.2, with_thumb * 1024, width=0.4, label="no unshuffle (1024 per tile)", color="lightgray")
ax.bar(tile_counts + 0.2, with_thumb * 256, width=0.4, label="InternVL 2.5 (256 per tile)", color="tab:blue")
ax.set_xlabel("tiles (max_num), plus a thumbnail when > 1")
ax.set_ylabel("LLM tokens per image")
ax.set_xticks(tile_counts)
ax.legend()
ax.set_title("Image tokens for a 448 px tile size")
plt.show()

# %% [markdown]
# ## Measured result
#
# The cost of the whole vision path for one image at this chapter's scale (7 tiles through
# the tiny ViT and projector on CPU, best of several runs), and the length of the LLM input it produces. The
# committed output was measured at `cpu` scale on a 2-core machine.

# %%
with torch.no_grad():
    extract_feature(vit, mlp1, tiles)  # warm-up
    times = []
    for _ in range(pick(smoke=1, cpu=7, gpu=10)):
        t0 = time.perf_counter()
        image_tokens = extract_feature(vit, mlp1, tiles)
        times.append(time.perf_counter() - t0)
print(f"{tiles.shape[0]} tiles -> {image_tokens.shape[0] * image_tokens.shape[1]} LLM tokens in {min(times) * 1000:.1f} ms (best of {len(times)})")
print(f"pixel unshuffle alone on the ViT output: {vit_out.shape[0] * (vit_out.shape[1] - 1)} -> "
      f"{image_tokens.shape[0] * image_tokens.shape[1]} tokens (x{(vit_out.shape[1] - 1) / image_tokens.shape[1]:.0f} fewer)")

# %% [markdown]
# ## Summary
#
# - `pixel_shuffle(x, 0.5)` turns (N, H, W, C) into (N, H/2, W/2, 4C); output token (i, j)
#   holds patches (2i, 2j), (2i, 2j+1), (2i+1, 2j), (2i+1, 2j+1) in that order (`v2`).
#   `v1` transposes the merged grid; InternVL 2.5 checkpoints need `v2`.
# - A 448 px tile gives 1024 patches and 256 LLM tokens; the tiny 112 px tile gives 64
#   patches and 16 tokens. An image of 12 tiles plus a thumbnail costs 3,328 tokens.
# - `mlp1` is LayerNorm (eps 1e-5) -> Linear -> exact GELU -> Linear, with weights named
#   `0`, `1`, `3`; for InternVL2.5-1B it maps 4096 to 896.
# - `extract_feature` = ViT -> drop CLS -> square grid -> pixel unshuffle -> flatten -> mlp1.
#
# ## Exercises
#
# 1. *Easy.* How many LLM tokens does a 448 px tile give with `scale_factor=0.25`? Check
#    your answer with `num_image_token` and with `pixel_shuffle` on a (1, 32, 32, 8) tensor.
# 2. *Medium.* Show that `v1` output equals `v2` output with its two grid axes swapped, for
#    a random (2, 8, 6, 3) tensor. Why does `v1` on a non-square grid give a grid of the
#    wrong shape?
# 3. *Hard.* Write the pixel unshuffle with a single `reshape` and one `permute` on
#    (N, H/2, 2, W/2, 2, C) and check it against `minivl.projector.pixel_shuffle`.
