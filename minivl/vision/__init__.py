"""The vision side of minivl: dynamic tiling, image transforms and (chapter 2) InternViT.

Explained in chapter 1 (notebooks/01_dynamic_resolution.ipynb) and chapter 2.
"""

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
from minivl.vision.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    JPEG_QUALITIES,
    ImageLoadError,
    build_transform,
    jpeg_degrade,
    load_image,
    load_image_tiles,
    load_video_tiles,
    normalize,
    random_jpeg,
    to_rgb,
    to_tensor,
)

# InternViT (chapter 2) is re-exported here from minivl.vision.intern_vit.

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "JPEG_QUALITIES",
    "TOKENS_PER_TILE",
    "ImageLoadError",
    "build_transform",
    "dynamic_preprocess",
    "find_closest_aspect_ratio",
    "get_frame_indices",
    "get_index",
    "jpeg_degrade",
    "load_image",
    "load_image_tiles",
    "load_video_tiles",
    "normalize",
    "num_tiles",
    "random_jpeg",
    "target_ratios",
    "tile_boxes",
    "tile_grid",
    "tiles_per_image",
    "to_rgb",
    "to_tensor",
    "video_token_budget",
]
