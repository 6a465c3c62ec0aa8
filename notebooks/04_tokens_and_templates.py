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
# # 4. Tokens and templates
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/minivl/minivl/blob/main/notebooks/04_tokens_and_templates.ipynb)
#
# Chapters 1 to 3 turned an image into a sequence of LLM-ready vectors. This chapter builds
# the other half of the input: the text. InternVL writes every sample as one chat string,
# marks where each image goes with special tokens, and trains only on the assistant's
# words. Getting one of these details wrong does not crash anything: the model simply learns
# the wrong thing. The code lives in `minivl.text` (`tokenizer.py`, `template.py`,
# `prompt.py`).

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
# - A byte-level BPE tokenizer, trained in about a second, whose special tokens (`<img>`,
#   `</img>`, `<IMG_CONTEXT>`, `<|im_start|>`, `<|im_end|>`, `<ref>`, `<box>`, ...) have
#   small fixed ids, wrapped as a standard transformers tokenizer with a chat template.
# - The `internvl2_5` conversation template, and the two older ones it replaced.
# - `preprocess_internvl2_5`: a conversation record in, `input_ids` and `labels` out, token
#   for token as InternVL 2.5's training code does it, rebuilt here step by step.
# - The inference prompt of `chat()`, and a check that it is exactly the training prefix.
# - The image-token budget of a sample, for the real 448 px model and for minivl's tiny one.
#
# ## The idea
#
# The LLM only ever sees token ids. An image enters as a run of placeholder tokens,
# `<IMG_CONTEXT>`, one per visual token, framed by `<img>` and `</img>`; the model later
# overwrites the embeddings at these positions with the projector's outputs (chapter 5).
# Around it, the ChatML-style template marks who speaks. The loss is computed only where the
# label is not -100: the assistant's answer and the `<|im_end|>` that ends it, so the model
# learns to answer and to stop, but never to predict the question or the image.

# %%
import time

import matplotlib.pyplot as plt
from matplotlib.patches import Patch, Rectangle

from minivl.projector import num_image_token
from minivl.scale import pick
from minivl.text import (
    IGNORE_TOKEN_ID,
    SPECIAL_TOKENS,
    build_generation_prompt,
    conversation_segments,
    default_corpus,
    expand_image_placeholders,
    format_token_rows,
    get_template,
    image_token_id,
    load_tokenizer,
    multi_image_prefix,
    preprocess_internvl2_5,
    token_rows,
    train_tokenizer,
    video_frame_prefix,
)

ROLE_COLOURS = {"system": "#d9d9d9", "user": "#9ecae1", "assistant": "#fdae6b"}


def draw_sequence(parts, title, width=12):
    """Draw (label, n_tokens, role, supervised) blocks as a bar of boxes, one per part."""
    fig, ax = plt.subplots(figsize=(width, 1.4))
    x = 0
    for label, n, role, supervised in parts:
        ax.add_patch(Rectangle((x, 0), n, 1, facecolor=ROLE_COLOURS[role], edgecolor="black",
                               hatch=None if supervised else "//", linewidth=0.8))
        ax.text(x + n / 2, 0.5, label, ha="center", va="center", fontsize=8)
        x += n
    ax.set_xlim(0, x)
    ax.set_ylim(0, 1)
    ax.set_yticks([])
    ax.set_xticks([])
    ax.set_xlabel("token positions (not to scale)")
    ax.set_title(title)
    handles = [Patch(facecolor=c, edgecolor="black", label=r) for r, c in ROLE_COLOURS.items()]
    handles.append(Patch(facecolor="white", edgecolor="black", hatch="//", label="label = -100"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    plt.show()


# Not to scale: a schematic of one single-image sample (token counts for the 448 px model).
draw_sequence(
    [("system", 24, "system", False), ("user\\n", 7, "user", False), ("<img>", 7, "user", False),
     ("<IMG_CONTEXT> x 256 per tile", 40, "user", False), ("</img>", 7, "user", False),
     ("question", 14, "user", False), ("assistant\\n", 14, "assistant", False),
     ("answer <|im_end|>", 22, "assistant", True), ("\\n", 4, "assistant", False)],
    "One training sample: who speaks (colour) and what is learned (no hatching)",
)

# %% [markdown]
# ## A tokenizer in a second
#
# At the `gpu` scale we use the checkpoint's own tokenizer (Qwen2.5 or InternLM2.5, with the
# InternVL tokens already added). For the tiny models we train our own byte-level BPE on a
# small corpus: byte-level means any text, even Chinese, can be encoded, because the 256
# bytes are always in the vocabulary. `default_corpus()` writes captions, questions, box
# coordinates, `Image-k` / `Frame-k` labels and rendered dialogues in the style of the
# synthetic suite (chapter 6). The special tokens are given to the trainer first, so their
# ids are 0, 1, 2, ... and never change.

# %%
corpus = default_corpus(n=pick(smoke=300, cpu=3000, gpu=3000))
vocab_size = pick(smoke=800, cpu=2000, gpu=2000)
start = time.perf_counter()
tok = train_tokenizer(corpus, vocab_size=vocab_size)
train_seconds = time.perf_counter() - start
print(f"{len(corpus)} lines, {sum(len(t) for t in corpus):,} characters -> vocabulary {len(tok)} "
      f"(asked for {vocab_size}) in {train_seconds:.2f} s")

# %%
# NBVAL_CHECK_OUTPUT
for token in SPECIAL_TOKENS:
    print(f"{tok.convert_tokens_to_ids(token):>3}  {token}")
assert image_token_id(tok) == 5
assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"

# %% [markdown]
# How does text split? Frequent words become one token (a leading space folds into the
# token, shown as `Ġ`), rare ones fall apart into pieces, digits are always split one by
# one (as Qwen2 does; box coordinates 0-1000 then need only ten digit tokens), and special
# tokens are never split or merged with their neighbours.

# %%
for text in ["There are 3 red circles at the top-left of the image.",
             "<ref>the blue square</ref><box>[[120, 45, 987, 1000]]</box>",
             "A zebra is an unusual word here.",
             "<img><IMG_CONTEXT><IMG_CONTEXT></img>"]:
    ids = tok(text, add_special_tokens=False)["input_ids"]
    print(f"{len(ids):>2} tokens: " + " | ".join(tok.convert_ids_to_tokens(ids)))
    assert tok.decode(ids) == text  # byte-level BPE round-trips exactly

# %% [markdown]
# The tokenizer is a standard transformers tokenizer: it saves to a directory and loads back
# with `AutoTokenizer.from_pretrained` (or `minivl.text.load_tokenizer`, which also loads
# real checkpoints). Code that needs the image-token id reads it from there, never from a
# constant: a real Qwen2.5-based checkpoint has `<IMG_CONTEXT>` at id 151667, ours at 5.
# Reading it happens twice per training sample, so `token_id` asks the tokenizer for that one
# entry (and checks the text encodes to it alone) rather than building the vocabulary as a
# dict: with Qwen2.5's 151,643 entries the dict costs about 0.1 s per call on one core of a
# 2-core machine, about 580 times the lookup (`python benchmarks/token_lookup.py`).

# %%
import tempfile
from pathlib import Path

with tempfile.TemporaryDirectory() as tmp:
    tok.save_pretrained(tmp)
    print(sorted(p.name for p in Path(tmp).iterdir()))
    reloaded = load_tokenizer(tmp)
    print("image_token_id read from the directory:", image_token_id(tmp))
sample = "<|im_start|>user\nHow many red circles?<|im_end|>\n"
assert reloaded(sample)["input_ids"] == tok(sample)["input_ids"]

# %% [markdown]
# ## Conversation templates
#
# InternVL renders every dialogue with a *template*: a system block, then each message after
# its role prefix, each closed by a separator. The 2.5 template `internvl2_5` closes with
# `<|im_end|>\n`; the 2.0-era `internlm2-chat` and `Hermes-2` used `<|im_end|>` without the
# newline. Its default system message is Chinese; in English: "You are Shusheng Wanxiang
# (InternVL), a multimodal large language model developed by Shanghai AI Laboratory,
# Tsinghua University and several partner institutions." A record's own system turn
# replaces it.

# %%
dialogue = [("user", "<image>\nWhat is it?"), ("assistant", "A cat."), ("user", "What colour?"),
            ("assistant", None)]  # None: the generation prompt, a bare assistant prefix
for name in ("internvl2_5", "internlm2-chat"):
    print(f"--- {name} ---")
    print(repr(get_template(name).render(dialogue)))

# %% [markdown]
# The trained tokenizer carries the same template as a Jinja chat template, so
# `apply_chat_template` gives the identical string:

# %%
messages = [{"role": "user", "content": "<image>\nWhat is it?"}, {"role": "assistant", "content": "A cat."},
            {"role": "user", "content": "What colour?"}]
chat = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
assert chat == get_template("internvl2_5").render(dialogue)
print("apply_chat_template == internvl2_5 template:", chat == get_template("internvl2_5").render(dialogue))

# %% [markdown]
# ## From a record to `input_ids` and `labels`
#
# Training records use InternVL's JSONL format: `{"image": [...], "conversations":
# [{"from": "human" | "gpt" | "system", "value": ...}]}`. Here is a two-turn, two-image
# sample. The `Image-k:` labels are part of the data text, so the answer can refer to an
# image by number. We use the tiny vision config of this book: 112 px tiles, patch 14,
# pixel unshuffle 0.5, so each tile costs 16 tokens. The first image has 2 tiles, the
# second 1.

# %%
tiny_per_tile = num_image_token(112, 14, 0.5)
num_patches_list = [2, 1]
record = {
    "image": ["scene_1.png", "scene_2.png"],
    "conversations": [
        {"from": "human", "value": multi_image_prefix(2) + "Which image has the most shapes?"},
        {"from": "gpt", "value": "Image-2"},
        {"from": "human", "value": "How many shapes are in Image-2?"},
        {"from": "gpt", "value": "There are 3 shapes."},
    ],
}
print("tokens per tile:", tiny_per_tile)
print(record["conversations"][0]["value"])

# %% [markdown]
# We rebuild `preprocess_internvl2_5` in three steps and then compare with `minivl`'s.
#
# **Step 1: placeholders.** The k-th `<image>` of the human turns becomes `<img>`, then
# `num_image_token x tiles_k` context tokens, then `</img>`. The number of placeholders must
# equal the number of images; `minivl` raises `PlaceholderMismatchError` otherwise.

# %%
counts = [tiny_per_tile * p for p in num_patches_list]
expanded = [dict(turn) for turn in record["conversations"]]
for turn in expanded:
    while turn["from"] == "human" and "<image>" in turn["value"]:
        n = counts.pop(0)
        turn["value"] = turn["value"].replace("<image>", "<img>" + "<IMG_CONTEXT>" * n + "</img>", 1)
assert expanded == expand_image_placeholders(record["conversations"], [32, 16])
print(expanded[0]["value"][:60], "...", expanded[0]["value"][-60:])

# %% [markdown]
# **Step 2: segments.** One string per turn, with the system block first. Each segment is
# tokenized on its own, as the official code does.
#
# **Step 3: labels.** System and user segments are all -100. In an assistant segment the
# header `<|im_start|>assistant\n` and the final `\n` are -100; the content and its
# `<|im_end|>` are kept.

# %%
header = len(tok("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"])
input_ids, labels = [], []
for role, text in conversation_segments(expanded):
    ids = tok(text, add_special_tokens=False)["input_ids"]
    input_ids += ids
    if role == "assistant":
        labels += [IGNORE_TOKEN_ID] * header + ids[header:-1] + [IGNORE_TOKEN_ID]
    else:
        labels += [IGNORE_TOKEN_ID] * len(ids)

sample = preprocess_internvl2_5(record["conversations"], tok, num_patches_list, num_image_token=tiny_per_tile)
assert sample.input_ids.tolist() == input_ids and sample.labels.tolist() == labels
print(f"{len(input_ids)} tokens, {sample.num_image_tokens} image tokens, {sample.num_supervised} supervised")
print("segments:", sample.segments)

# %% [markdown]
# Every token, by turn; supervised tokens are in `«»`, image runs are collapsed. Check that
# only the answers and their `<|im_end|>` are supervised:

# %%
rows = token_rows(sample, tok)
print(format_token_rows(rows))
supervised_text = tok.decode([t for t in sample.labels.tolist() if t != IGNORE_TOKEN_ID])
print("\nsupervised text:", repr(supervised_text))
assert supervised_text == "Image-2<|im_end|>There are 3 shapes.<|im_end|>"


# %% [markdown]
# The same sequence as a picture, one box per token (image runs collapsed into one box;
# the Chinese pieces of the default system message are drawn as `(zh)`):

# %%
def draw_rows(rows, title, line_width=52.0):
    """One box per row of token_rows(), wrapped into lines of about line_width units."""
    lines, line, x = [], [], 0.0
    for r in rows:
        piece = r["piece"] if r["piece"].replace("␣", " ").isascii() else "(zh)"  # no Chinese glyphs in the font
        label = piece + (f"×{r['count']}" if r["count"] > 1 else "")
        w = 0.3 * len(label) + 0.6
        if line and x + w > line_width:
            lines.append(line)
            line, x = [], 0.0
        line.append((x, w, label, r))
        x += w
    lines.append(line)
    fig, ax = plt.subplots(figsize=(14, 0.45 * len(lines) + 1.0))
    for y, line in enumerate(lines):
        for x, w, label, r in line:
            ax.add_patch(Rectangle((x, -y), w, 0.8, facecolor=ROLE_COLOURS[r["role"]], edgecolor="black",
                                   linewidth=0.5, hatch=None if r["supervised"] else "//"))
            ax.text(x + w / 2, -y + 0.4, label, ha="center", va="center", fontsize=6.5)
    ax.set_xlim(0, line_width)
    ax.set_ylim(-len(lines) + 0.8, 0.9)
    ax.axis("off")
    ax.set_title(title)
    handles = [Patch(facecolor=c, edgecolor="black", label=r) for r, c in ROLE_COLOURS.items()]
    handles.append(Patch(facecolor="white", edgecolor="black", hatch="//", label="label = -100"))
    ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=4, fontsize=8)
    plt.show()


draw_rows(rows, "A two-image, two-turn sample: colour = role, hatched = masked out of the loss")

# %% [markdown]
# ## Video, grounding and text-only samples
#
# A video record has `<video>\n` in its first question; the loader replaces it by one
# `Frame-k: <image>` line per sampled frame, and every frame is a single tile with no
# thumbnail. Grounding answers use `<ref>phrase</ref><box>[[x1, y1, x2, y2]]</box>` with
# coordinates scaled to 0-1000. A text-only sample has no image tokens at all.

# %%
print(video_frame_prefix(3))
video = preprocess_internvl2_5(
    [{"from": "human", "value": "<video>\nIn which direction does the red circle move?"},
     {"from": "gpt", "value": "left"}], tok, num_frames=4, num_image_token=tiny_per_tile)
assert video.num_image_tokens == 4 * tiny_per_tile
print(format_token_rows(token_rows(video, tok)).splitlines()[1])

# %%
grounding = preprocess_internvl2_5(
    [{"from": "human", "value": "Please provide the bounding box coordinate of the region this sentence "
                                "describes: <ref>the red circle</ref>"},
     {"from": "gpt", "value": "<ref>the red circle</ref><box>[[102, 340, 568, 1000]]</box>"}],
    tok, [1], num_image_token=tiny_per_tile)
print(format_token_rows(token_rows(grounding, tok)).splitlines()[-1])
text_only = preprocess_internvl2_5(
    [{"from": "system", "value": "Answer briefly."}, {"from": "human", "value": "What is 12 + 30?"},
     {"from": "gpt", "value": "42"}], tok)
print(format_token_rows(token_rows(text_only, tok)))
assert text_only.num_image_tokens == 0 and grounding.num_image_tokens == tiny_per_tile

# %% [markdown]
# Bad records fail loudly rather than training on garbage. Each of these raises a clear
# error (`ConversationError`, `PlaceholderMismatchError` or `SampleTooLongError`):

# %%
bad_records = {
    "two images, one placeholder": ([{"from": "human", "value": "<image>\nSame?"},
                                     {"from": "gpt", "value": "No."}], [1, 1], {}),
    "two answers in a row": ([{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hi"},
                              {"from": "gpt", "value": "Hi"}], [], {}),
    "unknown role": ([{"from": "user", "value": "Hi"}, {"from": "gpt", "value": "Hi"}], [], {}),
    "too long": (record["conversations"], num_patches_list, {"max_length": 50}),
}
for name, (conv, patches, kwargs) in bad_records.items():
    try:
        preprocess_internvl2_5(conv, tok, patches, num_image_token=tiny_per_tile, **kwargs)
    except ValueError as err:
        print(f"{name:>28}: {type(err).__name__}: {err}")
    else:
        raise AssertionError(f"{name} was accepted")

# %% [markdown]
# About `max_length`: InternVL simply cuts the token list, which can cut an image span in
# half; its loader then notices the wrong `</img>` count and retries another sample.
# `minivl` raises `SampleTooLongError` by default so the data loader can skip the sample and
# count it. With `truncation="after_images"` it cuts the tail instead, but only when the cut
# falls after the last `</img>` and leaves at least one supervised token.

# %% [markdown]
# ## Inference: the same prefix
#
# At inference, InternVL's `chat()` puts `<image>\n` before the first question, renders the
# template up to a bare `<|im_start|>assistant\n` and expands the images the same way. The
# generation prompt is exactly the training sequence cut before the first answer, so the
# model sees at test time what it saw in training:

# %%
prompt = build_generation_prompt(record["conversations"][0]["value"], num_patches_list=num_patches_list,
                                 num_image_token=tiny_per_tile)
prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
assert sample.input_ids.tolist()[:len(prompt_ids)] == prompt_ids
print(f"prompt: {len(prompt_ids)} tokens; the training sample continues with "
      f"{tok.decode(sample.input_ids[len(prompt_ids):len(prompt_ids) + 4].tolist())!r}")

# %% [markdown]
# ## The image-token budget
#
# Each tile costs `(image_size / patch_size)^2 x 0.5^2` tokens after the pixel unshuffle
# (chapter 3): 256 for InternVL's 448 px tiles, 16 for minivl's tiny 112 px ones. A sample
# with n > 1 tiles also has a thumbnail, and each image adds `<img>` and `</img>`. We
# count the tokens `preprocess_internvl2_5` really produces for a one-question sample at
# 1 to 12 tiles and compare with that formula.

# %%
question = [{"from": "human", "value": "What is it?"}, {"from": "gpt", "value": "A cat."}]
text_tokens = len(preprocess_internvl2_5(question, tok).input_ids)
tiles = list(range(1, 13))
budgets = {}
for name, per_tile in {"448 px, patch 14 (InternVL 2.5)": num_image_token(448, 14, 0.5),
                       "112 px, patch 14 (minivl tiny)": tiny_per_tile}.items():
    counts = []
    for n in tiles:
        with_thumbnail = n + (1 if n > 1 else 0)
        out = preprocess_internvl2_5(question, tok, [with_thumbnail], num_image_token=per_tile)
        assert out.num_image_tokens == per_tile * with_thumbnail
        assert len(out.input_ids) == text_tokens + per_tile * with_thumbnail + 2 + 1  # + <img></img> + "\n"
        counts.append(out.num_image_tokens)
    budgets[name] = counts
    print(f"{name}: {per_tile} per tile; 1 tile -> {counts[0]}, 12 tiles + thumbnail -> {counts[-1]} image tokens")
print(f"the text of this sample (template included): {text_tokens} tokens")

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
for ax, (name, counts) in zip(axes, budgets.items()):
    ax.bar(tiles, counts, color="tab:blue", label="image tokens")
    ax.bar(tiles, [text_tokens] * len(tiles), bottom=counts, color="tab:orange", label="text tokens")
    ax.set_title(name, fontsize=10)
    ax.set_xlabel("tiles (a thumbnail is added when > 1)")
    ax.set_xticks(tiles)
axes[0].set_ylabel("tokens in the sample")
axes[0].legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Measured result
#
# How well does the tiny tokenizer compress text it was not trained on (a corpus with a
# different seed), and what share of a sample's tokens are image tokens and supervised
# tokens? On a 2-core CPU the tokenizer trains in well under a second; the bytes per token
# are around 3 to 4 on held-out text in the corpus style (GPT-style tokenizers reach about
# 4 on English).

# %%
held_out = default_corpus(n=300, seed=1)
n_bytes = sum(len(t.encode("utf-8")) for t in held_out)
n_tokens = sum(len(ids) for ids in tok(held_out, add_special_tokens=False)["input_ids"])
print(f"tokenizer training: {train_seconds:.2f} s for vocabulary {len(tok)}")
print(f"held-out text: {n_bytes:,} bytes -> {n_tokens:,} tokens = {n_bytes / n_tokens:.2f} bytes per token")
for name, s in {"two-image sample": sample, "video (4 frames)": video, "grounding": grounding,
                "text only": text_only}.items():
    n = len(s.input_ids)
    print(f"{name:>18}: {n:>4} tokens, image {s.num_image_tokens / n:5.1%}, supervised {s.num_supervised / n:5.1%}")
assert n_bytes / n_tokens > 2.0

# %% [markdown]
# ## Summary
#
# - InternVL's text side is a chat string: `<|im_start|>role\n ... <|im_end|>\n` per turn
#   (`internvl2_5`), with its own default system message, replaced by a record's system turn.
# - Each `<image>` becomes `<img>` + `<IMG_CONTEXT>` x (tokens per tile x tiles) + `</img>`;
#   multi-image text numbers images `Image-k:`, video frames `Frame-k:`, one tile each.
# - Only the assistant's content and its `<|im_end|>` carry a label; the header and the
#   trailing newline are -100 like everything else.
# - The image-token id is read from the tokenizer; our tiny BPE puts the special tokens at
#   ids 0 to 11, a real checkpoint elsewhere.
# - Over-long samples and mismatched placeholders raise errors the data loader counts,
#   instead of silently training on broken images.
#
# ## Exercises
#
# 1. *Easy.* Render the same three-turn dialogue with `internvl2_5` and with `Hermes-2`, and
#    count the characters and tokens that differ. Which token does generation stop at in
#    each case (`Template.stop_token`)?
# 2. *Medium.* Train tokenizers with `vocab_size` 400, 1000 and 2000 on `default_corpus()`
#    and plot bytes per token on the held-out corpus. Where does the vocabulary stop
#    growing, and why (hint: the corpus runs out of pairs to merge)?
# 3. *Hard.* Write a version of the label masking that tokenizes the whole conversation at
#    once and finds the assistant spans by character offsets
#    (`return_offsets_mapping=True`). Check that it agrees with `preprocess_internvl2_5` on
#    every sample of this chapter, then find an assistant answer (for example one that
#    starts with a newline) for which the two disagree.
