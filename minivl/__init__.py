"""minivl: InternVL 2.5 rebuilt from the ground up.

The package is the single source of truth of the book: every chapter imports from here.
See ``notebooks/00_introduction.ipynb`` for a map of chapters to modules.

The names below are importable from ``minivl`` directly (``from minivl import MiniVL``);
each is loaded from its module on first use, so ``import minivl`` stays fast.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version

from minivl.scale import SCALES, cache_dir, get_scale, pick, print_environment

try:
    __version__ = version("minivl")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

# public name -> module that defines it
_EXPORTS = {
    # chapter 1: tiling and transforms
    "dynamic_preprocess": "minivl.vision.tiling",
    "find_closest_aspect_ratio": "minivl.vision.tiling",
    "tile_grid": "minivl.vision.tiling",
    "tiles_per_image": "minivl.vision.tiling",
    "get_frame_indices": "minivl.vision.tiling",
    "load_image": "minivl.vision.transforms",
    "load_image_tiles": "minivl.vision.transforms",
    "load_video_tiles": "minivl.vision.transforms",
    "ImageLoadError": "minivl.vision.transforms",
    # chapters 2-3: InternViT, pixel unshuffle, projector
    "VisionConfig": "minivl.config",
    "InternVisionModel": "minivl.vision.intern_vit",
    "pixel_shuffle": "minivl.projector",
    "MLPProjector": "minivl.projector",
    "num_image_token": "minivl.projector",
    # chapter 4: tokens and templates
    "train_tokenizer": "minivl.text.tokenizer",
    "load_tokenizer": "minivl.text.tokenizer",
    "image_token_id": "minivl.text.tokenizer",
    "get_template": "minivl.text.template",
    "preprocess_internvl2_5": "minivl.text.prompt",
    # chapter 5: the model and its checkpoints
    "MiniVL": "minivl.model",
    "MiniVLConfig": "minivl.config",
    "StateDictKeyError": "minivl.checkpoint",
    # chapters 6-9: data, filtering, packing, loss
    "generate_suite": "minivl.data.synthetic",
    "read_meta": "minivl.data.records",
    "read_records": "minivl.data.records",
    "DataConfig": "minivl.data.dataset",
    "build_datasets": "minivl.data.dataset",
    "run_filters": "minivl.data.filtering",
    "PackedDataset": "minivl.data.packing",
    "packed_collate_fn": "minivl.data.packing",
    "enable_packed_attention": "minivl.train.attention",
    "weighted_causal_lm_loss": "minivl.train.loss",
    "len2weight": "minivl.train.loss",
    # chapters 10-13: training
    "StageConfig": "minivl.train.stages",
    "get_stage": "minivl.train.stages",
    "train": "minivl.train.trainer",
    "warm_start_llm": "minivl.train.warmstart",
    # chapters 14-15: evaluation
    "build_prompt": "minivl.eval.prompts",
    "extract_answer": "minivl.eval.extract",
    "majority_vote": "minivl.eval.vote",
}

__all__ = ["SCALES", "__version__", "cache_dir", "get_scale", "pick", "print_environment", *_EXPORTS]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'minivl' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
