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
# # 1. Dynamic high resolution: tiles, thumbnails and token budgets
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/minivl/minivl/blob/main/notebooks/01_dynamic_resolution.ipynb)
#
# InternVL's vision encoder only ever sees squares of 448 x 448 pixels. Yet it reads
# documents, charts and panoramas of any shape. The trick, introduced in InternVL 1.5 and
# kept unchanged in 2.5 (report section 3.1), is **dynamic high resolution**: cut the image
# into a grid of square tiles whose shape matches the image, and add a small thumbnail of
# the whole picture. This chapter rebuilds that step exactly, then turns tiles into the
# `pixel_values` tensor the model consumes.
#
# The code lives in `minivl.vision.tiling` and `minivl.vision.transforms`.

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
# - `find_closest_aspect_ratio` and `dynamic_preprocess`, exactly as the official
#   `internvl_chat` code does them, including the tie rule that decides between grids of
#   the same shape;
# - tile **budgets**: how many tiles, and so how many of the LLM's tokens, an image, a
#   multi-image sample and a video cost;
# - the per-tile transform (RGB, random JPEG re-encoding, resize, normalisation) and
#   `load_image_tiles`, which produces `pixel_values` of shape `(num_tiles, 3, 448, 448)`.
#
# Expected result: the same tiles and the same pixel values as the transformers
# implementation of InternVL's image processor, to the last bit, and faster.

# %% [markdown]
# ## The idea
#
# An image of width W and height H has aspect ratio W / H. With at most 12 tiles, the
# allowed grids are all `cols x rows` with `cols * rows <= 12`. InternVL picks the grid
# whose ratio `cols / rows` is closest to W / H, resizes the image to
# `(448 cols) x (448 rows)` and cuts it into tiles, row by row. If there is more than one
# tile, it appends a **thumbnail**, the whole image squeezed to 448 x 448, so the model also
# sees the global layout. Each tile becomes 256 tokens in the LLM (chapter 3 shows why).
#
# Here are four photos, each drawn over the grid it gets.

# %%
import matplotlib.pyplot as plt
import numpy as np
from matplotlib import cbook
from PIL import Image
from skimage import data

from minivl.vision.tiling import TOKENS_PER_TILE, num_tiles, tile_grid

photos = {
    "astronaut": Image.fromarray(data.astronaut()),
    "coffee": Image.fromarray(data.coffee()),
    "rocket": Image.fromarray(data.rocket()),
}
with cbook.get_sample_data("grace_hopper.jpg") as f:
    photos["grace_hopper"] = Image.open(f).convert("RGB")
for name, im in photos.items():
    print(f"{name:<13} {im.width} x {im.height}  ratio {im.width / im.height:.3f}")


# %%
def draw_grid(ax, image, max_num=12, image_size=448, title=None):
    """Show ``image`` stretched onto its tile canvas, with tile borders and row-major numbers."""
    cols, rows = tile_grid(image.width, image.height, 1, max_num, image_size)
    shown = image.copy()
    shown.thumbnail((320, 320))  # display only: keeps the figure light
    ax.imshow(shown, extent=(0, cols * image_size, rows * image_size, 0))
    for c in range(1, cols):
        ax.axvline(c * image_size, color="yellow", lw=2)
    for r in range(1, rows):
        ax.axhline(r * image_size, color="yellow", lw=2)
    for k in range(cols * rows):
        x, y = (k % cols + 0.5) * image_size, (k // cols + 0.5) * image_size
        ax.text(x, y, str(k), color="yellow", fontsize=14, ha="center", va="center", weight="bold")
    n = num_tiles(image.width, image.height, 1, max_num, image_size)
    ax.set_title(title or f"{image.width}x{image.height} -> {cols}x{rows} grid, {n} tiles = {n * TOKENS_PER_TILE} tokens",
                 fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])


fig, axes = plt.subplots(1, 4, figsize=(13, 3.8), dpi=72)
for ax, (name, im) in zip(axes, photos.items()):
    draw_grid(ax, im)
    ax.set_xlabel(name)
fig.tight_layout()
plt.show()

# %% [markdown]
# Two things to notice. The astronaut (512 x 512) stays **one tile**: a square image has ratio
# 1, which three grids match exactly (1x1, 2x2, 3x3), and the larger grids are only taken if
# the image is big enough (the tie rule below). Grace Hopper's portrait (512 x 600) is the
# opposite case: its ratio 0.853 is closest to 3x4 = 0.75, so a small photo is **upscaled**
# to 1344 x 1792 pixels and costs 13 tiles. Closeness of shape wins over size.
#
# ## The candidate grids
#
# `target_ratios(min_num, max_num)` lists every allowed grid, ordered by tile count. The
# order matters: the search below keeps the *first* grid that reaches the smallest
# difference.

# %%
# NBVAL_CHECK_OUTPUT
from minivl.vision.tiling import target_ratios

ratios = target_ratios(1, 12)
print(len(ratios), "grids with at most 12 tiles")
for n in range(1, 13):
    print(f"{n:2d} tiles:", [g for g in ratios if g[0] * g[1] == n])

# %% [markdown]
# Plotting each grid at its ratio (log scale) against its tile count shows the search:
# draw a vertical line at the image's ratio and take the nearest dot.

# %%
fig, ax = plt.subplots(figsize=(11, 3.6))
xs = [np.log2(c / r) for c, r in ratios]
ax.scatter(xs, [c * r for c, r in ratios], color="#3b6ea8", zorder=3)
for (c, r), x in zip(ratios, xs):
    ax.annotate(f"{c}x{r}", (x, c * r), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=7)
for (name, im), colour in zip(photos.items(), ("C1", "C2", "C3", "C4")):
    ax.axvline(np.log2(im.width / im.height), color=colour, ls="--", label=f"{name} ({im.width / im.height:.2f})")
ax.set_xlabel("log2(cols / rows) = log2 aspect ratio")
ax.set_ylabel("tiles")
ax.legend(fontsize=8, loc="upper right")
ax.set_title("The 35 candidate grids (max_num = 12) and the ratios of the four photos")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Rebuilding the search step by step
#
# The official `find_closest_aspect_ratio` walks the candidates in order. A strictly smaller
# difference always wins. On an **exact** tie (the same float difference), the later, larger
# grid replaces the current one only when the original image has more than half the pixels
# of that grid: `width * height > 0.5 * 448**2 * cols * rows`. The report describes this as
# avoiding more than 2x upscaling on ties. Here is the rule written out, checked against
# `minivl` on 20,000 random sizes:

# %%
import random

from minivl.vision.tiling import find_closest_aspect_ratio


def closest_grid_by_hand(width, height, max_num=12, image_size=448):
    aspect = width / height
    best, best_diff = (1, 1), float("inf")
    for cols, rows in target_ratios(1, max_num):
        diff = abs(aspect - cols / rows)
        if diff < best_diff:
            best, best_diff = (cols, rows), diff
        elif diff == best_diff and width * height > 0.5 * image_size**2 * cols * rows:
            best = (cols, rows)  # an exact tie moves to the larger grid only for a big enough image
    return best


rng = random.Random(0)
sizes = [(rng.randint(1, 4000), rng.randint(1, 4000)) for _ in range(20_000)]
assert all(closest_grid_by_hand(w, h) == tile_grid(w, h) for w, h in sizes)
assert all(
    find_closest_aspect_ratio(w / h, target_ratios(1, 12), w, h, 448) == tile_grid(w, h) for w, h in sizes[:1000]
)
print("the hand-written search agrees with minivl on", len(sizes), "sizes")

# %% [markdown]
# ### The tie rule on edge cases
#
# A square image ties between 1x1, 2x2 and 3x3. The 2x2 grid needs more than
# 2 x 448² = 401,408 pixels (a side of 634, since 633² = 400,689), the 3x3 grid more than
# 4.5 x 448² = 903,168 (951, since 950² = 902,500). Ties also happen between *different*
# shapes: with at most 6 tiles, a 2.5:1 image is exactly 0.5 away from both 2x1 and 3x1, and
# the area decides.

# %%
# NBVAL_CHECK_OUTPUT
cases = [
    (448, 448, 12), (633, 633, 12), (634, 634, 12), (950, 950, 12), (951, 951, 12), (951, 951, 6),
    (250, 100, 6), (1000, 400, 6), (1000, 400, 12), (1, 1, 12), (4000, 1, 12), (1, 4000, 6),
]
expected = [(1, 1), (1, 1), (2, 2), (2, 2), (3, 3), (2, 2), (2, 1), (3, 1), (5, 2), (1, 1), (12, 1), (1, 6)]
print(f"{'size':>11}  max_num  grid  tiles (with thumbnail)")
for (w, h, m), want in zip(cases, expected):
    grid = tile_grid(w, h, 1, m)
    assert grid == want, (w, h, m, grid)
    print(f"{w:>5}x{h:<5}  {m:>7}  {grid[0]}x{grid[1]}  {num_tiles(w, h, 1, m):>5}")

# %% [markdown]
# ## Cutting the tiles
#
# `dynamic_preprocess(image, min_num=1, max_num=12, image_size=448, use_thumbnail=True)`
# returns the tiles as PIL images: the grid in row-major order (tile `k` is column
# `k % cols`, row `k // cols`), then the thumbnail. The coffee cup (600 x 400, ratio 1.5)
# matches 3x2 exactly.

# %%
from minivl.vision.tiling import dynamic_preprocess

coffee = photos["coffee"]
tiles = dynamic_preprocess(coffee, max_num=12, image_size=448)
print(len(tiles), "tiles of", tiles[0].size)
assert len(tiles) == 7 and all(t.size == (448, 448) for t in tiles)

fig, axes = plt.subplots(2, 4, figsize=(10, 5), dpi=72)
for k, ax in enumerate(axes.flat):
    ax.axis("off")
    if k < 6:
        ax.imshow(tiles[k].resize((160, 160)))  # displayed small
        ax.set_title(f"tile {k}: column {k % 3}, row {k // 3}", fontsize=9)
    elif k == 7:
        ax.imshow(tiles[6].resize((160, 160)))
        ax.set_title("tile 6: thumbnail (last)", fontsize=9)
fig.tight_layout()
plt.show()

# %% [markdown]
# The thumbnail is a plain resize of the original image, ignoring its aspect ratio, and a
# single-tile image gets none (it would duplicate the tile):

# %%
thumbnail = np.asarray(coffee.resize((448, 448), Image.Resampling.BICUBIC))
assert (np.asarray(tiles[-1]) == thumbnail).all()
single = dynamic_preprocess(photos["astronaut"])
print("astronaut:", len(single), "tile")
assert len(single) == 1

# %% [markdown]
# ## Token budgets
#
# Each tile costs 256 tokens of the LLM's context, so the tiling decides the price of an
# image. The bars show common image sizes at `max_num = 12` (the InternVL 2.5 training
# default) and `max_num = 6` (the public fine-tuning scripts).

# %%
budget_sizes = [(224, 224), (448, 448), (640, 480), (800, 600), (1024, 768), (1280, 720), (1920, 1080),
                (1080, 1920), (2480, 3508), (4000, 1000)]
labels = [f"{w}x{h}" for w, h in budget_sizes]
tokens12 = [num_tiles(w, h, 1, 12) * TOKENS_PER_TILE for w, h in budget_sizes]
tokens6 = [num_tiles(w, h, 1, 6) * TOKENS_PER_TILE for w, h in budget_sizes]
x = np.arange(len(budget_sizes))
fig, ax = plt.subplots(figsize=(11, 3.8))
ax.bar(x - 0.2, tokens12, 0.4, label="max_num = 12")
ax.bar(x + 0.2, tokens6, 0.4, label="max_num = 6")
ax.set_xticks(x, labels, rotation=30)
ax.set_ylabel("image tokens (tiles x 256)")
ax.set_title("Image tokens per image size (thumbnail included)")
ax.legend()
fig.tight_layout()
plt.show()
for label, t12, t6 in zip(labels, tokens12, tokens6):
    print(f"{label:>10}: {t12:5d} tokens at max_num 12, {t6:5d} at max_num 6")

# %% [markdown]
# ### Exploring `max_num`
#
# Move the slider to see how the grid of each photo changes with the tile budget. Without a
# running kernel, the table after it gives the same information.

# %%
try:
    import ipywidgets as widgets

    def explore(max_num=12):
        fig, axes = plt.subplots(1, 4, figsize=(13, 3.8), dpi=72)
        for ax, (name, im) in zip(axes, photos.items()):
            draw_grid(ax, im, max_num=max_num)
            ax.set_xlabel(name)
        fig.tight_layout()
        plt.show()

    widgets.interact(explore, max_num=widgets.IntSlider(value=12, min=1, max=24, description="max_num"))
except ImportError:
    print("ipywidgets is not installed; the table below shows the same grids")

# %%
# NBVAL_CHECK_OUTPUT
budgets = (1, 2, 4, 6, 9, 12, 24)
print(f"{'photo':<13}" + "".join(f"  max {m:<3}" for m in budgets))
for name, im in photos.items():
    cells = []
    for m in budgets:
        c, r = tile_grid(im.width, im.height, 1, m)
        cells.append(f"{c}x{r}={num_tiles(im.width, im.height, 1, m):<2}")
    print(f"{name:<13}" + "".join(f"  {cell:<7}" for cell in cells))

# %% [markdown]
# ## Multi-image samples and videos
#
# When one conversation has several images, InternVL splits the budget: each image gets
# `max(1, max_num // n_images)` tiles, **plus its own thumbnail** when it has more than one
# tile, so the total can exceed `max_num`. Video frames are cheaper still: one tile per frame,
# no tiling, no thumbnail.

# %%
# NBVAL_CHECK_OUTPUT
from minivl.vision.tiling import tiles_per_image

for n in range(1, 7):
    per = tiles_per_image(n, 12)
    worst = n * (per + 1 if per > 1 else 1)
    print(f"{n} images: {per:2d} tiles each, at most {worst:2d} tiles = {worst * 256:5d} tokens in total")

# %%
from minivl.vision.transforms import load_image_tiles

three = [photos["coffee"], photos["rocket"], photos["grace_hopper"]]
pixel_values, counts = load_image_tiles(three, image_size=448, max_num=12)
print("tiles per image:", counts, "-> pixel_values", tuple(pixel_values.shape))
# budget 4 each. coffee (ratio exactly 1.5): 1x1 and 2x1 tie at 0.5, 240,000 > 2 x 448^2 / 2 pixels -> 2x1 + thumbnail;
# rocket (640/427 = 1.499, just under 1.5): 1x1 is strictly closer -> 1 tile; hopper (0.853) -> 1x1
assert counts == [3, 1, 1] == [num_tiles(im.width, im.height, 1, 4) for im in three]

# %% [markdown]
# For training, InternVL samples 8 to 32 frames from a video with `get_frame_indices`: the
# frames are split into equal intervals and one frame is drawn from each. The official code
# draws from `range(start, end - 1)`, so the **last frame of each interval is never chosen**;
# `minivl` keeps that off-by-one for fidelity. Evaluation uses `get_index`, the midpoints of
# equal segments.

# %%
# NBVAL_CHECK_OUTPUT
from minivl.vision.tiling import get_frame_indices, get_index

print("middle, 4 of 20 frames:", get_frame_indices(4, 20, "middle"))
print("rand,   4 of 20 frames:", get_frame_indices(4, 20, "rand", rng=random.Random(0)))
seen = {i for seed in range(500) for i in get_frame_indices(4, 20, "rand", rng=random.Random(seed))}
print("frames ever drawn:", sorted(seen))
assert not seen & {4, 9, 14, 19}  # the last frame of each interval
print("eval, 8 segments of 100 frames:", get_index(None, fps=30, max_frame=99, num_segments=8))

# %% [markdown]
# A synthetic video (a dot moving across 60 frames) shows the whole path: pick 8 frames,
# then make one 448-pixel tile of each.

# %%
from minivl.vision.transforms import load_video_tiles


def moving_dot(t, width=320, height=240):
    frame = np.full((height, width, 3), 240, dtype=np.uint8)
    cx, cy = int(20 + t * 4.5), height // 2
    frame[cy - 12 : cy + 12, cx - 12 : cx + 12] = (200, 30, 30)
    return Image.fromarray(frame)


video = [moving_dot(t) for t in range(60)]
indices = get_frame_indices(8, len(video), "middle")
frames_pv, frame_counts = load_video_tiles([video[i] for i in indices], image_size=448)
print("frames", indices, "->", tuple(frames_pv.shape), "=", sum(frame_counts) * 256, "image tokens")
assert frame_counts == [1] * 8

# %% [markdown]
# ## From tiles to `pixel_values`
#
# Each tile goes through the official per-tile transform: convert to RGB, (in training)
# random JPEG re-encoding, resize to 448 (a no-op for tiles), then `ToTensor` (uint8 / 255)
# and `Normalize` with the ImageNet mean and standard deviation. Done by hand for the first
# coffee tile:

# %%
import torch

from minivl.vision.transforms import IMAGENET_MEAN, IMAGENET_STD

tile = np.asarray(tiles[0])  # (448, 448, 3) uint8
by_hand = torch.from_numpy(tile.copy()).permute(2, 0, 1).float() / 255  # (H, W, C) -> (C, H, W)
by_hand = (by_hand - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)
coffee_pv, coffee_counts = load_image_tiles(coffee, image_size=448, max_num=12)
print("pixel_values", tuple(coffee_pv.shape), coffee_pv.dtype, "tiles per image", coffee_counts)
print("pixel (0, 0) of tile 0:", tile[0, 0].tolist(), "->", [round(v, 4) for v in coffee_pv[0, :, 0, 0].tolist()])
assert torch.equal(coffee_pv[0], by_hand)

# %% [markdown]
# `load_image_tiles` gets there faster than tile-by-tile code: it resizes once, takes the
# tiles as views of one array, and normalises through a 256-entry lookup table per
# channel, whose entries were computed with the same float32 steps. The result is
# identical, as the `assert` shows.
#
# ### Random JPEG augmentation
#
# When a data set has `"data_augment": true`, every tile (the thumbnail too) is re-encoded
# as a JPEG of a quality drawn uniformly from 75 to 100, each tile with its own draw. This
# teaches the model to ignore compression artefacts, common in web images. Passing a seed
# or a `random.Random` makes it reproducible:

# %%
from minivl.vision.transforms import JPEG_QUALITIES, jpeg_degrade

aug_a, _ = load_image_tiles(coffee, image_size=448, augment=True, rng=0)
aug_b, _ = load_image_tiles(coffee, image_size=448, augment=True, rng=0)
draw = random.Random(0)
qualities = [draw.choice(JPEG_QUALITIES) for _ in range(len(tiles))]
print("JPEG quality per tile (seed 0):", qualities)
assert torch.equal(aug_a, aug_b) and not torch.equal(aug_a, coffee_pv)


def psnr(a, b):
    mse = np.mean((np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) ** 2)
    return 10 * np.log10(255**2 / mse)


for q in (75, 85, 95, 100):
    print(f"quality {q:3d}: PSNR {psnr(tiles[0], jpeg_degrade(tiles[0], q)):.1f} dB")

# %% [markdown]
# Side by side, with a zoom on the astronaut's badge, where the 8 x 8 JPEG blocks show at
# quality 75:

# %%
astro = dynamic_preprocess(photos["astronaut"])[0]
low = jpeg_degrade(astro, 75)
box = (180, 150, 260, 230)  # left, top, right, bottom
fig, axes = plt.subplots(1, 4, figsize=(12, 3.3), dpi=72)
small = (224, 224)  # the full tiles are displayed at half size; the zooms are at full resolution
for ax, im, title in zip(axes, (astro.resize(small), low.resize(small), astro.crop(box), low.crop(box)),
                         ("original tile", "JPEG quality 75", "zoom: original", "zoom: quality 75")):
    ax.imshow(im, interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.axis("off")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## Loading real-world files
#
# Data sets contain odd files. `load_image` gives each a defined result or a clear error:
# alpha is composited on **white** (the official code's plain `convert("RGB")` would keep
# whatever colour transparent pixels store), palette and CMYK images are converted, 16-bit
# images are scaled rather than clipped, EXIF rotation is applied, an animated GIF gives its
# first frame, and corrupt, truncated, empty or oversized files raise `ImageLoadError`,
# which names the file.

# %%
import io

from minivl.vision.transforms import ImageLoadError, load_image

rgba = Image.new("RGBA", (2, 1), (255, 0, 0, 0))  # fully transparent red ...
rgba.putpixel((1, 0), (0, 0, 255, 255))  # ... and opaque blue
print("RGBA ->", np.asarray(load_image(rgba)).tolist())
deep = Image.fromarray(np.array([[0, 32896, 65535]], dtype=np.uint16))
print(deep.mode, "->", np.asarray(load_image(deep))[0, :, 0].tolist())
for label, payload in (("truncated JPEG", None), ("random bytes", b"\x00" * 64)):
    if payload is None:
        buffer = io.BytesIO()
        photos["coffee"].save(buffer, format="JPEG")
        payload = buffer.getvalue()[:5000]
    try:
        load_image(io.BytesIO(payload))
    except ImageLoadError as err:
        print(f"{label}: {err}")

# %% [markdown]
# ## Measured result: same pixels as transformers, and faster
#
# transformers ships InternVL's image processor as `GotOcr2ImageProcessorPil` (with
# `crop_to_patches=True`, 448 pixels and the ImageNet statistics, as InternVL checkpoints
# configure it). Both must give the same tiles and values; then we time both on the four
# photos. The timing printed below is from the `cpu` run of this notebook on a shared 2-core
# machine; `benchmarks/preprocess.py` runs the longer comparison.

# %%
import time

from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

from minivl.scale import pick

reference = GotOcr2ImageProcessorPil(size={"height": 448, "width": 448}, image_mean=list(IMAGENET_MEAN),
                                     image_std=list(IMAGENET_STD), crop_to_patches=True, min_patches=1,
                                     max_patches=12)
for name, im in photos.items():
    ours, n = load_image_tiles(im, image_size=448, max_num=12)
    ref = reference(images=[im], return_tensors="pt")
    assert n == ref["num_patches"].tolist(), name
    assert (ours - ref["pixel_values"]).abs().max().item() <= 1e-6
print("identical tile counts and pixel values on the four photos")


def images_per_second(fn, rounds):
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for im in photos.values():
            fn(im)
        best = min(best, time.perf_counter() - start)
    return len(photos) / best


rounds = pick(smoke=1, cpu=5, gpu=5)
fast = images_per_second(lambda im: load_image_tiles(im, image_size=448, max_num=12), rounds)
slow = images_per_second(lambda im: reference(images=[im], return_tensors="pt"), rounds)
print(f"minivl {fast:.1f} images/s, transformers {slow:.1f} images/s: {fast / slow:.2f}x")

# %% [markdown]
# ## Summary
#
# - InternVL picks the grid `cols x rows` (at most `max_num` tiles) whose ratio is closest to
#   the image's; on an exact tie a larger grid wins only if the image has more than half its
#   pixels. Small images are still upscaled when their shape demands it.
# - Tiles are cut row-major from one BICUBIC resize; a thumbnail of the whole image comes
#   last, only when there is more than one tile. Each tile costs 256 LLM tokens.
# - Multi-image samples share the budget (`max_num // n` each, each with a thumbnail);
#   video frames are one tile each, sampled by interval (with the official off-by-one) in
#   training and by segment midpoints in evaluation.
# - Tiles become `pixel_values` through RGB, random JPEG (training only, per tile),
#   uint8 / 255 and ImageNet normalisation; `minivl` matches transformers to the bit.
#
# ## Exercises
#
# 1. *Easy.* Without running code, find the grid and the token count of a 1024 x 512 image
#    at `max_num = 12` and at `max_num = 1`. Check with `tile_grid` and `num_tiles`.
# 2. *Medium.* Find the smallest square image that gets a 2x2 grid when `image_size = 224`,
#    and explain why no integer size ever lands exactly on the tie threshold for a square.
# 3. *Hard.* Count, over all sizes from 1 to 2000 pixels on each side, how often the chosen
#    grid upscales the image by more than 4x in area. Which aspect ratios cause it, and how
#    would you change `find_closest_aspect_ratio` to cap the upscaling?
