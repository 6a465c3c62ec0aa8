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
# # 14. Inference and grounding
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/minivl/minivl/blob/main/notebooks/14_inference_and_grounding.ipynb)
#
# A trained InternVL model is used through one method, `chat()`: tile the image, put
# `<img><IMG_CONTEXT>...</img>` where the `<image>` placeholder was, render the conversation
# template and let the LLM generate. This chapter talks to the small model that
# `minivl quickstart` trains (chapters 10-12): one image, a streamed answer, several turns,
# several images, a video, and grounding, where the answer is a box in InternVL's 0-1000
# coordinates that we draw on the image and score against the gold box.
#
# The code lives in `minivl/model.py` (`MiniVL.chat`, `batch_chat`), `minivl/eval/inference.py`
# (`chat_command`, `parse_grounding`, `draw_boxes`) and `minivl/eval/metrics.py`
# (`parse_box`, `box_iou`).

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
# - a chat session with the quickstart model: one image, streaming with a transformers
#   `TextStreamer`, a follow-up turn that sees the history, several images numbered
#   `Image-1`, `Image-2`, ..., and a video whose frames are numbered `Frame-1`, `Frame-2`, ...;
# - grounding: ask for `<ref>the triangle</ref>`, read the `<box>[[x1, y1, x2, y2]]</box>`
#   answer, draw it over the image next to the gold box, and measure IoU@0.5 on the held-out
#   split against two baselines that never look at the image;
# - at `gpu` scale, the same calls on the released InternVL2.5-1B.
#
# ## The idea
#
# Everything the model sees is text plus image embeddings at the positions of the
# `<IMG_CONTEXT>` tokens. One image of `t` tiles becomes `<img>` + `t x 16` context tokens +
# `</img>` for the cpu-scale model (112 px tiles, 64 patches, pixel unshuffle to 16; 256 per
# 448 px tile in InternVL 2.5). Several images get the prefix `Image-1: <image>\nImage-2: <image>\n...`
# and a video gets one `Frame-k: <image>` line per frame, each frame a single tile.
#
# Grounding answers are text too. InternVL writes a box as four integers in **0-1000**
# coordinates, whatever the image size: $x' = \lfloor 1000\,x / W \rfloor$ and
# $y' = \lfloor 1000\,y / H \rfloor$. The figure shows the same box in pixels and in the
# 0-1000 frame; reading an answer back is the inverse scaling.

# %%
import json
from pathlib import Path

import matplotlib.pyplot as plt
import torch

from minivl.scale import cache_dir, get_scale, pick

SCALE = get_scale()
torch.manual_seed(0)
QS = cache_dir("quickstart", SCALE)
if not (QS / "final" / "config.json").exists():
    # smoke: seconds; cpu: about 10 minutes once, then reused from the cache
    from minivl.quickstart import run_quickstart

    run_quickstart(QS, SCALE, progress=False)
TEST_META = QS / "data" / "test.json"
print("model:", QS.name + "/final", "| test split:", TEST_META.name)

# %%
from minivl.data.records import read_meta

metas = read_meta(TEST_META)
ground = [r for r in metas["grounding"].read_records(strict=False)[0] if "<box>" in r.conversations[-1]["value"]]
rec = ground[0]
W, H = rec.extra["meta"]["width"], rec.extra["meta"]["height"]
gold_text = rec.conversations[-1]["value"]
print("question:", rec.conversations[0]["value"].replace("\n", " | "))
print("gold answer:", gold_text)

from PIL import Image

from minivl.eval.metrics import parse_box

image0 = Image.open(metas["grounding"].image_path(rec.images[0])).convert("RGB")
gold_px = parse_box(gold_text, W, H)
fig, axes = plt.subplots(1, 2, figsize=(8, 3.4))
axes[0].imshow(image0)
axes[0].add_patch(plt.Rectangle(gold_px[:2], gold_px[2] - gold_px[0], gold_px[3] - gold_px[1], fill=False,
                                color="lime", lw=2))
axes[0].set_title(f"pixels ({W} x {H})")
x1, y1, x2, y2 = (round(v, 1) for v in gold_px)
axes[0].set_xlabel(f"box ({x1}, {y1}, {x2}, {y2})")
axes[1].imshow(image0, extent=(0, 1000, 1000, 0))
b = [round(v * 1000 / s) for v, s in zip(gold_px, (W, H, W, H))]  # pixels -> 0-1000
axes[1].add_patch(plt.Rectangle(b[:2], b[2] - b[0], b[3] - b[1], fill=False, color="lime", lw=2))
axes[1].set_title("InternVL's 0-1000 frame")
axes[1].set_xlabel(f"<box>[[{', '.join(str(int(v)) for v in b)}]]</box>")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Loading the model
#
# `load_model` reads any of the three checkpoint layouts (chapter 5) and the tokenizer saved
# beside the weights. At `cpu` scale it is the quickstart model: an InternViT of 2 layers,
# 64 wide (warm-started on rendered scenes), and a small Qwen2-style LLM, trained by a
# quickstart run of about 9.5 minutes on 2 CPU cores on the synthetic suite (chapters 10-12). Shape scenes were
# trained as one 112 px tile (their meta's `max_dynamic_patch`), so we ask with the same
# tiling.

# %%
from minivl.eval.inference import load_model

model, tok = load_model(QS / "final")
n_params = sum(p.numel() for p in model.parameters())
print(f"{n_params / 1e6:.2f}M parameters, {model.num_image_token} tokens per tile, "
      f"{model.config.vision.image_size}px tiles, template {model.config.template!r}")

# %% [markdown]
# ## One image
#
# `model.chat(tokenizer, pixel_values, question, generation_config)` does the whole chain.
# `verbose=True` prints the prompt it built; here the `<IMG_CONTEXT>` run is shortened for
# display. The test split's shape questions come with their gold answer, so we can see at once
# whether the model is right.

# %%
from minivl.vision.transforms import load_image_tiles

size = model.config.vision.image_size
shape_meta = metas["shape_qa"]
shape_recs = shape_meta.read_records(strict=False)[0]
GREEDY = {"max_new_tokens": 32, "do_sample": False}


def ask(record, meta, question=None, **kw):
    """Tile the record's image(s) and ask its question (or ``question``) greedily."""
    paths = [meta.image_path(p) for p in record.images]
    pv, patches = load_image_tiles(paths if len(paths) > 1 else paths[0], image_size=size,
                                   max_num=meta.max_dynamic_patch or 6)
    q = question or record.conversations[0]["value"]
    with torch.no_grad():
        return model.chat(tok, pv, q, GREEDY, num_patches_list=patches, **kw), pv, patches


r = shape_recs[0]
pv, patches = load_image_tiles(shape_meta.image_path(r.images[0]), image_size=size,
                               max_num=shape_meta.max_dynamic_patch or 6)
print("pixel_values", tuple(pv.shape), "tiles per image", patches)  # (tiles, 3, S, S)
prompt = model.expand_image_placeholders(model.build_chat_prompt(r.conversations[0]["value"]), patches)
short = prompt.replace("<IMG_CONTEXT>" * model.num_image_token, "<IMG_CONTEXT>x16 ")
print(short)
n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"])
n_image = prompt.count("<IMG_CONTEXT>")
print(f"prompt: {n_prompt} tokens, of which {n_image} image tokens ({n_image / n_prompt:.0%})")
assert n_image == model.num_image_token * sum(patches)

# %%
rows = []
for r in shape_recs[: pick(smoke=4, cpu=8, gpu=8)]:
    answer, _, _ = ask(r, shape_meta)
    gold = r.conversations[-1]["value"]
    rows.append((r.conversations[0]["value"].replace("<image>\n", ""), answer, gold, answer.strip().lower() == gold.lower()))
for q, a, g, ok in rows:
    print(f"{'right' if ok else 'WRONG':5}  {q:<40} model: {a!r:<12} gold: {g!r}")
print(f"{sum(ok for *_, ok in rows)}/{len(rows)} right")

# %% [markdown]
# ## Streaming
#
# Any transformers streamer in `generation_config["streamer"]` receives the tokens as they
# are generated: `TextStreamer` prints them, `TextIteratorStreamer` hands them to another
# thread (a web UI). `chat_command`, the back-end of `minivl chat`, streams into any file
# object. The streamed text is the same answer as the one `chat()` returns.

# %%
import io

from transformers import TextStreamer

from minivl.eval.inference import chat_command

r = shape_recs[min(1, len(shape_recs) - 1)]
image_path = shape_meta.image_path(r.images[0])
question = r.conversations[0]["value"].replace("<image>\n", "")
pv, patches = load_image_tiles(image_path, image_size=size, max_num=shape_meta.max_dynamic_patch or 6)
print("streamed: ", end="")
with torch.no_grad():
    answer = model.chat(tok, pv, question, {**GREEDY, "streamer": TextStreamer(tok, skip_prompt=True,
                                                                               skip_special_tokens=True)})
buffer = io.StringIO()
chat_command(None, [image_path], question, max_num=shape_meta.max_dynamic_patch or 6, max_new_tokens=32, model=model, tokenizer=tok, out=buffer)
print("chat_command wrote:", repr(buffer.getvalue()))
assert buffer.getvalue().strip() == answer

# %% [markdown]
# ## Several turns
#
# With `history`, `chat()` renders the earlier turns into the template; `<image>` is added
# only to the first question. The suite's `shape_qa` training images carry three questions
# each, so the model has seen later turns; the second and third turns test whether it
# answers the new question or repeats itself.

# %%
r = shape_recs[min(2, len(shape_recs) - 1)]
first_q = r.conversations[0]["value"].replace("<image>\n", "")
pv, patches = load_image_tiles(shape_meta.image_path(r.images[0]), image_size=size,
                               max_num=shape_meta.max_dynamic_patch or 6)
shapes = r.extra["meta"]["shapes"]
history = None
turns = [first_q, "How many shapes are there?", f"What colour is the {shapes[0]['kind']}?"]
for turn in turns:
    with torch.no_grad():
        answer, history = model.chat(tok, pv, turn, GREEDY, history=history, return_history=True)
    print(f"user: {turn}\nmodel: {answer}")
print("gold:", r.conversations[-1]["value"], "|", len(shapes), "shapes |", shapes[0]["colour"], shapes[0]["kind"])
second = model.build_chat_prompt(turns[1], history[:1])
assert second.count("<image>") == 1 and second.index(first_q) < second.index(turns[1])

# %% [markdown]
# ## Several images
#
# Each image is tiled on its own (with `tiles_per_image` tiles, chapter 1) and
# `num_patches_list` tells `chat()` how many tiles belong to each `<image>`. The question
# names the images by number.

# %%
mi_meta = metas["multi_image"]
mi_recs = mi_meta.read_records(strict=False)[0]
right = 0
n_mi = min(6, len(mi_recs))
for r in mi_recs[:n_mi]:
    answer, pv, patches = ask(r, mi_meta)
    gold = r.conversations[-1]["value"]
    right += answer.strip() == gold
    print(f"{len(patches)} images, tiles {patches}: {r.conversations[0]['value'].splitlines()[-1]!r}"
          f" -> {answer!r} (gold {gold!r})")
print(f"{right}/{n_mi} right")
print(r.conversations[0]["value"])  # the prefix InternVL uses

# %% [markdown]
# ## Video
#
# A video is a folder of frames. `get_frame_indices` picks the frames (here all of them), each
# becomes one tile, and `<video>` is replaced by `Frame-1: <image>\nFrame-2: <image>...`.

# %%
from minivl.text.prompt import video_frame_prefix
from minivl.vision.tiling import get_frame_indices
from minivl.vision.transforms import load_video_tiles

vid_meta = metas["video"]
vid_recs = vid_meta.read_records(strict=False)[0]
right, n_vid = 0, min(6, len(vid_recs))
for r in vid_recs[:n_vid]:
    frames = sorted(vid_meta.image_path(r.video).glob("*.png"))
    frames = [frames[i] for i in get_frame_indices(len(frames), len(frames), sample="middle")]
    pv, patches = load_video_tiles(frames, image_size=size)  # (frames, 3, S, S), one tile each
    q = r.conversations[0]["value"].replace("<video>", video_frame_prefix(len(frames)), 1)
    with torch.no_grad():
        answer = model.chat(tok, pv, q, GREEDY, num_patches_list=patches)
    gold = r.conversations[-1]["value"]
    right += answer.strip() == gold
    print(f"{len(frames)} frames: {q.splitlines()[-1]!r} -> {answer!r} (gold {gold!r})")
print(f"{right}/{n_vid} right")
print(q)

fig, axes = plt.subplots(1, len(frames), figsize=(2 * len(frames), 2))
for ax, f in zip(axes, frames):
    ax.imshow(Image.open(f))
    ax.set_title(f.stem, fontsize=8)
    ax.axis("off")
plt.suptitle(f"{q.splitlines()[-1]} gold: {gold}, model: {answer}", fontsize=9)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## Grounding
#
# The referring question is InternVL's RefCOCO prompt
# (`minivl.eval.prompts.GROUNDING_PROMPT`). `parse_grounding` reads every
# `<ref>phrase</ref><box>[[...]]</box>` of the answer in 0-1000 coordinates, `draw_boxes`
# draws them, and the RefCOCO metric reads the **first** box, scales it to pixels and counts
# a hit when its IoU with the gold box is at least 0.5. Below: the model's box (drawn by
# `draw_boxes`) next to the gold box (green).
#
# One detail of decoding: `<ref>`, `</ref>`, `<box>` and `</box>` are special tokens, and
# `chat()` decodes with `skip_special_tokens=True`, as the official `chat()` does. The
# returned text therefore reads `the triangle[[375, 723, 562, 911]]`: the tags are gone,
# the phrase and the box remain. `parse_grounding` falls back to bare `[[...]]` boxes when
# there is no `<box>` tag, and the RefCOCO scorer only ever looked for the numbers.

# %%
from minivl.eval.inference import draw_boxes, parse_grounding
from minivl.eval.metrics import box_iou
from minivl.eval.prompts import build_grounding_prompt

g_meta = metas["grounding"]
fig, axes = plt.subplots(2, 3, figsize=(9, 6))
for ax in axes.flat[len(ground):]:
    ax.axis("off")
for ax, r in zip(axes.flat, ground[:6]):
    w, h = r.extra["meta"]["width"], r.extra["meta"]["height"]
    answer, _, _ = ask(r, g_meta)
    gold = parse_box(r.conversations[-1]["value"], w, h)
    pred = parse_box(answer, w, h)
    iou = box_iou(pred, gold) if pred is not None else 0.0
    drawn = draw_boxes(Image.open(g_meta.image_path(r.images[0])), answer)
    ax.imshow(drawn)
    ax.add_patch(plt.Rectangle(gold[:2], gold[2] - gold[0], gold[3] - gold[1], fill=False, color="lime", lw=1.5,
                               ls="--"))
    phrase = r.conversations[0]["value"].split("<ref>")[1].split("</ref>")[0]
    ax.set_title(f"{phrase}: IoU {iou:.2f}", fontsize=9)
    ax.axis("off")
plt.suptitle("model box (solid, drawn by draw_boxes) vs gold box (green, dashed)")
plt.tight_layout()
plt.show()
print("last answer:", repr(answer), "->", parse_grounding(answer))
assert r.conversations[0]["value"].endswith(build_grounding_prompt(phrase))

# %% [markdown]
# ## Measured result: grounding on the held-out split
#
# All grounding questions of the test split, answered in batches by `batch_chat`, scored with
# IoU@0.5. Two baselines that never look at the image put the numbers in context: the mean
# gold box of the **training** split, and a box of the right phrase's average size centred in
# the image.

# %%
from minivl.eval.metrics import grounding_accuracy

n_eval = len(ground)  # the whole test split (80 questions at cpu scale, a few at smoke)
texts, golds, sizes = [], [], []
for start in range(0, n_eval, 16):
    chunk = ground[start:min(start + 16, n_eval)]
    pixels, patches, questions = [], [], []
    for r in chunk:
        pv, n = load_image_tiles(g_meta.image_path(r.images[0]), image_size=size, max_num=g_meta.max_dynamic_patch or 6)
        pixels.append(pv)
        patches += n
        questions.append(r.conversations[0]["value"])
    with torch.no_grad():
        texts += model.batch_chat(tok, torch.cat(pixels), questions, GREEDY, num_patches_list=patches)
    for r in chunk:
        w, h = r.extra["meta"]["width"], r.extra["meta"]["height"]
        golds.append(parse_box(r.conversations[-1]["value"], w, h))
        sizes.append((w, h))

train_meta = read_meta(QS / "data" / "train.json")["grounding"]
# (the training split holds a few deliberately corrupted answers, for chapter 7: skip them)
train_boxes = [boxes[0][1] for t in train_meta.read_records(strict=False)[0]
               if (boxes := parse_grounding(t.conversations[-1]["value"]))]
print(f"{len(train_boxes)} training boxes")
mean_box = [sum(b[i] for b in train_boxes) / len(train_boxes) for i in range(4)]
bw = sum(b[2] - b[0] for b in train_boxes) / len(train_boxes)
bh = sum(b[3] - b[1] for b in train_boxes) / len(train_boxes)
centre_box = [500 - bw / 2, 500 - bh / 2, 500 + bw / 2, 500 + bh / 2]
as_text = lambda b: "[[" + ", ".join(str(round(v)) for v in b) + "]]"  # noqa: E731

acc = grounding_accuracy(texts, golds, sizes)
parsed = [parse_box(t, w, h) for t, (w, h) in zip(texts, sizes)]
mean_iou = sum(box_iou(p, g) if p is not None else 0.0 for p, g in zip(parsed, golds)) / len(golds)
base_mean = grounding_accuracy([as_text(mean_box)] * len(golds), golds, sizes)
base_centre = grounding_accuracy([as_text(centre_box)] * len(golds), golds, sizes)
print(f"{len(golds)} grounding questions ({SCALE} scale)")
print(f"  model                  IoU@0.5 {acc:6.1%}   mean IoU {mean_iou:.3f}   parsed {sum(p is not None for p in parsed)}/{len(parsed)}")
print(f"  mean training box      IoU@0.5 {base_mean:6.1%}")
print(f"  centred average box    IoU@0.5 {base_centre:6.1%}")
ordered = [p for p in parsed if p is not None and p[0] < p[2] and p[1] < p[3]]
print(f"well-formed boxes (x1 < x2 and y1 < y2): {len(ordered)}/{len(parsed)}")
pred_w = sum(p[2] - p[0] for p in ordered) / max(1, len(ordered))
gold_w = sum(g[2] - g[0] for g in golds) / len(golds)
print(f"mean width of the well-formed boxes {pred_w:.1f} px, of the gold boxes {gold_w:.1f} px")
assert 0.0 <= acc <= 1.0 and len(texts) == n_eval

# %% [markdown]
# What the numbers say (cpu scale, the quickstart model, measured on 2 CPU cores): the model
# has learnt the **form** of a grounding answer (every answer has the phrase and a
# four-number box that parses, and all 80 boxes are well-formed, a little wider than the
# gold ones), and hardly any of the **content**: IoU@0.5 is 3.8 % (three boxes of 80), one box
# more than the better of the two baselines that never look at the image (0 % and 2.5 %), a
# difference no larger than chance makes. Each number is a separate token
# to this model, and putting four of them where the shape is has to be learnt from 790
# training boxes. The other capabilities fare better: three of eight shape questions
# above right, two of six multi-image questions, and three of six video clips. Chapter 15
# measures all of them on the whole test split against the score of always giving the most
# common answer. Grounding is the hardest of them: in the report it
# needs dedicated data (RefCOCO, Objects365 boxes) and large models.
#
# ## The real model (gpu scale)
#
# At `gpu` scale the same calls run on the released InternVL2.5-1B (downloaded from the Hub,
# about 2 GB), on one of scikit-image's sample photographs. InternVL2.5-1B's RefCOCO val
# accuracy is 89.8 in the report (Table 11).

# %%
if SCALE == "gpu":
    from skimage import data as skdata

    from minivl.model import MiniVL
    from minivl.text.tokenizer import load_tokenizer

    from huggingface_hub import snapshot_download

    path = snapshot_download("OpenGVLab/InternVL2_5-1B")
    real = MiniVL.from_pretrained(path, dtype=torch.bfloat16).cuda().eval()
    real_tok = load_tokenizer(path)
    photo = Image.fromarray(skdata.astronaut())
    pv, patches = load_image_tiles(photo, image_size=448, max_num=12)
    pv = pv.to("cuda", torch.bfloat16)  # (tiles, 3, 448, 448)
    cfg = {"max_new_tokens": 256, "do_sample": False,
           "streamer": TextStreamer(real_tok, skip_prompt=True, skip_special_tokens=True)}
    with torch.no_grad():
        description = real.chat(real_tok, pv, "Describe the image in two sentences.", cfg)
        boxed = real.chat(real_tok, pv, build_grounding_prompt("the flag"), {**cfg, "streamer": None})
    print(boxed)
    plt.imshow(draw_boxes(photo, boxed))
    plt.axis("off")
    plt.show()
else:
    print("gpu scale only: set MINIVL_SCALE=gpu on a machine with a GPU to chat with InternVL2.5-1B")

# %% [markdown]
# ## Summary
#
# - `chat()` = tiles -> `<img>` + `<IMG_CONTEXT>` x (tokens per tile x tiles) + `</img>` in the
#   `internvl2_5` template -> `generate` with the KV cache, stopping at `<|im_end|>`.
#   Image tokens are a large part of a prompt (32 % of the one-tile question above, 16
#   tokens; with 256 tokens per tile and up to 13 tiles in InternVL 2.5 they are most of it).
# - Streaming is a transformers streamer in the generation config; multi-turn chat is the
#   history rendered into the template; several images are `Image-k: <image>` lines with
#   `num_patches_list`; a video is `Frame-k: <image>` lines with one tile per frame.
# - Grounding answers are text: `<ref>phrase</ref><box>[[x1, y1, x2, y2]]</box>` in 0-1000
#   coordinates; scoring reads the first box and counts IoU >= 0.5.
# - The cpu-scale model has learnt every answer format and some of the content: more than
#   half of the shape answers and nearly half of the multi-image answers on the whole test
#   split are right (chapter 15); its boxes are no better than image-blind baselines.
#
# ## Exercises
#
# 1. **Easy.** Ask the model a grounding question about a shape that is *not* in the image.
#    What does it answer, and what would a good model answer?
# 2. **Medium.** Re-run the grounding measurement with `max_num=1` (one tile) instead of the
#    task's budget. Does the box quality change? Why might tiling matter less for a 112 px image?
# 3. **Hard.** Train the quickstart model longer on the grounding task alone (chapter 12's
#    `train_stage` with a meta file that only holds `grounding`) and plot IoU@0.5 against the
#    number of steps. How many steps does it take to beat the centred-box baseline?
