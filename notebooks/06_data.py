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
# # 6. Data
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/minivl/minivl/blob/main/notebooks/06_data.ipynb)
#
# A vision-language model learns what its data shows it. InternVL 2.5 trains on a mixture of
# hundreds of data sets, each described by one line of a **meta JSON** file and stored as
# **JSONL conversation records**. This chapter follows one mixture from files on disk to the
# tensors the model receives. At `cpu` scale the data is minivl's offline synthetic suite:
# ten small tasks, each built to test one skill the report cares about. The code lives in
# `minivl.data`: `synthetic/` (the generators), `records.py` (the formats), `dataset.py`
# (records to tensors, with counted skips), `stats.py` (the tables of this chapter) and
# `hub.py` (real data sets).

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
# - The **synthetic suite** at the active scale: images, JSONL records and meta files,
#   generated once and cached.
# - A look at the samples, the **four record kinds** (text, single image, multi-image, video)
#   and the meta entry that sets each data set's tile budget and `repeat_time`.
# - The **mixture** in samples and in tokens, and what a whole or fractional `repeat_time`
#   does to it.
# - **Tiles per task**, computed from the image sizes alone and checked against the tiles the
#   data set really builds: 17 for `small_text`, one per frame for video, a split budget for
#   multi-image.
# - **One sample as the model gets it**: `pixel_values`, `input_ids`, `labels`,
#   `image_flags`, the prompt with its `<IMG_CONTEXT>` run, and the supervised tokens.
# - **Skip accounting** on a deliberately broken record set: every bad record is counted
#   with its reason, nothing disappears silently.
# - The **throughput** of the data set against one training step of the tiny model. Loading
#   data must never be the bottleneck.

# %% [markdown]
# ## The idea
#
# InternVL's fine-tuning script reads a meta JSON. Each entry names a data set: where its
# images are (`root`), its JSONL file (`annotation`), whether to augment its images
# (`data_augment`), its tile budget (`max_dynamic_patch`) and how often to repeat it
# (`repeat_time`). Each JSONL line is one conversation. The data set class turns a line into
# a sample: tiles from the images (chapter 1), tokens and labels from the conversation
# (chapter 4). The figure shows the path.

# %%
import matplotlib.pyplot as plt
from matplotlib.patches import FancyBboxPatch

steps = [
    ("meta JSON", "root, annotation,\ndata_augment,\nmax_dynamic_patch,\nrepeat_time"),
    ("JSONL record", "id, image | video,\nconversations\n(human / gpt)"),
    ("SupervisedDataset", "tiles (dynamic\npreprocess), JPEG aug,\ntokens + labels"),
    ("sample", "pixel_values,\ninput_ids, labels,\nimage_flags"),
    ("collate", "padded or packed\nbatch -> model"),
]
fig, ax = plt.subplots(figsize=(11, 2.4))
for k, (title, body) in enumerate(steps):
    x = k * 2.2
    ax.add_patch(FancyBboxPatch((x, 0), 1.8, 1.6, boxstyle="round,pad=0.05", fc="#e8f0fe", ec="#3367d6"))
    ax.text(x + 0.9, 1.35, title, ha="center", va="center", fontsize=9, weight="bold")
    ax.text(x + 0.9, 0.6, body, ha="center", va="center", fontsize=8)
    if k < len(steps) - 1:
        ax.annotate("", xy=(x + 2.2, 0.8), xytext=(x + 1.85, 0.8), arrowprops=dict(arrowstyle="->", lw=1.5))
ax.text(4.4 + 0.9, -0.35, "a bad record is skipped here and counted by reason", ha="center", fontsize=8, color="#b3261e")
ax.set_xlim(-0.2, 10.9)
ax.set_ylim(-0.6, 1.8)
ax.axis("off")
ax.set_title("From files to a batch")
plt.show()

# %% [markdown]
# ## The synthetic suite
#
# `generate_suite` writes every task for the train, validation and test splits (disjoint
# seeds), one JSONL file per task and split, and three meta files. The `faulty` task, which
# holds labelled bad samples for chapter 7, gets its own meta file. Generation is seeded:
# the same seed gives byte-identical files. The suite is cached per scale under minivl's
# cache folder (`$MINIVL_CACHE`, else `~/.cache/minivl`), so later chapters reuse it:
# `ensure_suite` generates it unless a suite with the same stamp (`suite.json`: generator
# version, scale, seed) is already there, so a suite written by an older generator is never
# reused by mistake. On a
# 2-core laptop the `cpu` suite (about 12,100 records) takes about 10 seconds.

# %%
import json
import time
from pathlib import Path

from minivl.data.records import read_meta
from minivl.data.synthetic import TASKS, ensure_suite, format_summary, split_size
from minivl.scale import cache_dir, get_scale, pick

scale = get_scale()
suite = cache_dir("data", scale)
start = time.perf_counter()
result = ensure_suite(suite, scale=scale, seed=0)  # generate_suite, unless this version is already cached
if result is None:
    print(f"reusing the suite in the cache ({suite.name}/): {json.loads((suite / 'suite.json').read_text())}")
else:
    print(format_summary(result))
    print(f"generated in {time.perf_counter() - start:.1f} s")
train_meta = suite / "train.json"
metas = read_meta(train_meta)
print({name: m.length for name, m in metas.items()})
assert list(metas) == [t for t in TASKS if t != "faulty"]
# a reasoning instance gives two records (chain-of-thought and direct answer)
assert all(m.length == split_size(n, "train", scale) * (2 if n == "reasoning" else 1) for n, m in metas.items())

# %% [markdown]
# ## Browsing the samples
#
# `show_samples` draws the first records of a task with their question and answer. Every
# answer can be checked against the picture: each record keeps the facts behind its answer
# under a `meta` key that training ignores. Some train records carry a `[fault: ...]` tag.
# About 2% of each train task (`FAULT_RATE`) are replaced by labelled faults (empty, repeated,
# truncated or garbage answers) for the filtering chapter; a real mixture has such samples too,
# and the quickstart filters them out before training (chapter 7).

# %%
from minivl.data.synthetic import show_samples

for task in ("caption", "small_text", "chart", "multi_image", "video", "reasoning"):
    fig = show_samples(suite, task, n=3, cols=3)
    fig.suptitle(task, x=0.02, ha="left", weight="bold")
    plt.show()

# %% [markdown]
# `small_text` is a 448 px canvas with a word written in a few pixels: one 112 px tile
# shrinks it to nothing, so this task needs dynamic tiling. `video` shows its frames in a
# strip, and `multi_image` shows its images side by side.

# %% [markdown]
# ## The record format
#
# A JSONL line is one of four kinds, and kinds can be mixed within a file. Below is one line
# of each kind from the suite, printed without its `meta` key. Things to check: a
# single-image record has `"image": path` plus optional `width`/`height`; a multi-image
# record has a list of paths, `width_list`/`height_list`, and exactly one `<image>` per image,
# numbered `Image-k:` by the text itself; a video record has `"video"` and one `<video>` in
# its first human turn (here a folder of frames); a text record has no image key at all.

# %%
from minivl.data.records import parse_record

examples = {}
for task in ("text_only", "caption", "multi_image", "video"):
    with open(metas[task].annotation_path, encoding="utf-8") as fh:
        for line in fh:
            obj = json.loads(line)
            if "fault" not in obj:
                break
    examples[parse_record(obj).kind] = obj
for kind, obj in examples.items():
    shown = {k: v for k, v in obj.items() if k != "meta"}
    print(f"--- {kind}\n{json.dumps(shown, ensure_ascii=False)}")
assert list(examples) == ["text", "image", "multi_image", "video"]
assert examples["multi_image"]["conversations"][0]["value"].count("<image>") == len(examples["multi_image"]["image"])

# %% [markdown]
# And one entry of the meta JSON. Paths are relative to the meta file's folder, so a suite
# can be moved as one folder. This is a small difference from InternVL, which resolves
# relative roots against the working directory.

# %%
meta_json = json.loads(train_meta.read_text())
print(json.dumps({"small_text": meta_json["small_text"]}, indent=2))

# %% [markdown]
# ## The mixture and `repeat_time`
#
# Each data set's share of training is its number of samples after `repeat_time`, over the
# total. InternVL's rule: `repeat_time` r < 1 keeps the **first** `int(n * r)` records (no
# shuffling), and r >= 1 repeats the list r times. The report uses values in (0, 4] to
# up-weight scarce skills and down-weight abundant ones. `mixture_table` reads a meta file
# and applies that rule.
#
# Samples are not the whole story: a `small_text` sample costs 17 tiles and several hundred
# tokens, while a shape scene (`caption`, `shape_qa`, `grounding`) is read as one tile
# (`max_dynamic_patch` 1: its shapes are large enough at 112 px), and a `shape_qa` training
# image carries three questions as a multi-turn conversation, so the image and the system
# prompt are paid for once per three answers. Its question type is drawn first, a third each
# for count, colour and position, and only then the wording: a draw among the five wordings
# at once would make three questions in five counting ones, and starve the colour and
# position questions that a small model learns last. To see where the compute goes,
# `token_length_stats` builds the first samples of each task and measures their lengths.

# %%
from minivl.config import MiniVLConfig
from minivl.data.dataset import DataConfig, build_datasets, conversation_texts
from minivl.data.stats import format_table, mixture_table, token_length_stats
from minivl.text.template import get_template
from minivl.text.tokenizer import image_token_id, train_chat_tokenizer

# the cpu-scale tokenizer (chapter 4), trained on the suite's text plus the template's own
# text (system prompt, role names) repeated, so that BPE merges it into a few tokens
tok = train_chat_tokenizer(conversation_texts(train_meta), vocab_size=pick(smoke=600, cpu=1000, gpu=1000))
model_config = pick(smoke=MiniVLConfig.smoke, cpu=MiniVLConfig.tiny, gpu=MiniVLConfig.tiny)(
    vocab_size=len(tok), image_token_id=image_token_id(tok))
data_config = DataConfig(image_size=model_config.vision.image_size, num_image_token=model_config.num_image_token,
                         max_dynamic_patch=6, max_length=2048, min_num_frame=4, max_num_frame=8)
print(f"vocabulary {len(tok)}, {data_config.num_image_token} tokens per {data_config.image_size} px tile")

datasets = build_datasets(train_meta, tok, data_config, train=True, seed=0)
per_task = pick(smoke=4, cpu=60, gpu=200)
token_stats = {d.meta.name: token_length_stats(d, limit=per_task) for d in datasets}
mixture = mixture_table(train_meta, token_stats)
print(format_table(mixture, ["name", "records", "repeat_time", "samples", "share", "max_dynamic_patch", "tokens",
                             "token_share"]))
print()
print(format_table(list(token_stats.values()), ["name", "samples", "skipped", "tokens_mean", "tokens_max",
                                                "image_tokens_mean", "supervised_mean", "tiles_mean"]))
assert abs(sum(r["share"] for r in mixture) - 1) < 1e-9
system_tokens = len(tok(get_template("internvl2_5").system_prompt(), add_special_tokens=False)["input_ids"])
print(f"\nthe default system prompt: {system_tokens} tokens per sample")

# %%
import numpy as np

names = [r["name"] for r in mixture]
fig, ax = plt.subplots(figsize=(10, 3.4))
x = np.arange(len(names))
ax.bar(x - 0.2, [r["share"] * 100 for r in mixture], width=0.4, label="share of samples")
ax.bar(x + 0.2, [r["token_share"] * 100 for r in mixture], width=0.4, label="share of tokens")
ax.set_xticks(x, names, rotation=30, ha="right")
ax.set_ylabel("% of the mixture")
ax.set_title(f"The {scale}-scale train mixture: samples and tokens per task")
ax.legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# Image tasks with many tiles take a larger share of the tokens than of the samples, and
# short text-only samples take a smaller one. A mixture balanced in samples can still be
# unbalanced in compute. Every sample also pays for the default system prompt, printed
# with the tables above, in tokens of our small tokenizer.
#
# Now change the weights: repeat `small_text` twice, keep a **fractional** 0.5 of `shape_qa`
# (its first half), and leave the rest alone. A fractional `repeat_time` above 1, such as
# 1.5, is refused: InternVL would silently truncate it to 1.

# %%
import copy

from minivl.data.records import check_repeat_time, write_meta

reweighted = copy.deepcopy(metas)
reweighted["small_text"].repeat_time = 2
reweighted["shape_qa"].repeat_time = 0.5
reweighted_path = write_meta(suite / "train_reweighted.json", reweighted.values())
after = {r["name"]: r for r in mixture_table(reweighted_path)}
before = {r["name"]: r for r in mixture}
for name in ("small_text", "shape_qa", "caption"):
    print(f"{name:<11} samples {before[name]['samples']:>5} -> {after[name]['samples']:>5}, "
          f"share {before[name]['share']:.1%} -> {after[name]['share']:.1%}")
assert after["small_text"]["samples"] == 2 * before["small_text"]["samples"]
assert after["shape_qa"]["samples"] == int(before["shape_qa"]["samples"] * 0.5)
(shape_half,) = build_datasets(reweighted_path, tok, data_config, names=["shape_qa"])
assert [r.id for r in shape_half.records] == [r.id for r in metas["shape_qa"].read_records(strict=False)[0]][: len(shape_half)]
try:
    check_repeat_time(1.5)
except ValueError as err:
    print(f"repeat_time 1.5: {err}")
reweighted_path.unlink()

# %% [markdown]
# ## Tiles per task
#
# Each sample's tile count follows from its image sizes and its data set's budget (chapter
# 1). `planned_tiles` computes it without decoding any pixels, using the same rules as
# `SupervisedDataset`:
#
# - a single image: `dynamic_preprocess` with the entry's `max_dynamic_patch`, plus a
#   thumbnail when there is more than one tile;
# - n images: a budget of `max(1, max_dynamic_patch // n)` each, each with its own thumbnail;
# - a video: one tile per sampled frame, no thumbnail (`max_dynamic_patch` is 1 in the meta);
# - text: one white dummy tile, with `image_flags` 0 so that its features are discarded.
#
# First we check the plan against the tiles the data set really builds.

# %%
from minivl.data.stats import planned_tiles, tile_count_table

checked = 0
eval_sets = build_datasets(train_meta, tok, data_config, train=False)  # evaluation-mode frame sampling
for d in eval_sets:
    for i in range(min(pick(smoke=4, cpu=15, gpu=30), len(d))):
        sample = d[i]
        if sample is None:
            continue
        plan = planned_tiles(d.records[i], d.meta, d.config)
        assert sample["num_patches_list"] == plan, (d.meta.name, i)
        assert sample["pixel_values"].shape[0] == (sum(plan) or 1)
        checked += 1
print(f"planned == built for {checked} samples")

tile_rows = tile_count_table(eval_sets)
print(format_table(tile_rows, ["name", "records", "mean", "min", "max", "images_per_record"]))
by_name = {r["name"]: r for r in tile_rows}
assert set(by_name["chart"]["histogram"]) <= {5, 7}  # 224 x 168 -> 3 x 2 + 1, 224 x 224 -> 2 x 2 + 1
assert set(by_name["small_text"]["histogram"]) == {17}  # a 448 px square: 4 x 4 tiles of 112 + thumbnail
assert by_name["text_only"]["histogram"] == {1: by_name["text_only"]["records"]}  # one dummy tile each

# %%
fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
for ax, name in zip(axes, ("chart", "multi_image", "video")):
    hist = by_name[name]["histogram"]
    ax.bar(list(hist), list(hist.values()), color="#3367d6")
    ax.set_title(f"{name} (max_dynamic_patch {metas[name].max_dynamic_patch})")
    ax.set_xlabel("tiles per sample")
axes[0].set_ylabel("records")
fig.tight_layout()
plt.show()

# %% [markdown]
# Charts come in two sizes. A 224 x 168 bar or line chart (4:3) gets a 3 x 2 grid plus a
# thumbnail, 7 tiles, and a 224 x 224 form gets 2 x 2 plus one, 5 tiles. Video counts equal
# the frames in each folder (4, 6 or 8 here; training draws between `min_num_frame` and
# `max_num_frame` per epoch instead). The suite's multi-image samples hold 2 to 4 small
# images of one tile each. The budget split shows better on larger images: the next cell
# plans 1 to 4 images of 448 x 224 px under the `multi_image` budget of 8.

# %%
from minivl.data.records import Record
from minivl.vision.tiling import tiles_per_image

d_mi = next(d for d in eval_sets if d.meta.name == "multi_image")
plans = {}
for n in range(1, 5):
    record = Record(conversations=[], kind="image" if n == 1 else "multi_image", images=["x.png"] * n,
                    width_list=[448] * n, height_list=[224] * n)
    plans[n] = planned_tiles(record, d_mi.meta, data_config)
    print(f"{n} image(s): budget {8 if n == 1 else f'max(1, 8 // {n}) = {tiles_per_image(n, 8)}'} each "
          f"-> tiles {plans[n]}, total {sum(plans[n])}")
# 2:1 with 8 tiles: 4 x 2 grid + thumbnail; with 4 or 2 tiles: 2 x 1 + thumbnail, per image
assert plans == {1: [9], 2: [3, 3], 3: [3, 3, 3], 4: [3, 3, 3, 3]}

# %% [markdown]
# ## What the dataset hands the model
#
# A sample is a dict of tensors. `pixel_values` holds every tile of every image in order,
# `image_flags` says which tiles are real (1) or the dummy of a text sample (0), and
# `input_ids` holds one `<IMG_CONTEXT>` per image token, where the model writes the
# projected ViT features (chapter 5). `labels` equal `input_ids` on the assistant's answer
# and its `<|im_end|>`, and are -100 everywhere else. Here is a `chart` sample.

# %%
from minivl.data.stats import abbreviate_prompt, supervised_spans

d_chart = next(d for d in datasets if d.meta.name == "chart")
sample = d_chart[1]
for key in ("pixel_values", "input_ids", "labels", "attention_mask", "image_flags"):
    print(f"{key:<15} {tuple(sample[key].shape)} {sample[key].dtype}")
print(f"num_patches_list {sample['num_patches_list']}, kind {sample['kind']}, id {sample['id']}")
n_ctx = int((sample["input_ids"] == image_token_id(tok)).sum())
print(f"<IMG_CONTEXT> tokens: {n_ctx} = {sample['pixel_values'].shape[0]} tiles x {data_config.num_image_token}")
assert n_ctx == sample["pixel_values"].shape[0] * data_config.num_image_token
assert sample["image_flags"].tolist() == [1] * sample["pixel_values"].shape[0]

# %% [markdown]
# The prompt, decoded, with the run of image tokens written once. The system prompt is
# InternVL 2.5's default; this record has none of its own.

# %%
print(abbreviate_prompt(sample["input_ids"], tok))
spans = supervised_spans(sample["input_ids"], sample["labels"], tok)
print("supervised:", spans)
assert spans == [d_chart.records[1].turns[-1]["value"] + "<|im_end|>"]

# %% [markdown]
# A video sample: each frame becomes one tile, and `<video>` becomes one `Frame-k:` line per
# frame. A text sample: one dummy tile with flag 0 and no image tokens.

# %%
d_video = next(d for d in datasets if d.meta.name == "video")
d_text = next(d for d in datasets if d.meta.name == "text_only")
video = d_video[0]
print(f"video: pixel_values {tuple(video['pixel_values'].shape)}, num_patches_list {video['num_patches_list']}")
print(abbreviate_prompt(video["input_ids"], tok).split("<|im_start|>user\n")[1].split("<|im_end|>")[0])
text_index = next(i for i, r in enumerate(d_text.records) if "fault" not in r.extra)
text = d_text[text_index]
print(f"\ntext:  pixel_values {tuple(text['pixel_values'].shape)}, image_flags {text['image_flags'].tolist()}, "
      f"<IMG_CONTEXT> tokens {int((text['input_ids'] == image_token_id(tok)).sum())}")
print("supervised:", supervised_spans(text["input_ids"], text["labels"], tok))
assert video["num_patches_list"] == [1] * video["pixel_values"].shape[0]
assert data_config.min_num_frame <= video["pixel_values"].shape[0] <= data_config.max_num_frame
assert text["image_flags"].tolist() == [0]

# %% [markdown]
# Training batches several samples. The simplest collation pads every row to the longest
# one and concatenates the tiles; chapter 8 replaces the padding with packing.

# %%
from minivl.data.packing import padded_collate_fn

batch_samples = [d_chart[1], video, text]
batch = padded_collate_fn(batch_samples, pad_token_id=tok.pad_token_id)
for key in ("input_ids", "labels", "attention_mask", "pixel_values", "image_flags"):
    print(f"{key:<15} {tuple(batch[key].shape)}")
print(batch["statistics"])
assert batch["pixel_values"].shape[0] == sum(s["pixel_values"].shape[0] for s in batch_samples)
assert batch["input_ids"].shape[1] == max(s["input_ids"].numel() for s in batch_samples)

# %% [markdown]
# ## Skip accounting
#
# Real data is messy: files go missing, downloads get cut, a sample is longer than the
# context, an annotation has one `<image>` too many. InternVL's data set catches such errors
# and silently moves to another random sample. minivl skips the record too, but **counts**
# it by reason and keeps one example of each, so a data report can say what was lost.
#
# We build a small broken data set: two good records, then one of each fault. Two layers
# catch the faults. A malformed line (here, two `<image>` placeholders for one image) is
# refused by the record reader when the file is loaded (`record_placeholder_count`).
# Everything else is caught when the sample is built: a missing file, a corrupt PNG, a
# sample longer than `max_length`, and a video whose `<video>` is not followed by a newline
# (`placeholder_mismatch`).

# %%
import shutil
import tempfile

from PIL import Image

from minivl.data.dataset import SupervisedDataset, skip_report
from minivl.data.records import DatasetMeta, write_records

broken = Path("broken_records")  # a relative folder, removed at the end of the cell
shutil.rmtree(broken, ignore_errors=True)
broken.mkdir()
Image.new("RGB", (224, 112), "orange").save(broken / "ok.png")
(broken / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"cut off in the middle")
shutil.copytree(metas["video"].image_path(examples["video"]["video"]), broken / "clip")


def turn(question, answer):
    return [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]


broken_records = [
    {"id": "good-image", "image": "ok.png", "conversations": turn("<image>\nWhat colour is it?", "orange")},
    {"id": "good-video", "video": "clip", "conversations": turn("<video>\nWhere does it move?", "up")},
    {"id": "missing", "image": "nowhere.png", "conversations": turn("<image>\nWhat colour is it?", "blue")},
    {"id": "corrupt", "image": "corrupt.png", "conversations": turn("<image>\nWhat colour is it?", "red")},
    {"id": "too-long", "image": "ok.png", "conversations": turn("<image>\n" + "Describe every detail. " * 800, "orange")},
    {"id": "two-placeholders", "image": "ok.png", "conversations": turn("<image>\n<image>\nSame?", "yes")},
    {"id": "video-no-newline", "video": "clip", "conversations": turn("<video> Where does it move?", "up")},
]
write_records(broken / "broken.jsonl", broken_records)
broken_meta = DatasetMeta(name="broken", root=".", annotation="broken.jsonl", base_dir=broken)
broken_set = SupervisedDataset(broken_meta, tok, data_config, train=False)
print(f"{len(broken_records)} lines, {len(broken_set)} records after loading")
built = [broken_set[i] for i in range(len(broken_set))]
print([s["id"] if s is not None else None for s in built])
print()
print(skip_report([broken_set]))
assert [s is not None for s in built] == [True, True, False, False, False, False]
assert dict(broken_set.skips) == {"record_placeholder_count": 1, "missing_file": 1, "corrupt_image": 1,
                                  "too_long": 1, "placeholder_mismatch": 1}
shutil.rmtree(broken)

# %% [markdown]
# The same accounting runs on the whole suite. The `faulty` task's malformed records (wrong
# placeholder counts) are refused at load time, one count per labelled fault; its content
# faults (empty or repeated answers) are well-formed and pass. Catching those is the job of
# chapter 7's filters.

# %%
(faulty,) = build_datasets(suite / "train_faulty.json", tok, data_config, train=False)
for i in range(min(pick(smoke=4, cpu=100, gpu=100), len(faulty))):
    faulty[i]
print(skip_report([faulty]))
with open(faulty.meta.annotation_path, encoding="utf-8") as fh:
    labelled = sum(json.loads(line).get("fault") == "placeholder" for line in fh)
print(f"labelled placeholder faults in the file: {labelled}")
assert faulty.skips["record_placeholder_count"] == labelled

# %% [markdown]
# ## Real data sets (`gpu` scale)
#
# At `gpu` scale minivl trains on public data loaded with `datasets` and mapped to the same
# records by `minivl.data.hub` (chapter 7 covers the mappers). A mapper turns one row into
# a record and saves its images as PNG files; the records and a meta entry then go through
# the same `SupervisedDataset`. The next cell does this offline, on a two-row table in the
# the_cauldron layout built in memory, so it runs at every scale.

# %%
import datasets as hf_datasets

from minivl.data.hub import map_cauldron, map_dataset

hub_dir = Path(tempfile.mkdtemp(prefix="minivl_hub_"))
rows = hf_datasets.Dataset.from_dict({
    "images": [[Image.new("RGB", (300, 200), "teal")], [Image.new("RGB", (120, 120), "red"), Image.new("RGB", (120, 120), "blue")]],
    "texts": [[{"user": "What colour is the picture?", "assistant": "Teal.", "source": "demo"}],
              [{"user": "Which image is red?", "assistant": "Image-1", "source": "demo"}]],
})
hub_records = map_dataset(rows, map_cauldron, hub_dir / "images")
for r in hub_records:
    print(json.dumps(r))
write_records(hub_dir / "demo.jsonl", hub_records)
hub_meta = DatasetMeta(name="cauldron_demo", root="images", annotation="demo.jsonl", base_dir=hub_dir,
                       max_dynamic_patch=6)
hub_set = SupervisedDataset(hub_meta, tok, data_config, train=False)
print([(s["kind"], s["num_patches_list"]) for s in (hub_set[0], hub_set[1])])
assert [hub_set[i]["kind"] for i in range(2)] == ["image", "multi_image"]
shutil.rmtree(hub_dir)

# %% [markdown]
# With a network and a GPU, the same mapper runs on the real data set, streamed so that
# only the rows needed are downloaded. This cell only runs at `gpu` scale.

# %%
if scale == "gpu":
    from transformers import AutoTokenizer

    from minivl.data.hub import load_hub_dataset

    # the released checkpoint's tokenizer (Qwen2.5 with InternVL's tokens added)
    real_tok = AutoTokenizer.from_pretrained("OpenGVLab/InternVL2_5-1B", trust_remote_code=True)
    real_dir = cache_dir("data", "hub", "the_cauldron_ai2d")
    real_records = load_hub_dataset("HuggingFaceM4/the_cauldron", split="train", mapper=map_cauldron, streaming=True,
                                    image_dir=real_dir / "images", limit=200, name="ai2d")
    write_records(real_dir / "ai2d.jsonl", real_records)
    real_meta = DatasetMeta(name="ai2d", root="images", annotation="ai2d.jsonl", base_dir=real_dir,
                            data_augment=True, max_dynamic_patch=12)
    real_cfg = DataConfig()  # 448 px tiles, 256 tokens per tile: the real InternVL 2.5 settings
    real_set = SupervisedDataset(real_meta, real_tok, real_cfg, train=True)
    print(format_table([token_length_stats(real_set, limit=50)], ["name", "samples", "skipped", "tokens_mean",
                                                                 "tiles_mean", "image_tokens_mean"]))
    print(skip_report([real_set]))
else:
    print(f"scale {scale}: the real data set cell runs at gpu scale only")

# %% [markdown]
# ## Measured result: the data pipeline against training
#
# Loading must be faster than training, or the model waits. We time `__getitem__` per task
# (JPEG augmentation on, as in training) and weight each task by its share of the mixture.
# Then we time one forward and backward step of the tiny model (chapter 5) on a padded
# batch of 8 mixture samples. A DataLoader worker runs with one torch thread, and so does
# our timing loop. `benchmarks/data.py` does the same with more samples and steps
# (`python benchmarks/data.py --scale cpu`). On the 2-core machine these outputs come
# from, one loader process builds several hundred samples per second. The training step
# handles about 20 samples per second when the machine is otherwise idle, and fewer when it
# is busy. Either way the loader is more than ten times faster, before we even add workers.

# %%
import random

import torch

from minivl.data.dataset import MixtureDataset
from minivl.model import MiniVL

rates = {}
threads = torch.get_num_threads()
torch.set_num_threads(1)  # as in a DataLoader worker, which PyTorch runs with one thread
for d in datasets:
    n = min(pick(smoke=3, cpu=40, gpu=100), len(d))
    d[0]  # warm-up
    start = time.perf_counter()
    for i in range(n):
        d[i]
    rates[d.meta.name] = n / (time.perf_counter() - start)
torch.set_num_threads(threads)
shares = {r["name"]: r["share"] for r in mixture}
data_rate = 1 / sum(shares[name] / rate for name, rate in rates.items())
print("samples/s per task:", {k: round(v) for k, v in rates.items()})

torch.manual_seed(0)
model = MiniVL(model_config)
mix = MixtureDataset(datasets)
rng = random.Random(0)
keys = ("input_ids", "pixel_values", "attention_mask", "position_ids", "image_flags", "labels", "loss_weight")
step_times = []
for _ in range(pick(smoke=2, cpu=5, gpu=5)):  # the first step is a warm-up
    samples = [s for s in (mix[i] for i in rng.sample(range(len(mix)), 8)) if s is not None]
    batch = padded_collate_fn(samples, pad_token_id=tok.pad_token_id)
    start = time.perf_counter()
    loss = model(**{k: batch[k] for k in keys}).loss
    loss.backward()
    model.zero_grad(set_to_none=True)
    step_times.append(time.perf_counter() - start)
train_rate = 8 / (sum(step_times[1:]) / len(step_times[1:]))
print(f"data pipeline samples/s vs training samples/s: {data_rate:.0f} vs {train_rate:.1f} "
      f"(ratio {data_rate / train_rate:.0f}x, one loader process)")
assert data_rate > train_rate

# %% [markdown]
# ## Summary
#
# - A mixture is a **meta JSON** (one entry per data set: root, annotation, augmentation,
#   tile budget, `repeat_time`) plus **JSONL records** of four kinds: text, single image,
#   multi-image (one numbered `<image>` per image) and video (one `<video>`).
# - `repeat_time` sets each data set's share. Below 1 it keeps the first `int(n * r)`
#   records, and a whole number repeats the list. Tiles make the share of tokens differ
#   from the share of samples.
# - Tile counts follow from image sizes and budgets alone: 17 for a 448 px `small_text`
#   canvas, `max(1, budget // n)` per image for multi-image, one per frame for video, and one
#   dummy tile with flag 0 for text.
# - A sample is `pixel_values`, `input_ids` with one `<IMG_CONTEXT>` per image token,
#   `labels` that supervise only the answers and their `<|im_end|>`, and `image_flags`.
# - Bad records are skipped and **counted by reason**. Malformed lines are caught at load
#   time, and missing or corrupt files, over-long samples and placeholder mismatches when
#   the sample is built.
# - On 2 CPU cores one loader process outruns the tiny model's training step by more than
#   ten times, so the data pipeline is not the bottleneck.

# %% [markdown]
# ## Exercises
#
# 1. *Easy.* Set `repeat_time` of `video` to 3 and of `text_only` to 0.25 in a copy of the
#    train meta. Predict each task's share of samples, then check it with `mixture_table`.
# 2. *Medium.* Raise `small_text`'s `max_dynamic_patch` from 16 to 24 and recompute its
#    tiles with `planned_tiles`. Why does the count not change for a square canvas? Which
#    image size would use 24 tiles?
# 3. *Hard.* Time `__getitem__` with a `torch.utils.data.DataLoader` and 0, 1 and 2 workers
#    (use `drop_skipped` in a `collate_fn`). How does the rate scale on your machine, and
#    what share of the time goes to JPEG augmentation (compare `train=True` and
#    `train=False`)?
