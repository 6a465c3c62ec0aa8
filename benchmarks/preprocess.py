"""Preprocessing speed: minivl tiling + tensors vs transformers' PIL InternVL image processor.

Both turn the same RGB images into InternVL ``pixel_values`` (448-pixel tiles, 1 to 12 per
image plus a thumbnail, ImageNet normalisation). The script first checks that the two agree
(identical tile counts, pixel values within 1e-6), then times both in the same process and
prints images per second and the ratio.

Run from the repository root::

    python benchmarks/preprocess.py            # default: 5 timed rounds
    python benchmarks/preprocess.py --rounds 2 --image-size 224

Explained in chapter 1 (notebooks/01_dynamic_resolution.ipynb).
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import numpy as np
import torch
from PIL import Image

from minivl.vision.tiling import num_tiles, tile_grid
from minivl.vision.transforms import IMAGENET_MEAN, IMAGENET_STD, load_image_tiles


def sample_images() -> list[tuple[str, Image.Image]]:
    """Four photos shipped with scikit-image / matplotlib, plus synthetic images of common and odd sizes."""
    from matplotlib import cbook
    from skimage import data

    photos = [
        ("astronaut", Image.fromarray(data.astronaut())),
        ("coffee", Image.fromarray(data.coffee())),
        ("rocket", Image.fromarray(data.rocket())),
    ]
    with cbook.get_sample_data("grace_hopper.jpg") as f:
        photos.append(("grace_hopper", Image.open(f).convert("RGB")))
    rng = np.random.default_rng(0)
    synthetic = []
    for width, height in [(1920, 1080), (1080, 1920), (800, 600), (1000, 400), (300, 200), (123, 457), (2000, 150)]:
        y, x = np.mgrid[0:height, 0:width]  # (H, W) each: a smooth pattern plus noise, like a photo
        base = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (width + height)], axis=-1)
        noisy = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)  # (H, W, 3)
        synthetic.append((f"synthetic {width}x{height}", Image.fromarray(noisy)))
    return photos + synthetic


def make_reference(image_size: int, max_num: int):
    """transformers' PIL-backend GOT-OCR2 processor configured the way InternVL checkpoints do."""
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

    return GotOcr2ImageProcessorPil(
        size={"height": image_size, "width": image_size},
        image_mean=list(IMAGENET_MEAN),
        image_std=list(IMAGENET_STD),
        crop_to_patches=True,
        min_patches=1,
        max_patches=max_num,
    )


def check_grids(image_size: int, max_num: int, n: int = 20000, seed: int = 0) -> int:
    """Count grid disagreements with transformers' search over random sizes (both are pure arithmetic)."""
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import get_optimal_tiled_canvas

    rng = random.Random(seed)
    mismatches = 0
    for _ in range(n):
        w, h = rng.randint(1, 4000), rng.randint(1, 4000)
        if tuple(get_optimal_tiled_canvas((h, w), (image_size, image_size), 1, max_num)) != tile_grid(
            w, h, 1, max_num, image_size
        ):
            mismatches += 1
    return mismatches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=448)
    parser.add_argument("--max-num", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    s, max_num = args.image_size, args.max_num

    images = sample_images()
    reference = make_reference(s, max_num)
    print(f"torch threads: {torch.get_num_threads()}, image_size {s}, max_num {max_num}, {len(images)} images")

    # 1. agreement first: same tile counts, same pixel values
    total_tiles = 0
    for name, image in images:
        ours, counts = load_image_tiles(image, image_size=s, max_num=max_num)
        ref = reference(images=[image], return_tensors="pt")
        ref_values = ref["pixel_values"]
        assert counts == ref["num_patches"].tolist(), f"{name}: tile counts {counts} vs {ref['num_patches'].tolist()}"
        assert counts[0] == num_tiles(image.width, image.height, 1, max_num, s)
        diff = (ours - ref_values).abs().max().item()
        assert diff <= 1e-6, f"{name}: max |diff| {diff}"
        total_tiles += counts[0]
        cols, rows = tile_grid(image.width, image.height, 1, max_num, s)
        print(f"  {name:<22} {image.width:>4}x{image.height:<4} grid {cols}x{rows} -> {counts[0]:2d} tiles, "
              f"max |diff| {diff:.1e}")
    mismatches = check_grids(s, max_num)
    print(f"grid search vs transformers on 20000 random sizes: {mismatches} disagreements")

    # 2. timing, interleaved rounds so both see the same machine state
    def run_minivl() -> None:
        for _, image in images:
            load_image_tiles(image, image_size=s, max_num=max_num)

    def run_reference() -> None:
        for _, image in images:
            reference(images=[image], return_tensors="pt")

    run_minivl(), run_reference()  # warm-up
    times = {"minivl": [], "transformers": []}
    for _ in range(args.rounds):
        for label, fn in (("minivl", run_minivl), ("transformers", run_reference)):
            start = time.perf_counter()
            fn()
            times[label].append(time.perf_counter() - start)
    rates = {k: len(images) / statistics.median(v) for k, v in times.items()}
    print(f"{total_tiles} tiles per round, median of {args.rounds} rounds")
    for label, rate in rates.items():
        print(f"  {label:<13} {rate:7.1f} images/s  ({rate * total_tiles / len(images):7.1f} tiles/s)")
    print(f"speed-up minivl / transformers: {rates['minivl'] / rates['transformers']:.2f}x")


if __name__ == "__main__":
    main()
