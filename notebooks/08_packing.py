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
# # 8. Packing
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/minivl/minivl/blob/main/notebooks/08_packing.ipynb)
#
# The samples of a vision-language mixture have very different lengths: a one-line answer
# about a small image next to a document cut into many tiles. Pad them into a batch and much
# of the language model's work goes into padding. InternVL 2.5 (report, section 4.3) instead
# **packs** several samples into one long row of at most `T` tokens and `K` image tiles, and
# keeps them apart inside the row with a block-diagonal attention mask. This chapter measures
# the waste, traces the packing algorithm sample by sample, draws the mask, and checks live
# that a packed row gives exactly the logits of its samples run alone. The code lives in
# `minivl/data/packing.py` (the packed dataset and the collate functions),
# `minivl/train/attention.py` (variable-length attention) and `minivl/data/packing_viz.py`
# (the trace and the statistics of this chapter).

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
# - The **cost of padding**, measured on the synthetic mixture of chapter 6: token lengths
#   per task, and the share of padding in random batches and in length-grouped batches.
# - InternVL's **packing loop** (select, search, pack, maintain), traced step by step on a
#   small stream with the buffer list drawn after every sample.
# - The **block-diagonal causal mask** that isolates the samples of a packed row.
# - **Occupancy**: how full the packs are for several token budgets `T` and tile budgets `K`.
# - The **skip accounting**: every sample that cannot be packed is counted with its reason.
# - The **packed-equals-unpacked check**, run live on the tiny MiniVL: per-sample logits of a
#   packed row against each sample alone, in float32, to 1e-5.
# - A short **throughput** measurement of a training step on packed and padded batches.

# %% [markdown]
# ## The idea
#
# A padded batch is a rectangle: every row is as long as the longest sample. A packed row is
# a line: samples follow each other, and only a short tail is left empty. The figure shows
# the same eight samples both ways. Attention must then stop at sample boundaries (each
# sample attends causally to itself only) and position ids restart at 0 for every sample;
# with both, the packed row computes exactly what the samples would compute alone.

# %%
import matplotlib.pyplot as plt
import numpy as np

toy_lengths = [110, 316, 83, 50, 150, 123, 210, 96]
colours = plt.get_cmap("tab10")
fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.2), gridspec_kw={"width_ratios": [1, 1.6]})
width = max(toy_lengths)
for i, n in enumerate(toy_lengths):
    left.barh(i, n, color=colours(i), height=0.8)
    left.barh(i, width - n, left=n, color="0.85", height=0.8)
left.set_title(f"padded batch: {sum(toy_lengths)} real tokens in {len(toy_lengths) * width} slots "
               f"({sum(toy_lengths) / (len(toy_lengths) * width):.0%})", fontsize=9)
left.set_yticks(range(len(toy_lengths)), [f"sample {i}" for i in range(len(toy_lengths))], fontsize=8)
left.invert_yaxis()
left.set_xlabel("tokens")
row_len = 600
x, row = 0, 0
for i, n in enumerate(toy_lengths):
    if x + n > row_len:
        right.barh(row, row_len - x, left=x, color="0.85", height=0.8)
        x, row = 0, row + 1
    right.barh(row, n, left=x, color=colours(i), height=0.8, edgecolor="white")
    right.text(x + n / 2, row, str(i), ha="center", va="center", fontsize=8)
    x += n
right.barh(row, row_len - x, left=x, color="0.85", height=0.8)
right.set_title(f"packed rows of T = {row_len}: {sum(toy_lengths)} real tokens in {(row + 1) * row_len} slots "
                f"({sum(toy_lengths) / ((row + 1) * row_len):.0%})", fontsize=9)
right.set_yticks(range(row + 1), [f"row {r}" for r in range(row + 1)], fontsize=8)
right.invert_yaxis()
right.set_xlabel("tokens")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## How much padding costs, on the synthetic mixture
#
# We rebuild the data of chapter 6: the synthetic suite (generated once and cached), the
# cpu-scale tokenizer and the tiny model's tile size (112 px tiles, 16 tokens each). Then
# we build the first samples of every task and record their sizes: tokens, tiles and
# supervised tokens.

# %%
import time
from pathlib import Path

import torch

from minivl.config import MiniVLConfig
from minivl.data.dataset import DataConfig, build_datasets, conversation_texts
from minivl.data.synthetic import ensure_suite
from minivl.scale import cache_dir, get_scale, pick
from minivl.text.tokenizer import image_token_id, token_id, train_chat_tokenizer

scale = get_scale()
suite = cache_dir("data", scale)
ensure_suite(suite, scale=scale, seed=0)  # chapter 6's suite, generated here if it is not cached
train_meta = suite / "train.json"
tok = train_chat_tokenizer(conversation_texts(train_meta), vocab_size=pick(smoke=600, cpu=1000, gpu=1000))
model_config = pick(smoke=MiniVLConfig.smoke, cpu=MiniVLConfig.tiny, gpu=MiniVLConfig.tiny)(
    vocab_size=len(tok), image_token_id=image_token_id(tok))
data_config = DataConfig(image_size=model_config.vision.image_size, num_image_token=model_config.num_image_token,
                         max_dynamic_patch=6, max_length=2048, min_num_frame=4, max_num_frame=8)
datasets = build_datasets(train_meta, tok, data_config, train=True, seed=0)

per_task = pick(smoke=4, cpu=60, gpu=200)
start = time.perf_counter()
samples = {d.meta.name: [s for s in (d[i] for i in range(min(per_task, len(d)))) if s is not None] for d in datasets}
sizes = {name: np.array([(s["input_ids"].numel(), s["pixel_values"].shape[0], int((s["labels"] != -100).sum()))
                         for s in group]) for name, group in samples.items()}
print(f"built {sum(len(g) for g in samples.values())} samples in {time.perf_counter() - start:.1f} s")
print(f"{'task':<12} {'samples':>7} {'tokens min':>10} {'mean':>6} {'max':>5} {'tiles mean':>10} {'supervised':>10}")
for name, arr in sizes.items():
    print(f"{name:<12} {len(arr):>7} {arr[:, 0].min():>10} {arr[:, 0].mean():>6.0f} {arr[:, 0].max():>5} "
          f"{arr[:, 1].mean():>10.1f} {arr[:, 2].mean():>10.1f}")
assert all(len(a) > 0 for a in sizes.values())

# %% [markdown]
# Lengths spread over a factor of seven: text-only samples have about 44 tokens, `small_text`
# samples about 310 (17 tiles of 16 tokens plus the text). The plot shows the spread per task.

# %%
fig, (ax_tok, ax_tiles) = plt.subplots(1, 2, figsize=(11, 3.4))
names = list(sizes)
ax_tok.boxplot([sizes[n][:, 0] for n in names], orientation="horizontal")
ax_tok.set_yticks(range(1, len(names) + 1), names, fontsize=8)
ax_tok.set_xlabel("tokens per sample")
ax_tok.set_title("length per task")
ax_tiles.boxplot([sizes[n][:, 1] for n in names], orientation="horizontal")
ax_tiles.set_yticks(range(1, len(names) + 1), names, fontsize=8)
ax_tiles.set_xlabel("tiles per sample (text-only: one dummy tile)")
ax_tiles.set_title("tiles per task")
plt.tight_layout()
plt.show()

# %% [markdown]
# Now batch these samples as a plain training loop would: random batches of B = 8, each
# right-padded to its longest sample (`padded_collate_fn`). `padding_utilisation` counts
# real tokens over token slots. Length-grouped batching (`length_grouped_batches`: shuffle,
# cut into mega-batches of 50 batches, sort each by length) is the usual remedy.

# %%
from minivl.data.packing import length_grouped_batches, padded_collate_fn
from minivl.data.packing_viz import padding_utilisation

flat = [s for group in samples.values() for s in group]
lengths = [int(s["input_ids"].numel()) for s in flat]
B = 8
order = np.random.default_rng(0).permutation(len(flat)).tolist()
naive_batches = [order[i: i + B] for i in range(0, len(order), B)]
grouped_batches = length_grouped_batches(lengths, B, seed=0)
naive_use = padding_utilisation(lengths, naive_batches)
grouped_use = padding_utilisation(lengths, grouped_batches)
for label, use in (("random batches", naive_use), ("length-grouped batches", grouped_use)):
    print(f"{label:<24} {use['real']:>7,} real tokens in {use['slots']:>7,} slots: utilisation {use['utilisation']:.1%}, "
          f"padding {1 - use['utilisation']:.1%}")
first = padded_collate_fn([flat[i] for i in naive_batches[0]])
print("one random batch:", tuple(first["input_ids"].shape), "real tokens per row", first["attention_mask"].sum(1).tolist())
assert first["statistics"]["num_padding_tokens"] == first["input_ids"].numel() - sum(lengths[i] for i in naive_batches[0])
assert grouped_use["utilisation"] > naive_use["utilisation"]

# %% [markdown]
# On the cpu-scale suite, about half of the token slots of a random batch are padding
# (utilisation near 50%): the language model does twice the work it needs. Grouping by
# length recovers most of it, at a price: batches are no longer random (a batch of long
# documents, then a batch of short answers), and the number of samples per step stays fixed
# while their total length varies, which the next chapter's loss weighting must handle.
# Packing recovers the padding *and* keeps the token count per step nearly constant.

# %% [markdown]
# ## The packing algorithm
#
# InternVL's `PackedDataset` runs this loop in every data-loader worker (report, section 4.3;
# `minivl.data.packing.PackedDataset`):
#
# 1. **select**: pick a data set with probability proportional to its size, take its next
#    sample;
# 2. **search**: scan the open buffers, kept sorted by tile count (most first), and take the
#    first one the sample still fits in: at most `K` tiles and `T` tokens together;
# 3. **pack**: append the sample to that buffer, or open a new buffer;
# 4. **maintain**: a buffer of exactly `T` tokens leaves at once; buffers at the front with
#    exactly `K` tiles leave; while more than `max_buffer_size` buffers are open the front
#    one (most tiles) leaves; at the end of the data every buffer is flushed.
#
# A sample longer than `T` is split between image blocks first; a sample (or piece) with more
# than `K` tiles is skipped and counted. Note that `K` counts *tiles*, not images, and that
# the dummy tile of a text-only sample counts too.
#
# ### A trace, step by step
#
# `TracedPackedDataset` is `PackedDataset` itself with a recorder attached: after every
# sample it writes down where the sample went, which packs left and why, and the buffer
# list. The stream below has realistic sizes (tokens, tiles) but weightless tensors
# (`stand_in_sample`: packing only reads sizes). Sample 4 was skipped by its source (a
# broken image, say) and sample 7 has 13 tiles, more than `K = 12`. We use `T = 256` tokens
# and at most 3 open buffers so that every rule shows up.

# %%
# NBVAL_CHECK_OUTPUT
import logging

from minivl.data.packing import PackedDataset
from minivl.data.packing_viz import TracedPackedDataset, format_trace, plot_trace, stand_in_sample

logging.getLogger("minivl.data.packing").setLevel(logging.CRITICAL)  # the skips are counted below instead

TOY_SIZES = [(110, 3), (83, 3), (150, 6), (50, 1), None, (210, 6), (123, 3), (240, 13), (96, 6), (46, 1),
             (160, 3), (63, 3), (109, 3), (40, 1), (147, 3)]
toy_stream = [None if s is None else stand_in_sample(i, *s) for i, s in enumerate(TOY_SIZES)]
toy_kwargs = dict(max_packed_tokens=256, num_images_expected=12, max_buffer_size=3, shuffle=False)
traced = TracedPackedDataset([toy_stream], **toy_kwargs)
toy_packs = list(traced)
print(format_trace(traced.trace, traced.flushed))
print("skips:", dict(traced.skip_counts))

# %% [markdown]
# Read it row by row. Sample 1 fits the first buffer; sample 2 would push it past 256
# tokens, so it opens a second one. Sample 3 (a text-only sample, one dummy tile) still fits
# the first. After sample 6 there are four buffers, one more than allowed, so the front one
# (most tiles) leaves half-full. Sample 8 brings the front buffer to exactly 12 tiles: it
# leaves. Sample 9 completes a buffer to exactly 256 tokens: it leaves at once. At the end
# the two open buffers are flushed. The figure shows the same trace.

# %%
fig, ax = plt.subplots(figsize=(12, 7))
plot_trace(traced.trace, 256, traced.flushed, ax=ax)
plt.show()

# %%
reasons = [v.reason for step in traced.trace for v in step.yielded] + [v.reason for v in traced.flushed]
assert reasons == ["too many buffers", "tiles == K", "tokens == T", "tokens == T", "flush", "flush"]
plain = list(PackedDataset([toy_stream], **toy_kwargs))
assert [p["input_ids"].tolist() for p in plain] == [p["input_ids"].tolist() for p in toy_packs]
assert all(p["statistics"]["num_tokens"] <= 256 and p["statistics"]["num_tiles"] <= 12 for p in toy_packs)
print("pack sizes (tokens/tiles):", [(p["statistics"]["num_tokens"], p["statistics"]["num_tiles"]) for p in toy_packs])

# %% [markdown]
# Each pack is one row: `input_ids`, `labels`, `position_ids` (restarting at 0 for every
# sample), `data_index` (which sample each token belongs to), the tiles of all its samples
# in order, and `statistics`. `packed_collate_fn` turns a pack into a batch of one row and
# adds `cu_seqlens`, the cumulative sample lengths that variable-length attention kernels
# take.

# %%
from minivl.data.packing import packed_collate_fn

row = packed_collate_fn([toy_packs[1]])
print("samples      ", toy_packs[1]["statistics"]["num_samples"], "tokens", toy_packs[1]["statistics"]["num_tokens"])
print("cu_seqlens   ", row["cu_seqlens"].tolist(), " max_seqlen", row["max_seqlen"])
starts = row["cu_seqlens"][:-1].long()
print("position_ids at the sample starts", row["position_ids"][0, starts].tolist(),
      " just before them", row["position_ids"][0, starts[1:] - 1].tolist())
assert row["cu_seqlens"].tolist() == [0, 150, 246]
assert row["position_ids"][0, starts].tolist() == [0, 0]

# %% [markdown]
# ## The block-diagonal mask
#
# Inside a packed row, token *i* may attend to token *j* only if both belong to the same
# sample and *j* is not after *i*. That is a causal mask cut into blocks along the
# diagonal, built from `cu_seqlens` by `block_diagonal_causal_mask`. On a GPU,
# FlashAttention's variable-length kernel never builds it: it runs each block directly, at a
# cost of the sum of squared sample lengths. PyTorch's `scaled_dot_product_attention` with
# this mask (minivl's `sdpa` backend, used in this chapter to show the mask at work) costs
# `T` squared. On a CPU minivl's default, `sdpa_segments`, does better without a kernel of its
# own: it lays the row's samples out as a padded batch, one sample per row, and runs SDPA
# with a plain causal mask, which inside each sample is exactly this one (its cost: samples
# times the longest sample squared).

# %%
from minivl.train.attention import block_diagonal_causal_mask

small_cu = torch.tensor([0, 5, 8, 16], dtype=torch.int32)
small = block_diagonal_causal_mask(small_cu)
big = block_diagonal_causal_mask(row["cu_seqlens"])
fig, (a, b) = plt.subplots(1, 2, figsize=(9, 4.2))
a.imshow(small, cmap="Blues")
a.set_title("samples of 5, 3 and 8 tokens")
a.set_xlabel("key")
a.set_ylabel("query")
b.imshow(big, cmap="Blues")
b.set_title(f"pack 1 of the trace: cu_seqlens {row['cu_seqlens'].tolist()}")
b.set_xlabel("key")
plt.tight_layout()
plt.show()
print(small.int())
assert int(small.sum()) == 5 * 6 // 2 + 3 * 4 // 2 + 8 * 9 // 2  # a causal triangle per sample
assert int(big.sum()) == 150 * 151 // 2 + 96 * 97 // 2

# %% [markdown]
# ## Occupancy for several T and K
#
# How full do packs get on the real mixture? We pack the sizes of the samples built above
# (stand-ins again, so this is cheap) with several token budgets `T` and tile budgets `K`
# and look at tokens and tiles per pack. `occupancy` reports the mean fill of `T` and `K`
# and what stopped each pack: `T` reached, `K` reached, or neither (a buffer overflow or
# the final flush).

# %%
from minivl.data.packing_viz import occupancy

stand_ins = [[stand_in_sample(0, int(t), int(k), int(s)) for t, k, s in sizes[name]] for name in sizes]
settings = [(512, 24), (1024, 24), (1024, 48), (2048, 48)]
results = {}
print(f"{'T':>5} {'K':>3} {'packs':>6} {'token fill':>10} {'tile fill':>9} {'samples/pack':>12}  stopped by T / K / neither")
for T, K in settings:
    ds = PackedDataset(stand_ins, max_packed_tokens=T, num_images_expected=K, seed=0)
    packs = list(ds)
    occ = occupancy(packs, T, K)
    results[(T, K)] = occ
    lim = occ["limited_by"]
    print(f"{T:>5} {K:>3} {occ['packs']:>6} {occ['token_fill']:>10.1%} {occ['tile_fill']:>9.1%} "
          f"{occ['samples_per_pack']:>12.1f}  {lim['tokens']} / {lim['tiles']} / {lim['neither']}")
    assert sum(p["statistics"]["num_samples"] for p in packs) == len(flat)  # every sample packed exactly once
    assert occ["tokens"].max() <= T and occ["tiles"].max() <= K

# %%
fig, axes = plt.subplots(2, len(settings), figsize=(13, 5))
for col, (T, K) in enumerate(settings):
    occ = results[(T, K)]
    axes[0, col].hist(occ["tokens"] / T * 100, bins=np.linspace(0, 100, 21), color="#3367d6")
    axes[0, col].set_title(f"T={T}, K={K}", fontsize=9)
    axes[1, col].hist(occ["tiles"] / K * 100, bins=np.linspace(0, 100, 21), color="#e37400")
    axes[1, col].set_xlabel("% of the budget", fontsize=8)
axes[0, 0].set_ylabel("packs, by token fill")
axes[1, 0].set_ylabel("packs, by tile fill")
plt.tight_layout()
plt.show()

# %%
tokens_per_tile = sum(int(a[:, 0].sum()) for a in sizes.values()) / sum(int(a[:, 1].sum()) for a in sizes.values())
print(f"the mixture has {tokens_per_tile:.1f} tokens per tile; T/K: "
      + ", ".join(f"{T}/{K} = {T / K:.1f}" for T, K in settings))

# %% [markdown]
# Which budget binds first depends on `T / K` against the data's own ratio of tokens to
# tiles (about 31 here: 16 image tokens per tile plus the text). When `T / K` is below it
# (1024/48 = 21), tokens run out first and packs leave nearly full in tokens: about 96% of
# `T` at cpu scale. When `T / K` is above it (1024/24 or 2048/48, both 43), tiles run out
# first: the tile fill is 97-98% and about 30% of `T` stays empty. A `T` of only three or
# four samples (512) leaves gaps that no remaining sample fills (89%). Most packs leave
# through the buffer limit ("neither"), nearly full, rather than at exactly `T` tokens.
# InternVL 2.5 trains with `T = 16384` and `K = 48` tiles of 256 tokens: `T / K` = 341,
# above the 256 image tokens per tile, so its packs fill up in tiles or tokens depending
# on how much text the data carries.

# %% [markdown]
# ## Skip accounting
#
# Nothing leaves the packed dataset silently. Every sample that cannot be packed is counted
# in `skip_counts` by reason and in the next pack's `statistics["num_skipped"]`. The stream
# below has one of each case: a sample its source skipped (`None`), a sample with more tiles
# than `K`, a long text sample that is split into pieces of at most `T` tokens, and a long
# sample whose last piece would carry no supervised token (so that piece is dropped).

# %%
# NBVAL_CHECK_OUTPUT
prompt_tail = stand_in_sample(4, 70, 0)
prompt_tail["labels"][64:] = -100  # split into 64 + 6 tokens; the 6-token tail has no supervised label
skip_stream = [
    stand_in_sample(0, 40, 2),
    None,  # the source could not build it (counted there too, e.g. a corrupt image)
    stand_in_sample(2, 30, 9),  # 9 tiles > K = 8
    stand_in_sample(3, 150, 0),  # 150 tokens > T = 64: split into 64 + 64 + 22
    prompt_tail,
    stand_in_sample(5, 20, 1),
]
skipper = PackedDataset([skip_stream], max_packed_tokens=64, num_images_expected=8, shuffle=False)
skip_packs = list(skipper)
print("skip_counts:", dict(skipper.skip_counts))
print("per pack (tokens, skipped since the previous pack):",
      [(p["statistics"]["num_tokens"], p["statistics"]["num_skipped"]) for p in skip_packs])
skipped = sum(n for reason, n in skipper.skip_counts.items() if reason != "split")  # "split" is not a loss
assert sum(p["statistics"]["num_skipped"] for p in skip_packs) == skipped == 3

# %% [markdown]
# On the real mixture, the sources count their own skips (chapter 6): records with a missing
# or corrupt image, too long, or with a wrong placeholder count. None of the samples built
# above was skipped, and no sample is longer than the `T` used here, so the packed dataset
# had nothing to skip either:

# %%
print({d.meta.name: dict(d.skips) for d in datasets if d.skips} or "no source skipped a sample")
print("packed dataset, T=1024 K=48:", dict(PackedDataset(stand_ins, max_packed_tokens=1024, num_images_expected=48,
                                                         seed=0).skip_counts) or "nothing skipped")

# %% [markdown]
# ## Packed equals unpacked
#
# The claim behind packing: a packed row computes, for each of its samples, exactly what
# that sample computes alone. Three things make it true: the block-diagonal mask (no
# attention across samples), position ids restarting at 0 (rotary embeddings see the same
# positions), and the vision tower running every tile as its own batch row (tiles of
# different samples never meet). `enable_packed_attention` switches the language model to
# minivl's variable-length attention, which takes the boundaries from `cu_seqlens`.
#
# We pack real samples of several tasks into one row, run the tiny MiniVL (random weights,
# float32) once on the row and once on every sample alone, and compare logits.
# `unpack` cuts the row back into its samples (tokens at `data_index`, real tiles handed out
# by their `<IMG_CONTEXT>` count).

# %%
from minivl.data.packing_viz import unpack
from minivl.model import MiniVL
from minivl.train.attention import enable_packed_attention

torch.manual_seed(0)
model = MiniVL(model_config).eval()
enable_packed_attention(model.language_model, backend="sdpa")
mix = [samples[name][0] for name in ("caption", "text_only", "chart", "video", "multi_image")]
check_pack = next(iter(PackedDataset([mix], max_packed_tokens=1024, num_images_expected=48, shuffle=False)))
batch = packed_collate_fn([check_pack])
print("pack:", check_pack["statistics"]["num_samples"], "samples,", check_pack["statistics"]["num_tokens"], "tokens,",
      check_pack["pixel_values"].shape[0], "tiles; cu_seqlens", batch["cu_seqlens"].tolist())
model_inputs = {k: batch[k] for k in ("input_ids", "pixel_values", "image_flags", "position_ids", "cu_seqlens",
                                      "max_seqlen")}
with torch.no_grad():
    packed_logits = model(**model_inputs).logits[0]  # (L, V)
    cu = batch["cu_seqlens"].tolist()
    diffs = []
    for k, alone in enumerate(unpack(check_pack, model.image_token_id, model.num_image_token)):
        flags = alone["image_flags"] if alone["pixel_values"] is not None else None
        logits = model(input_ids=alone["input_ids"][None], pixel_values=alone["pixel_values"], image_flags=flags).logits[0]
        diffs.append(float((packed_logits[cu[k]:cu[k + 1]] - logits).abs().max()))
        print(f"sample {k}: {alone['input_ids'].numel():>4} tokens, "
              f"{0 if alone['pixel_values'] is None else alone['pixel_values'].shape[0]:>2} tiles, "
              f"max |packed - alone| = {diffs[-1]:.2e}")
print(f"largest difference {max(diffs):.2e} (logits are of order {float(packed_logits.abs().mean()):.2f})")
assert max(diffs) < 1e-5

# %% [markdown]
# The differences are float32 rounding (the same sums in another order). Without the
# boundaries, the later samples would read the earlier ones: run the same row as a single
# sequence (one segment, positions 0 to L-1) and the differences jump by orders of magnitude.

# %%
with torch.no_grad():
    one_segment = torch.tensor([0, cu[-1]], dtype=torch.int32)
    leaked = model(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"],
                   image_flags=batch["image_flags"], cu_seqlens=one_segment).logits[0]
leak = [float((leaked[cu[k]:cu[k + 1]] - packed_logits[cu[k]:cu[k + 1]]).abs().max()) for k in range(len(cu) - 1)]
print("max |leaked - packed| per sample:", [f"{d:.2e}" for d in leak])
assert leak[0] < 1e-5 and min(leak[1:]) > 1e-3  # the first sample has nothing before it

# %% [markdown]
# ## Measured: training tokens per second
#
# The point of all this is speed. Here is a short measurement on this machine: forward,
# backward and an AdamW step of the tiny MiniVL on packed rows (`T = 1024`, `K = 48`) and on
# random padded batches of 8, counting **real** tokens per second. The methods alternate,
# and each gets the same number of steps. On a shared laptop the numbers are noisy; the
# benchmark `benchmarks/packing.py` runs the same comparison for longer, with medians.

# %%
model.train()
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
train_packs = list(PackedDataset(list(samples.values()), max_packed_tokens=1024, num_images_expected=48, seed=0,
                                 img_start_token_id=token_id(tok, "<img>"), img_end_token_id=token_id(tok, "</img>")))
methods = {
    "packed (T=1024, K=48)": [packed_collate_fn([p]) for p in train_packs],
    "random padded (B=8)": [padded_collate_fn([flat[i] for i in b], pad_token_id=0) for b in naive_batches],
}


def train_step(batch: dict) -> int:
    """Forward, backward and optimizer step; returns the real tokens of the batch."""
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "loss_weight", "statistics", "data_index")}
    model(**inputs, labels=batch["labels"], loss_weight=batch["loss_weight"]).loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return int(batch["statistics"]["num_tokens"])


steps = pick(smoke=1, cpu=2, gpu=10)
for batches in methods.values():  # warm-up
    train_step(batches[-1])
seconds = {m: 0.0 for m in methods}
tokens = {m: 0 for m in methods}
for i in range(steps):
    for m, batches in methods.items():  # interleaved
        t0 = time.perf_counter()
        tokens[m] += train_step(batches[i % len(batches)])
        seconds[m] += time.perf_counter() - t0
rates = {m: tokens[m] / seconds[m] for m in methods}
for m in methods:
    print(f"{m:<22} {tokens[m]:>6} real tokens in {seconds[m]:5.1f} s: {rates[m]:6.0f} tokens/s")
print(f"packed / padded: {rates['packed (T=1024, K=48)'] / rates['random padded (B=8)']:.2f}x")
model.eval()

# %% [markdown]
# The benchmark (`python benchmarks/packing.py --rounds 3 --per-round 40`: 970 samples, 10%
# of every task of the cpu suite for the utilisation; three rounds of 40 new samples each,
# every method trained on exactly the same samples, batches interleaved; medians; 2 idle
# CPU cores) gave:
#
# | method | utilisation | real tokens/s (median) | vs naive (median of rounds) |
# |---|---|---|---|
# | naive padding, B = 8, random | 50.7% | 2886 | 1.00x |
# | length-grouped padding, B = 8 | 97.3% | 4258 | 1.48x |
# | InternVL packing, T = 1024, K = 48 | 100% (rows 96% full) | 3754 | 1.30x |
#
# Packing removes the padding: utilisation goes from about 51% to 100% (a packed row has no
# padding; its last few slots are simply not there). The speed-up is smaller than the 2x
# that halving the language model's work suggests, for two reasons worth knowing. The
# **vision tower never sees padding**: tiles are concatenated, not padded, in every method,
# so the ViT does the same work everywhere, and in the tiny model it is about a third of
# the compute (a 112 px tile is 65 ViT tokens of width 128 for 16 LLM tokens of width 256);
# halving the language model's work then gives about 1.6x at best. And the packed row's
# attention here is the `sdpa` backend, SDPA with a dense (T, T) block mask: it pays for
# the whole 1024-token square whatever the samples' own lengths, while a padded batch pays
# only for its longest sample (`sdpa_segments`, the CPU default, avoids most of that; see
# `benchmarks/attention.py`). Here that makes length grouping, at a similar utilisation, the faster of the two
# (1.48x against 1.30x; the rounds agree within a few percent). On a GPU, a varlen kernel
# (FlashAttention's, or `flex_attention`) pays only for each sample's own block, and packing
# keeps the data order random, which length grouping does not.

# %% [markdown]
# ## Summary
#
# - Padding a random batch of the synthetic mixture wastes about half of the language
#   model's token slots; length grouping or packing recover them.
# - InternVL's packed dataset keeps a few open buffers sorted by tile count, puts each
#   sample into the first buffer where it fits in `T` tokens and `K` tiles, and yields a
#   buffer when it is exactly full, when too many are open, or at the end.
# - A packed row isolates its samples with `cu_seqlens`: a block-diagonal causal mask and
#   restarting positions give, per sample, the logits of that sample alone (checked here to
#   float32 rounding).
# - Every sample that cannot be packed is counted by reason, never dropped silently.
# - The gain in speed is the gain in the language model's work; the vision tower, which
#   never pads, sets the ceiling. On CPU, keep `T` modest: the mask costs `T` squared.
#
# ## Exercises
#
# 1. **Easy.** Re-run the trace with `max_buffer_size=1`. Which packs change, and how many
#    leave because too many buffers are open? Predict first, then check with
#    `format_trace`.
# 2. **Medium.** Compute the utilisation of random padded batches for B = 2, 4, 8, 16, 32
#    with `padding_utilisation` and plot it against B. Explain the shape of the curve from
#    the length distribution per task.
# 3. **Hard.** Turn on `strict_mode=True` (pad every pack to exactly `T` tokens and `K`
#    tiles, as older InternVL versions did). Measure the token fill and the extra tiles the
#    ViT must now process, and run the packed-equals-unpacked check again: which segment
#    holds the padding, and why do the real samples' logits not change?
