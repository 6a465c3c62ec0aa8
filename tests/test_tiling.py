"""Dynamic tiling, tile budgets and frame sampling (minivl.vision.tiling).

Expected grids are derived by hand from the official algorithm (comments give the reasoning);
a sweep also checks against transformers' independent implementation of the same search.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
from PIL import Image

from minivl.vision.tiling import (
    TOKENS_PER_TILE,
    dynamic_preprocess,
    find_closest_aspect_ratio,
    get_frame_indices,
    get_index,
    num_tiles,
    target_ratios,
    tile_boxes,
    tile_grid,
    tiles_per_image,
    video_token_budget,
)


def test_target_ratios_order_and_count():
    ratios = target_ratios(1, 12)
    # products 1..12 have 1,2,2,3,2,4,2,4,3,4,2,6 factorisations (i, j)
    assert len(ratios) == 35
    assert ratios[:8] == [(1, 1), (1, 2), (2, 1), (1, 3), (3, 1), (1, 4), (2, 2), (4, 1)]
    assert ratios[-6:] == [(1, 12), (2, 6), (3, 4), (4, 3), (6, 2), (12, 1)]
    assert target_ratios(4, 4) == [(1, 4), (2, 2), (4, 1)]
    assert len(target_ratios(1, 6)) == 14  # 1+2+2+3+2+4
    with pytest.raises(ValueError, match="min_num"):
        target_ratios(3, 2)
    with pytest.raises(ValueError, match="min_num"):
        target_ratios(0, 4)


# (width, height, max_num, image_size) -> (cols, rows); reasoning per row
GRID_TABLE = [
    # a 1x1 image: ratio 1, (1,1) hits diff 0 first; ties (2,2),(3,3) need area > 2*448^2 -> stays
    (1, 1, 12, 448, (1, 1)),
    # extreme ratios clamp to the longest allowed strip
    (4000, 1, 12, 448, (12, 1)),
    (1, 4000, 12, 448, (1, 12)),
    (4000, 1, 6, 448, (6, 1)),
    (1, 4000, 6, 448, (1, 6)),
    (4000, 1, 12, 112, (12, 1)),
    # ratio 1.5 hits diff 0 at (3,2) first: a small image is upscaled to 6 tiles
    (300, 200, 12, 448, (3, 2)),
    # ratio 0.5 -> (1,2); the tie (2,4) needs area > 4*448^2
    (100, 200, 12, 448, (1, 2)),
    # 4:3 exists only with 12 tiles; with 6, (3,2) is closest (|4/3-3/2| = 1/6 < 1/3)
    (800, 600, 12, 448, (4, 3)),
    (800, 600, 6, 448, (3, 2)),
    # square ties: (2,2) needs area > 2*448^2 = 401408 (633^2=400689, 634^2=401956),
    # (3,3) needs area > 4.5*448^2 = 903168 (950^2=902500, 951^2=904401)
    (448, 448, 12, 448, (1, 1)),
    (633, 633, 12, 448, (1, 1)),
    (634, 634, 12, 448, (2, 2)),
    (950, 950, 12, 448, (2, 2)),
    (951, 951, 12, 448, (3, 3)),
    (951, 951, 6, 448, (2, 2)),  # (3,3) is not a candidate with 6 tiles
    # image_size 112: 2*112^2 = 25088 (158^2=24964, 159^2=25281); 4.5*112^2 = 56448 (237^2=56169, 238^2=56644)
    (158, 158, 12, 112, (1, 1)),
    (159, 159, 12, 112, (2, 2)),
    (237, 237, 12, 112, (2, 2)),
    (238, 238, 12, 112, (3, 3)),
    # ratio 2.5 with 6 tiles: (2,1) and (3,1) tie at diff 0.5 exactly; (3,1) wins iff area > 1.5*S^2
    (1000, 400, 6, 448, (3, 1)),  # 400000 > 301056
    (250, 100, 6, 448, (2, 1)),  # 25000 < 301056
    (250, 100, 6, 112, (3, 1)),  # 25000 > 18816
    # with 12 tiles ratio 2.5 exists: (5,2)
    (1000, 400, 12, 448, (5, 2)),
    (250, 100, 12, 448, (5, 2)),
]


@pytest.mark.parametrize("width, height, max_num, image_size, expected", GRID_TABLE)
def test_grid_table(width, height, max_num, image_size, expected):
    assert tile_grid(width, height, 1, max_num, image_size) == expected
    cols, rows = expected
    n = cols * rows
    assert num_tiles(width, height, 1, max_num, image_size) == (n + 1 if n > 1 else n)
    assert num_tiles(width, height, 1, max_num, image_size, use_thumbnail=False) == n


def test_tie_rule_is_strict_on_area():
    # aspect 1 ties (1,1) and (2,2); area exactly 0.5*S^2*4 must NOT move to (2,2)
    ratios = target_ratios(1, 4)
    assert find_closest_aspect_ratio(1.0, ratios, 2 * 448, 448, 448) == (1, 1)
    assert find_closest_aspect_ratio(1.0, ratios, 2 * 448 + 1, 448, 448) == (2, 2)
    # a tie never moves to a smaller grid that comes later: strictly better ratio wins regardless of area
    assert find_closest_aspect_ratio(2.0, target_ratios(1, 12), 1, 1, 448) == (2, 1)
    assert find_closest_aspect_ratio(2.0, target_ratios(1, 12), 10**6, 10**6, 448) == (4, 2)


def test_min_num_excludes_small_grids():
    # min_num=4 leaves (1,4),(2,2),(4,1) .. (12 max); a 1x1 image must get (2,2): ratio 1, first at product 4
    assert tile_grid(1, 1, 4, 12, 448) == (2, 2)
    assert tile_grid(10, 10, 2, 2, 448) == (1, 2)  # |1 - 1/2| = 0.5 < |1 - 2| = 1


def test_matches_transformers_grid_search():
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import get_optimal_tiled_canvas

    rng = random.Random(0)
    sizes = [(rng.randint(1, 3000), rng.randint(1, 3000)) for _ in range(400)]
    sizes += [(s, s) for s in (633, 634, 950, 951)] + [(1, 4000), (4000, 1), (250, 100)]
    for max_num in (12, 6):
        for image_size in (448, 112):
            for w, h in sizes:
                ref = get_optimal_tiled_canvas((h, w), (image_size, image_size), 1, max_num)
                assert tile_grid(w, h, 1, max_num, image_size) == tuple(ref), (w, h, max_num, image_size)


def _coordinate_image(cols: int, rows: int, s: int) -> Image.Image:
    """R = x within tile, G = y within tile, B = row-major tile id (sizes match the grid: no resampling)."""
    y, x = np.mgrid[0 : rows * s, 0 : cols * s]  # (H, W) each
    rgb = np.stack([x % s, y % s, (y // s) * cols + x // s], axis=-1).astype(np.uint8)  # (H, W, 3)
    return Image.fromarray(rgb)


def test_row_major_order_and_thumbnail_last():
    s = 112
    image = _coordinate_image(3, 2, s)  # 336 x 224, ratio 1.5 -> grid (3, 2) exactly, resize is the identity
    tiles = dynamic_preprocess(image, max_num=12, image_size=s)
    assert len(tiles) == 7
    for k, tile in enumerate(tiles[:6]):
        a = np.asarray(tile)
        assert tile.size == (s, s)
        assert (a[..., 2] == k).all(), f"tile {k} is not row-major tile {k}"
        assert (a[0, :, 0] == np.arange(s)).all() and (a[:, 0, 1] == np.arange(s)).all()
    thumb = np.asarray(tiles[6])
    expected = np.asarray(image.resize((s, s), Image.Resampling.BICUBIC))
    assert (thumb == expected).all()
    # the thumbnail sees the whole image: its blue channel spans all 6 tile ids
    assert set(np.unique(thumb[..., 2])) >= {0, 5}
    assert tile_boxes(3, 2, s)[4] == (s, s, 2 * s, 2 * s)  # tile 4: column 1, row 1


def test_single_tile_has_no_thumbnail_and_flag_off():
    image = Image.new("RGB", (50, 50), (10, 20, 30))
    tiles = dynamic_preprocess(image, image_size=112)
    assert len(tiles) == 1 and tiles[0].size == (112, 112)
    assert np.asarray(tiles[0])[0, 0].tolist() == [10, 20, 30]
    wide = Image.new("RGB", (300, 100))
    assert len(dynamic_preprocess(wide, image_size=112, use_thumbnail=False)) == 3
    assert len(dynamic_preprocess(wide, image_size=112, use_thumbnail=True)) == 4


def test_resized_tiles_equal_crops_of_one_resize():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (70, 130, 3), dtype=np.uint8))  # W=130, H=70
    cols, rows = tile_grid(130, 70, 1, 6, 56)  # ratio 1.857: (2,1) diff 0.143 < (3,2) diff 0.357
    assert (cols, rows) == (2, 1)
    big = np.asarray(image.resize((112, 56), Image.Resampling.BICUBIC))
    tiles = dynamic_preprocess(image, max_num=6, image_size=56)
    assert (np.asarray(tiles[0]) == big[:, :56]).all() and (np.asarray(tiles[1]) == big[:, 56:]).all()


def test_dynamic_preprocess_rejects_non_images():
    with pytest.raises(TypeError, match="PIL"):
        dynamic_preprocess(np.zeros((4, 4, 3)))
    with pytest.raises(ValueError, match="positive"):
        tile_grid(0, 10)


def test_tile_budgets():
    assert tiles_per_image(1, 12) == 12
    assert tiles_per_image(3, 12) == 4
    assert tiles_per_image(5, 12) == 2
    assert tiles_per_image(13, 12) == 1  # max(1, 0)
    assert tiles_per_image(2, 6) == 3
    with pytest.raises(ValueError, match="n_images"):
        tiles_per_image(0, 12)
    assert TOKENS_PER_TILE == 256
    assert video_token_budget(8) == 2048


def test_frame_indices_middle_by_hand():
    # linspace(0, 20, 5) = [0, 5, 10, 15, 20]; ranges (0,4),(5,9),(10,14),(15,19); middles 2, 7, 12, 17
    assert get_frame_indices(4, 20, "middle") == [2, 7, 12, 17]
    # linspace(0, 10, 4) = [0, 3.33, 6.67, 10] -> [0, 3, 6, 10]; ranges (0,2),(3,5),(6,9) -> 1, 4, 7
    assert get_frame_indices(3, 10, "middle") == [1, 4, 7]
    # fewer frames than requested: 2 frames, padded with the last one
    assert get_frame_indices(4, 2, "middle") == [0, 1, 1, 1]
    assert get_frame_indices(4, 20, "middle", fix_start=1) == [1, 6, 11, 16]


def test_frame_indices_rand_off_by_one():
    # intervals [0,5),[5,10),[10,15),[15,20): draws come from range(a, b-1) = a..b-2
    seen = [set() for _ in range(4)]
    for seed in range(300):
        idx = get_frame_indices(4, 20, "rand", rng=random.Random(seed))
        for k, i in enumerate(idx):
            seen[k].add(i)
    assert seen == [{0, 1, 2, 3}, {5, 6, 7, 8}, {10, 11, 12, 13}, {15, 16, 17, 18}]
    assert get_frame_indices(4, 20, rng=random.Random(7)) == get_frame_indices(4, 20, rng=random.Random(7))


def test_frame_indices_rand_fallbacks():
    # 3 frames, 3 intervals of length 1: range(a, a) is empty -> sorted distinct frames = all of them
    assert get_frame_indices(3, 3, "rand", rng=random.Random(0)) == [0, 1, 2]
    # 2 frames for 4 requested: fallback [0, 1], then padded with the last index
    assert get_frame_indices(4, 2, "rand", rng=random.Random(0)) == [0, 1, 1, 1]
    # 5 frames, 4 intervals [0,1,2,3,5]: single-frame intervals -> 4 distinct sorted of 0..4
    for seed in range(20):
        idx = get_frame_indices(4, 5, "rand", rng=random.Random(seed))
        assert idx == sorted(set(idx)) and len(idx) == 4 and 0 <= idx[0] and idx[-1] <= 4
    with pytest.raises(ValueError, match="sample"):
        get_frame_indices(4, 20, "fps1")


def test_get_index_segment_midpoints():
    # frames 0..99, 4 segments of 24.75: int(12.375 + round(24.75 i)) = 12, 37, 62 (round(49.5)=50), 86
    assert get_index(None, 30, 99, num_segments=4) == [12, 37, 62, 86]
    # seg 2.5: round(2.5) = 2 (half to even, like np.round) -> int(1.25 + 2) = 3, not 4
    assert get_index(None, 30, 10, num_segments=4) == [1, 3, 6, 9]
    # bound of 1 s .. 2 s at 10 fps: frames 10..20, 2 segments of 5: int(12.5 + 0) = 12, int(12.5 + 5) = 17
    assert get_index((1.0, 2.0), 10, 99, num_segments=2) == [12, 17]
