"""Dynamic high-resolution tiling, as InternVL 2.5 does it (report section 3.1).

An image of any size is matched to a grid of ``cols x rows`` square tiles whose aspect
ratio is closest to the image's, resized to exactly ``(image_size * cols, image_size * rows)``
and cut into tiles in row-major order. When there is more than one tile, a thumbnail (the
whole image squeezed to one tile) is appended last, so the model sees the global layout too.

This module also holds the tile *budgets*: how many tiles one image gets when a sample has
several images, and how video frames are sampled (one tile per frame).

Names follow the official ``internvl_chat/internvl/train/dataset.py``
(``find_closest_aspect_ratio``, ``dynamic_preprocess``, ``get_frame_indices``) and the model
card's ``get_index``. Explained in chapter 1 (notebooks/01_dynamic_resolution.ipynb).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
from PIL import Image

#: Image tokens one tile becomes in the LLM: (448 / 14)^2 = 1024 patches, 2x2 pixel unshuffle.
TOKENS_PER_TILE = 256


def target_ratios(min_num: int = 1, max_num: int = 12) -> list[tuple[int, int]]:
    """All tile grids ``(cols, rows)`` with ``min_num <= cols * rows <= max_num``.

    Sorted by tile count, then by ``cols`` (the official code sorts a Python ``set`` by tile
    count only; the order inside one count never changes the chosen grid).
    Explained in chapter 1 (notebooks/01_dynamic_resolution.ipynb).
    """
    if min_num < 1 or max_num < min_num:
        raise ValueError(f"target_ratios: need 1 <= min_num <= max_num, got min_num={min_num}, max_num={max_num}")
    grids = [(i, j) for i in range(1, max_num + 1) for j in range(1, max_num + 1) if min_num <= i * j <= max_num]
    return sorted(grids, key=lambda g: (g[0] * g[1], g[0]))


def find_closest_aspect_ratio(
    aspect_ratio: float,
    target_ratios: Sequence[tuple[int, int]],
    width: int,
    height: int,
    image_size: int,
) -> tuple[int, int]:
    """The grid ``(cols, rows)`` whose ratio ``cols / rows`` is closest to ``aspect_ratio``.

    ``target_ratios`` must be ordered by tile count (see :func:`target_ratios`). The first
    grid reaching the smallest difference wins, even if it upscales a small image a lot. On
    an *exact* float tie, a later (larger) grid replaces it only when the original image has
    more than half the pixels of that grid: ``width * height > 0.5 * image_size**2 * cols * rows``
    (the report's "at most 2x upscaling" rule, strict ``>``).
    Explained in chapter 1 (notebooks/01_dynamic_resolution.ipynb).
    """
    best_diff = float("inf")
    best = (1, 1)
    area = width * height
    for cols, rows in target_ratios:
        diff = abs(aspect_ratio - cols / rows)
        if diff < best_diff:
            best_diff = diff
            best = (cols, rows)
        elif diff == best_diff and area > 0.5 * image_size * image_size * cols * rows:
            best = (cols, rows)
    return best


def tile_grid(width: int, height: int, min_num: int = 1, max_num: int = 12, image_size: int = 448) -> tuple[int, int]:
    """The grid ``(cols, rows)`` that :func:`dynamic_preprocess` uses for a ``width x height`` image.

    Pure arithmetic, no pixels: use it to plan token budgets.
    Explained in chapter 1 (notebooks/01_dynamic_resolution.ipynb).
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"tile_grid: image size must be positive, got {width}x{height}")
    if image_size <= 0:
        raise ValueError(f"tile_grid: image_size must be positive, got {image_size}")
    ratios = target_ratios(min_num, max_num)
    return find_closest_aspect_ratio(width / height, ratios, width, height, image_size)


def num_tiles(
    width: int,
    height: int,
    min_num: int = 1,
    max_num: int = 12,
    image_size: int = 448,
    use_thumbnail: bool = True,
) -> int:
    """How many tiles :func:`dynamic_preprocess` returns for a ``width x height`` image (thumbnail included).

    Explained in chapter 1 (notebooks/01_dynamic_resolution.ipynb).
    """
    cols, rows = tile_grid(width, height, min_num, max_num, image_size)
    n = cols * rows
    return n + 1 if use_thumbnail and n > 1 else n


def tile_boxes(cols: int, rows: int, image_size: int) -> list[tuple[int, int, int, int]]:
    """PIL crop boxes ``(left, top, right, bottom)`` of the tiles, in row-major order.

    Tile ``k`` is column ``k % cols`` and row ``k // cols`` of the resized image.
    Explained in chapter 1 (notebooks/01_dynamic_resolution.ipynb).
    """
    boxes = []
    for k in range(cols * rows):
        c, r = k % cols, k // cols
        boxes.append((c * image_size, r * image_size, (c + 1) * image_size, (r + 1) * image_size))
    return boxes


def dynamic_preprocess(
    image: Image.Image,
    min_num: int = 1,
    max_num: int = 12,
    image_size: int = 448,
    use_thumbnail: bool = True,
) -> list[Image.Image]:
    """Cut ``image`` into InternVL's dynamic-resolution tiles (a list of ``image_size``-square PIL images).

    The image is resized (BICUBIC) to the grid of :func:`tile_grid`, cropped row-major, and,
    when ``use_thumbnail`` and there is more than one tile, followed by a thumbnail: the
    original image resized to ``image_size x image_size``, ignoring its aspect ratio.
    Convert the image to RGB first (``minivl.vision.transforms.load_image`` does).
    Explained in chapter 1 (notebooks/01_dynamic_resolution.ipynb).
    """
    if not isinstance(image, Image.Image):
        raise TypeError(f"dynamic_preprocess expects a PIL.Image.Image, got {type(image).__name__}")
    width, height = image.size
    cols, rows = tile_grid(width, height, min_num, max_num, image_size)
    resized = image.resize((image_size * cols, image_size * rows), Image.Resampling.BICUBIC)
    tiles = [resized.crop(box) for box in tile_boxes(cols, rows, image_size)]
    if use_thumbnail and len(tiles) > 1:
        tiles.append(image.resize((image_size, image_size), Image.Resampling.BICUBIC))
    return tiles


# ---------------------------------------------------------------------------------------
# Tile budgets by data type (official internvl_chat_finetune.py, multi-image and video items)
# ---------------------------------------------------------------------------------------


def tiles_per_image(n_images: int, max_num: int) -> int:
    """Tile budget of each image in a multi-image sample: ``max(1, max_num // n_images)``.

    Each image still gets its own thumbnail when it has more than one tile, so a sample can
    exceed ``max_num`` tiles in total. Video frames are one tile each (no thumbnail).
    Explained in chapter 1 (notebooks/01_dynamic_resolution.ipynb).
    """
    if n_images < 1:
        raise ValueError(f"tiles_per_image: n_images must be >= 1, got {n_images}")
    if max_num < 1:
        raise ValueError(f"tiles_per_image: max_num must be >= 1, got {max_num}")
    return max(1, max_num // n_images)


def get_frame_indices(
    num_frames: int,
    vlen: int,
    sample: str = "rand",
    rng: random.Random | None = None,
    fix_start: int | None = None,
) -> list[int]:
    """Training-time frame sampling of InternVL: one frame from each of ``num_frames`` equal intervals.

    ``[0, vlen)`` is split at ``int(linspace(0, vlen, n + 1))`` with ``n = min(num_frames, vlen)``.
    Interval ``[a, b)`` is recorded as ``(a, b - 1)``, and then, as in the official code:

    * ``"rand"`` draws from ``range(a, b - 1)``, so the last frame ``b - 1`` of an interval is
      never picked (an off-by-one kept for fidelity). If any interval is a single frame that
      range is empty, and the code falls back to ``n`` distinct frames in increasing order;
    * ``"middle"`` takes ``(a + b - 1) // 2``; ``fix_start`` (when given) takes ``a + fix_start``.

    When the video has fewer frames than requested, the last index is repeated up to
    ``num_frames``. ``rng`` (a ``random.Random``) makes ``"rand"`` reproducible; the official
    fallback uses NumPy's global generator, here the same ``rng`` draws it.
    Explained in chapter 1 (notebooks/01_dynamic_resolution.ipynb).
    """
    if num_frames < 1 or vlen < 1:
        raise ValueError(f"get_frame_indices: need num_frames >= 1 and vlen >= 1, got {num_frames}, {vlen}")
    if sample not in ("rand", "middle"):
        raise ValueError(f"get_frame_indices: sample must be 'rand' or 'middle', got {sample!r}")
    rng = rng if rng is not None else random.Random()
    n = min(num_frames, vlen)
    # the official interval edges, float grid truncated towards zero: (n + 1,)
    edges = np.linspace(0, vlen, n + 1).astype(int).tolist()
    ranges = [(edges[k], edges[k + 1] - 1) for k in range(n)]
    if sample == "rand":
        if all(hi > lo for lo, hi in ranges):
            indices = [rng.choice(range(lo, hi)) for lo, hi in ranges]
        else:  # an empty range(lo, lo): fall back to n distinct sorted frames
            indices = sorted(rng.sample(range(vlen), n))
    elif fix_start is not None:
        indices = [lo + fix_start for lo, _ in ranges]
    else:
        indices = [(lo + hi) // 2 for lo, hi in ranges]
    if len(indices) < num_frames:
        indices = indices + [indices[-1]] * (num_frames - len(indices))
    return indices


def get_index(
    bound: tuple[float, float] | None,
    fps: float,
    max_frame: int,
    first_idx: int = 0,
    num_segments: int = 32,
) -> list[int]:
    """Evaluation-time frame sampling (InternVL model card ``load_video``): segment midpoints.

    Frames ``first_idx .. max_frame`` (``max_frame = len(video) - 1``), optionally limited to
    ``bound = (start_s, end_s)`` seconds, are split into ``num_segments`` segments of
    ``seg = (end - start) / num_segments`` frames; segment ``i`` gives
    ``int(start + seg / 2 + round(seg * i))`` (``round`` halves to even, as ``np.round``).
    Explained in chapter 1 (notebooks/01_dynamic_resolution.ipynb).
    """
    if num_segments < 1:
        raise ValueError(f"get_index: num_segments must be >= 1, got {num_segments}")
    start, end = bound if bound is not None else (-100000, 100000)
    start_idx = max(first_idx, round(start * fps))
    end_idx = min(round(end * fps), max_frame)
    seg_size = float(end_idx - start_idx) / num_segments
    return [int(start_idx + seg_size / 2 + round(seg_size * i)) for i in range(num_segments)]


def video_token_budget(num_frames: int, tokens_per_tile: int = TOKENS_PER_TILE) -> int:
    """Image tokens of a video: one tile (no thumbnail) per frame.

    Explained in chapter 1 (notebooks/01_dynamic_resolution.ipynb).
    """
    return num_frames * tokens_per_tile

