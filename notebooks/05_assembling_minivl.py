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
# # 5. Assembling MiniVL
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/minivl/minivl/blob/main/notebooks/05_assembling_minivl.ipynb)
#
# The earlier chapters built the parts: tiles (chapter 1), InternViT (chapter 2), pixel
# unshuffle and `mlp1` (chapter 3), and the tokens and templates of the text side (chapter 4).
# This chapter wires them to a language model. The result is `minivl.model.MiniVL`, the
# counterpart of the official `InternVLChatModel`. Its checkpoints live in
# `minivl.checkpoint`, which reads and writes the three layouts InternVL weights come in.

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
# - A `MiniVL` model: InternViT, then `mlp1`, then any transformers causal LM (Qwen2 here).
# - A trace of one forward pass, from pixels to logits, with the shape printed at each step.
# - A chat turn with the untrained model. It answers gibberish, and that is expected.
# - The same weights saved and reloaded in three layouts: minivl, official OpenGVLab and
#   transformers. The logits must stay the same.
# - A parameter table of the released InternVL 2.5 sizes, counted without allocating memory.

# %% [markdown]
# ## The idea
#
# A vision-language model of the InternVL family is an LLM that reads some tokens it never
# saw as text. The prompt holds one `<IMG_CONTEXT>` placeholder per image token. The model
# embeds the prompt as usual, then overwrites the embeddings at exactly those positions with
# the ViT's projected features, tile after tile, in order. Everything after that point is a
# plain language model. The official code does it in three lines
# (`input_embeds[selected] = vit_embeds`). The figure shows where the image tokens go in a
# two-tile prompt.

# %%
import matplotlib.pyplot as plt
import numpy as np
import torch

from minivl.config import MiniVLConfig
from minivl.model import MiniVL, count_parameters
from minivl.scale import get_scale, pick
from minivl.text.tokenizer import image_token_id, train_tokenizer

segments = [("system + user prefix", 12, "#bbbbbb"), ("<img>", 1, "#4477aa"), ("tile 1: 16 x <IMG_CONTEXT>", 16, "#ee6677"),
            ("tile 2: 16 x <IMG_CONTEXT>", 16, "#ccbb44"), ("</img>", 1, "#4477aa"), ("question + assistant prefix", 14, "#bbbbbb")]
fig, ax = plt.subplots(figsize=(10, 1.6))
start = 0
for label, n, colour in segments:
    ax.barh(0, n, left=start, color=colour, edgecolor="white")
    ax.text(start + n / 2, 0, label if n > 4 else "", ha="center", va="center", fontsize=8)
    start += n
ax.set_yticks([])
ax.set_xlabel("position in the prompt (tokens)")
ax.set_title("the image features overwrite the embeddings at the <IMG_CONTEXT> positions")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Wiring the parts
#
# We need a tokenizer first: `<IMG_CONTEXT>` must have an id before the model can find it.
# At `cpu` scale minivl trains a small byte-level BPE in about a second (chapter 4). The
# model's vocabulary and image-token id come from it. `MiniVLConfig.tiny` is the `cpu`-scale
# preset: a 112 px InternViT, 128 wide with 4 layers, and a Qwen2 LLM, 256 wide with 4 layers.

# %%
tokenizer = train_tokenizer(vocab_size=pick(smoke=300, cpu=2000, gpu=2000))
preset = pick(smoke=MiniVLConfig.smoke, cpu=MiniVLConfig.tiny, gpu=MiniVLConfig.tiny)
config = preset(vocab_size=len(tokenizer), image_token_id=image_token_id(tokenizer))
torch.manual_seed(0)
model = MiniVL(config).eval()
print("image token id:", config.image_token_id, "| vocabulary:", config.vocab_size,
      "| tokens per tile:", model.num_image_token)
for name, part in model.towers().items():
    print(f"{name:<10} {type(part).__name__:<22} {sum(p.numel() for p in part.parameters()):>10,} parameters")

# %% [markdown]
# ## From pixels to logits, one step at a time
#
# A real photo (the astronaut image that ships with scikit-image) is cut into 112 px tiles
# by `load_image_tiles` (chapter 1). We follow it through the model and print every shape.

# %%
from skimage import data
from PIL import Image

from minivl.projector import pixel_shuffle
from minivl.vision.transforms import load_image_tiles

image = Image.fromarray(data.astronaut())
pixel_values, num_patches = load_image_tiles(image, image_size=config.vision.image_size, max_num=4)
print("image", image.size, "->", num_patches, "tiles ->", tuple(pixel_values.shape))

# %%
with torch.no_grad():
    hidden = model.vision_model(pixel_values, select_layer=config.select_layer)
    print("InternViT hidden states      ", tuple(hidden.shape), "(tiles, 1 + patches, C)")
    patches = hidden[:, 1:]
    print("drop CLS                     ", tuple(patches.shape))
    n, p, c = patches.shape
    side = int(p**0.5)
    grid = patches.reshape(n, side, side, c)  # (N, P, C) -> (N, side, side, C)
    print("square grid                  ", tuple(grid.shape))
    merged = pixel_shuffle(grid, config.downsample_ratio)
    print("pixel_shuffle (v2)           ", tuple(merged.shape), "(2x2 patches -> one token)")
    tokens = merged.reshape(n, -1, merged.shape[-1])  # (N, s, s, 4C) -> (N, s*s, 4C)
    print("flatten                      ", tuple(tokens.shape))
    features = model.mlp1(tokens)
    print("mlp1                         ", tuple(features.shape), "(tiles, tokens per tile, LLM width)")
    assert torch.equal(features, model.extract_feature(pixel_values))

# %% [markdown]
# The step-by-step version equals `model.extract_feature`, which the model uses from here on.
# Next comes the prompt. `chat()` builds it with the `internvl2_5` template and expands
# `<image>` into `<img>` + `<IMG_CONTEXT>` x (tokens per tile x tiles) + `</img>`.

# %%
question = "<image>\nWhat is in the picture?"
prompt = model.build_chat_prompt(question)
prompt = model.expand_image_placeholders(prompt, num_patches)
input_ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
n_placeholders = int((input_ids == config.image_token_id).sum())
print("prompt tokens:", input_ids.shape[1], "| <IMG_CONTEXT> tokens:", n_placeholders,
      "=", num_patches[0], "tiles x", model.num_image_token)
with torch.no_grad():
    embeds = model.embed_inputs(input_ids, pixel_values)
    print("embeddings with images merged", tuple(embeds.shape))
    out = model(input_ids, pixel_values=pixel_values)
    print("logits                       ", tuple(out.logits.shape), "(batch, prompt length, vocabulary)")
mask = input_ids[0] == config.image_token_id
assert torch.equal(embeds[0, mask], features.reshape(-1, features.shape[-1]))
assert n_placeholders == num_patches[0] * model.num_image_token

# %% [markdown]
# If the prompt and the images disagree, the model stops and gives both counts. It never
# fills part of the slots without telling you:

# %%
try:
    model(input_ids, pixel_values=pixel_values[:-1])  # one tile short
except ValueError as err:
    print("ValueError:", err)

# %% [markdown]
# ## A first chat, with an untrained model
#
# `chat()` works like the official one: it adds `<image>\n` when needed, applies the template,
# stops at `<|im_end|>`, and can stream tokens through a transformers `TextStreamer`. The
# weights are random, so the answer is **gibberish**: words of the synthetic corpus in a
# random order. Chapters 10 to 12 train the model so that the answer makes sense.

# %%
from transformers import TextStreamer

generation_config = dict(max_new_tokens=pick(smoke=8, cpu=24, gpu=24), do_sample=False)
print("streamed: ", end="")
answer = model.chat(tokenizer, pixel_values, "What is in the picture?", dict(generation_config,
                    streamer=TextStreamer(tokenizer, skip_special_tokens=True)), num_patches_list=num_patches)
print("answer:", repr(answer))

# %% [markdown]
# ## Save and reload in three layouts
#
# InternVL weights exist in three layouts, and `MiniVL` reads and writes all three:
#
# | layout | `config.json` | weight names |
# |---|---|---|
# | minivl | `model_type: "minivl"` | `vision_model.*`, `mlp1.*`, `language_model.*` |
# | official (OpenGVLab) | `InternVLChatModel` | the same for Qwen2; InternLM2 LLMs use a fused `wqkv` |
# | transformers | `InternVLForConditionalGeneration` | `vision_tower.*` with split q/k/v, `multi_modal_projector.*` |
#
# We save the model in each layout, load it back, and compare logits on the astronaut
# prompt. The transformers copy also goes through transformers' own `InternVLForConditionalGeneration`,
# which shows that minivl writes files transformers reads correctly.

# %%
import tempfile
from pathlib import Path

from transformers import InternVLForConditionalGeneration
from transformers.utils import logging as hf_logging

hf_logging.disable_progress_bar()  # keep the printed output plain

with torch.no_grad():
    reference = model(input_ids, pixel_values=pixel_values).logits
results = {}
with tempfile.TemporaryDirectory() as tmp:
    for layout in ("minivl", "official", "hf"):
        path = model.save_pretrained(Path(tmp) / layout, format=layout)
        files = sorted(f.name for f in path.iterdir())
        reloaded = MiniVL.from_pretrained(path)
        with torch.no_grad():
            logits = reloaded(input_ids, pixel_values=pixel_values).logits
        results[f"minivl <- {layout}"] = (logits - reference).abs().max().item()
        print(f"{layout:<9} files: {files}")
    hf = InternVLForConditionalGeneration.from_pretrained(Path(tmp) / "hf", dtype=torch.float32).eval()
    with torch.no_grad():
        results["transformers <- hf"] = (hf(input_ids=input_ids, pixel_values=pixel_values).logits - reference).abs().max().item()
for name, diff in results.items():
    print(f"{name:<20} max |logit difference| = {diff:.2e}")
assert max(results.values()) < 1e-4

# %% [markdown]
# All four agree within 1e-4, as the contract asks. On this run they are identical, because
# every path runs the same float32 operations in the same order. Another batch layout or
# attention kernel can change the last bits.

# %% [markdown]
# ## The released sizes
#
# The presets `MiniVLConfig.internvl2_5_1b()` to `_8b()` carry the shapes of the released
# models. The LLM configs are written out from Qwen2.5-0.5B/3B-Instruct and
# internlm2_5-1_8b/7b-chat. InternLM2 runs as a Llama-architecture model, and its fused
# `wqkv` is split on load. Building a model on PyTorch's `meta` device allocates no memory,
# so we can count the parameters of an 8B model on a laptop in a second.

# %%
published = {"internvl2_5_1b": 0.938e9, "internvl2_5_2b": 2.21e9, "internvl2_5_4b": 3.71e9, "internvl2_5_8b": 8.08e9}
print(f"{'preset':<16}{'ViT':>14}{'mlp1':>13}{'LLM':>16}{'total':>16}{'published':>11}")
rows = {}
for name in ["tiny", *published]:
    counts = count_parameters(MiniVLConfig.preset(name))
    rows[name] = counts
    ref = f"{published[name] / 1e9:.2f}B" if name in published else "-"
    print(f"{name:<16}{counts['vision']:>14,}{counts['projector']:>13,}{counts['llm']:>16,}{counts['total']:>16,}{ref:>11}")
    if name in published:
        assert abs(counts["total"] / published[name] - 1) < 0.005

# %%
fig, ax = plt.subplots(figsize=(7, 3))
names = list(published)
bottom = np.zeros(len(names))
for part, colour in (("vision", "#4477aa"), ("projector", "#ccbb44"), ("llm", "#ee6677")):
    values = np.array([rows[n][part] / 1e9 for n in names])
    ax.bar([n.replace("internvl2_5_", "") for n in names], values, bottom=bottom, color=colour, label=part)
    bottom += values
ax.set_ylabel("parameters (billions)")
ax.set_title("InternVL 2.5: the same 0.3B ViT in front of LLMs of growing size")
ax.legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# ## A real checkpoint (gpu scale)
#
# At `gpu` scale the same class loads the released InternVL2.5-1B from the hub in its
# official layout. The weights come from `OpenGVLab/InternVL2_5-1B` and the image-token id
# from its `added_tokens.json`. The model then answers about the astronaut photo. At the
# other scales this cell does nothing.

# %%
if get_scale() == "gpu":
    from huggingface_hub import snapshot_download
    from transformers import AutoTokenizer

    repo = snapshot_download("OpenGVLab/InternVL2_5-1B", allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model"])
    real = MiniVL.from_pretrained(repo, dtype=torch.bfloat16).cuda()
    real_tokenizer = AutoTokenizer.from_pretrained(repo)
    tiles, counts = load_image_tiles(image, image_size=448, max_num=12)
    print(real.chat(real_tokenizer, tiles.to("cuda", torch.bfloat16), "Describe this image in one sentence.",
                    dict(max_new_tokens=64, do_sample=False), num_patches_list=counts))
else:
    print("scale is", get_scale(), "- set MINIVL_SCALE=gpu to chat with InternVL2.5-1B")

# %% [markdown]
# ## Measured result
#
# - Every step of the forward pass prints the shape the diagram predicts: for the 112 px
#   tiny ViT, 64 patches per tile, then 16 tokens per tile after pixel unshuffle. The
#   rebuilt features equal `model.extract_feature` exactly.
# - Saving and reloading in the minivl and official layouts gives bit-identical logits. The
#   transformers layout, read by minivl or by transformers itself, agrees within 1e-4.
# - The presets reproduce the published sizes within 0.5 %: 0.94B, 2.21B, 3.71B and 8.08B.
# - `benchmarks/model_step.py` times a forward and backward pass and greedy generation against
#   transformers' InternVL with the same weights, alternating the two. On 2 shared CPU cores
#   (tiny preset, medians of 9 rounds), the forward-and-backward time ratio (minivl / transformers)
#   was 1.00, and the generation speed ratio was 1.05 (570 versus 542 tokens/s). Both models run
#   the same transformers LLM, so the ratios stay close to 1. Run it on your machine for your
#   own numbers.

# %% [markdown]
# ## Summary
#
# - `MiniVL` = `vision_model` (InternViT) + `mlp1` + `language_model` (any transformers causal
#   LM). The names are the official ones, so a minivl state dict is an official one.
# - Image features replace the embeddings of the `<IMG_CONTEXT>` tokens in order. Tiles with
#   `image_flags == 0` are dropped, and a count mismatch is an error.
# - `forward` returns `.logits` and `.loss` (plain or InternVL-weighted). `generate` uses the
#   LLM's KV cache. `chat` and `batch_chat` follow the official API.
# - `from_pretrained` reads the minivl, official and transformers layouts, safetensors only
#   and strict by default. `save_pretrained(format=...)` writes all three.

# %% [markdown]
# ## Exercises
#
# 1. **Easy.** Change `max_num` when tiling the astronaut and predict the number of
#    `<IMG_CONTEXT>` tokens before you run the trace. Check it against the printed count.
# 2. **Medium.** Save the model with `save_pretrained(path, format="official")` and change its
#    `config.json` so that `select_layer` is -2. Reload it and explain why the logits change
#    while the weights are the same.
# 3. **Hard.** Build a `MiniVLConfig` whose LLM is Llama with 4 query heads and 2 KV heads, set
#    `official_llm_architecture="InternLM2ForCausalLM"`, and save it in the official layout.
#    Write your own split of `wqkv` from the description in `minivl/checkpoint.py` and check
#    it against `minivl.checkpoint.split_wqkv`.
