"""From image files to InternVL's ``pixel_values``: loading, RGB, random JPEG, normalisation.

The official per-tile transform (``build_transform`` in ``internvl_chat/internvl/train/dataset.py``)
is, in order: convert to RGB; random JPEG re-encoding with quality in {75, ..., 100} (training
only, when the data set's ``data_augment`` is true); resize to ``image_size`` (BICUBIC);
``ToTensor`` (uint8 / 255, float32); ``Normalize`` with the ImageNet mean and std. This module
does the same with PIL and torch only, bit for bit on the arithmetic: ``x / 255``, then
``- mean``, then ``/ std``, each in float32, as torchvision does.

:func:`load_image` makes the first step robust: every odd file a real data set contains
(palette, alpha, CMYK, 16-bit, EXIF rotation, animated GIF, truncated, decompression bomb)
gets a defined result or an :class:`ImageLoadError` that names the file.

Explained in chapter 1 (notebooks/01_dynamic_resolution.ipynb).
"""

from __future__ import annotations

import functools
import io
import os
import random
import warnings
from collections.abc import Callable, Sequence
from typing import IO, Union

import numpy as np
import torch
from PIL import Image, ImageOps

from minivl.vision.tiling import dynamic_preprocess, tile_grid, tiles_per_image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: JPEG qualities of the augmentation, drawn uniformly (26 values).
JPEG_QUALITIES = tuple(range(75, 101))

ImageSource = Union[str, "os.PathLike[str]", IO[bytes], Image.Image]

_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


class ImageLoadError(ValueError):
    """An image that cannot be turned into RGB pixels; ``.path`` names the file, ``.reason`` says why."""

    def __init__(self, path: str, reason: str):
        self.path = path
        self.reason = reason
        super().__init__(f"cannot load image {path}: {reason}")


def _describe(source: object) -> str:
    """A printable name for an image source (a path, a file object's name, or its type)."""
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    name = getattr(source, "filename", None) or getattr(source, "name", None)
    if isinstance(name, (str, os.PathLike)) and os.fspath(name):
        return os.fspath(name)
    return f"<{type(source).__name__}>"


def to_rgb(image: Image.Image, name: str = "<image>") -> Image.Image:
    """Convert any PIL mode to 8-bit RGB with defined rules.

    * ``RGB`` is returned as is; ``L``, ``1``, ``P`` (no transparency), ``YCbCr`` use Pillow's conversion;
    * anything with alpha (``RGBA``, ``LA``, ``PA``, or a ``transparency`` entry, e.g. a palette
      image with a transparent colour) is **composited on a white background**, so transparent
      pixels become white rather than whatever colour they happen to store;
    * ``CMYK`` uses Pillow's plain CMYK -> RGB formula (no colour profile);
    * 16-bit and 32-bit integer grey (``I;16*``, ``I``) are read as 16-bit values, clipped to
      ``[0, 65535]`` and scaled to 8 bits by ``round(v / 257)`` (Pillow alone would clip at 255);
    * ``F`` (float) is clipped to ``[0, 255]`` by Pillow.

    Raises :class:`ImageLoadError` for an image with no pixels or a mode that has no RGB conversion.
    Explained in chapter 1 (notebooks/01_dynamic_resolution.ipynb).
    """
    width, height = image.size
    if width == 0 or height == 0:
        raise ImageLoadError(name, f"zero-size image ({width}x{height})")
    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return image
    try:
        if mode in _ALPHA_MODES or "transparency" in image.info:
            rgba = image.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, rgba).convert("RGB")
        if mode in _SIXTEEN_BIT_MODES:
            values = np.asarray(image).astype(np.int64)  # (H, W)
            values = (np.clip(values, 0, 65535) + 128) // 257  # round(v / 257) in integers
            return Image.fromarray(values.astype(np.uint8)).convert("RGB")
        if mode == "F":  # Pillow clips floats to 0..255 on the way to 8-bit grey
            return image.convert("L").convert("RGB")
        return image.convert("RGB")
    except (ValueError, OSError) as err:
        raise ImageLoadError(name, f"cannot convert mode {mode!r} to RGB ({err})") from err


def load_image(path_or_file: ImageSource, max_pixels: int | None = None) -> Image.Image:
    """Open an image file (path, file object, or an already open PIL image) as 8-bit RGB.

    Defined results: EXIF orientation is applied (``ImageOps.exif_transpose``); an animated
    image (GIF, APNG, WebP) gives its **first frame**; modes are converted by :func:`to_rgb`
    (alpha composited on white, 16-bit scaled, CMYK converted).

    Raises :class:`ImageLoadError` (a ``ValueError`` whose message and ``.path`` name the file)
    for a missing, empty, unidentifiable, corrupt or truncated file, a zero-size image, and an
    image with more than ``max_pixels`` pixels (default: Pillow's decompression-bomb limit
    ``PIL.Image.MAX_IMAGE_PIXELS``), which is refused before its pixels are decoded.
    Explained in chapter 1 (notebooks/01_dynamic_resolution.ipynb).
    """
    name = _describe(path_or_file)
    limit = Image.MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    try:
        if isinstance(path_or_file, Image.Image):
            return _finish(path_or_file, name, limit)
        with warnings.catch_warnings():
            # the size check below reports this case as an error instead of a warning
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path_or_file) as image:
                return _finish(image, name, limit)
    except ImageLoadError:
        raise
    except FileNotFoundError as err:
        raise ImageLoadError(name, "file not found") from err
    except Image.DecompressionBombError as err:
        raise ImageLoadError(name, f"larger than Pillow's decompression-bomb limit ({err})") from err
    except Image.UnidentifiedImageError as err:
        empty = isinstance(path_or_file, (str, os.PathLike)) and os.path.getsize(path_or_file) == 0
        reason = "empty file (0 bytes)" if empty else "not a readable image (corrupt or unsupported format)"
        raise ImageLoadError(name, reason) from err
    except Exception as err:  # truncated data, broken EXIF, decoder errors: all name the file
        raise ImageLoadError(name, f"corrupt or truncated image data ({type(err).__name__}: {err})") from err


def _finish(image: Image.Image, name: str, limit: int | None) -> Image.Image:
    """Size checks, first frame, EXIF rotation and RGB conversion of an opened image."""
    width, height = image.size
    if width == 0 or height == 0:
        raise ImageLoadError(name, f"zero-size image ({width}x{height})")
    if limit is not None and width * height > limit:
        raise ImageLoadError(
            name,
            f"{width}x{height} = {width * height} pixels exceeds the limit of {limit} pixels "
            "(Pillow's decompression-bomb guard, PIL.Image.MAX_IMAGE_PIXELS); raise it only for trusted files",
        )
    if getattr(image, "n_frames", 1) > 1:
        image.seek(0)
    image.load()  # decode now: truncated data fails here, inside the file's context
    image = ImageOps.exif_transpose(image)
    rgb = to_rgb(image, name)
    return rgb.copy() if rgb is image else rgb


# ---------------------------------------------------------------------------------------
# Tensors
# ---------------------------------------------------------------------------------------


def _mean_std(mean: Sequence[float], std: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std as float32 tensors of shape (3, 1, 1), as torchvision's Normalize builds them."""
    mean_t = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)  # (3,) -> (3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)  # (3,) -> (3, 1, 1)
    return mean_t, std_t


def to_tensor(image: Image.Image) -> torch.Tensor:
    """An RGB PIL image as a float32 tensor ``(3, H, W)`` in ``[0, 1]`` (uint8 / 255, like ``ToTensor``).

    Explained in chapter 1 (notebooks/01_dynamic_resolution.ipynb).
    """
    if image.mode != "RGB":
        raise ValueError(f"to_tensor expects an RGB image, got mode {image.mode!r}; convert it with to_rgb")
    array = torch.from_numpy(np.array(image, dtype=np.uint8))  # (H, W, 3)
    return array.permute(2, 0, 1).contiguous().to(torch.float32).div(255)  # (H, W, 3) -> (3, H, W)


def normalize(
    tensor: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> torch.Tensor:
    """``(tensor - mean) / std`` per channel, float32; ``tensor`` is ``(3, H, W)`` or ``(N, 3, H, W)``.

    Explained in chapter 1 (notebooks/01_dynamic_resolution.ipynb).
    """
    mean_t, std_t = _mean_std(mean, std)
    return tensor.sub(mean_t).div(std_t)


@functools.lru_cache(maxsize=8)
def _normalize_table(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """``table[c, v] = (v / 255 - mean[c]) / std[c]`` for every uint8 ``v``, in float32: (3, 256).

    Each entry is computed with the same three float32 operations as ToTensor + Normalize, so
    looking values up gives bit-identical results, about ten times faster than the arithmetic
    on every pixel.
    """
    values = np.arange(256, dtype=np.float32) / np.float32(255)  # (256,)
    mean_a = np.asarray(mean, dtype=np.float32)[:, None]  # (3,) -> (3, 1)
    std_a = np.asarray(std, dtype=np.float32)[:, None]  # (3,) -> (3, 1)
    return (values[None, :] - mean_a) / std_a  # (1, 256) and (3, 1) -> (3, 256)


def _tiles_to_pixel_values(
    tiles: Sequence[np.ndarray], mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> torch.Tensor:
    """uint8 tiles, each ``(S, S, 3)`` (views are fine) -> normalised float32 ``(N, 3, S, S)``.

    Equal to ToTensor + Normalize per tile, via the lookup table of :func:`_normalize_table`.
    """
    table = _normalize_table(tuple(float(m) for m in mean), tuple(float(v) for v in std))
    height, width, channels = tiles[0].shape
    out = np.empty((len(tiles), channels, height, width), dtype=np.float32)
    for n, tile in enumerate(tiles):  # filling one contiguous (S, S) plane at a time is the fastest gather
        for c in range(channels):
            np.take(table[c], tile[:, :, c], out=out[n, c])  # (S, S, 3)[..., c] -> (S, S)
    return torch.from_numpy(out)


def jpeg_degrade(image: Image.Image, quality: int) -> Image.Image:
    """Re-encode ``image`` as a JPEG of the given quality and decode it again (an RGB image).

    Explained in chapter 1 (notebooks/01_dynamic_resolution.ipynb).
    """
    if not 1 <= quality <= 100:
        raise ValueError(f"jpeg_degrade: quality must be in 1..100, got {quality}")
    with io.BytesIO() as buffer:
        image.convert("RGB").save(buffer, format="JPEG", quality=quality)
        buffer.seek(0)
        with Image.open(buffer) as decoded:
            return decoded.copy()


def random_jpeg(image: Image.Image, rng: random.Random) -> tuple[Image.Image, int]:
    """JPEG augmentation: a quality drawn uniformly from {75, ..., 100} with ``rng``; returns (image, quality).

    Explained in chapter 1 (notebooks/01_dynamic_resolution.ipynb).
    """
    quality = rng.choice(JPEG_QUALITIES)
    return jpeg_degrade(image, quality), quality


def _as_rng(rng: random.Random | int | None) -> random.Random:
    """A ``random.Random`` from a generator, a seed, or ``None`` (fresh, not reproducible)."""
    if isinstance(rng, random.Random):
        return rng
    return random.Random(rng)


def build_transform(
    is_train: bool,
    input_size: int = 448,
    rng: random.Random | int | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> Callable[[Image.Image], torch.Tensor]:
    """The official per-tile transform: RGB -> (JPEG if ``is_train``) -> resize -> tensor -> normalise.

    Returns a function from one PIL image to a ``(3, input_size, input_size)`` tensor. With
    ``is_train``, each call draws its own JPEG quality from ``rng``.
    Explained in chapter 1 (notebooks/01_dynamic_resolution.ipynb).
    """
    generator = _as_rng(rng)

    def transform(image: Image.Image) -> torch.Tensor:
        image = to_rgb(image)
        if is_train:
            image, _ = random_jpeg(image, generator)
        if image.size != (input_size, input_size):
            image = image.resize((input_size, input_size), Image.Resampling.BICUBIC)
        return normalize(to_tensor(image), mean, std)

    return transform


def _square_uint8(image: Image.Image, image_size: int) -> np.ndarray:
    """An RGB image resized (BICUBIC, only if needed) to ``image_size``, as uint8 ``(S, S, 3)``."""
    if image.size != (image_size, image_size):
        image = image.resize((image_size, image_size), Image.Resampling.BICUBIC)
    return np.asarray(image)


def _image_tiles_uint8(
    image: Image.Image,
    image_size: int,
    min_num: int,
    max_num: int,
    use_thumbnail: bool,
    augment: bool,
    rng: random.Random,
) -> list[np.ndarray]:
    """The tiles of one RGB image as uint8 arrays ``(S, S, 3)``, row-major, thumbnail last."""
    if augment:  # JPEG works on PIL tiles, one draw per tile, thumbnail included
        tiles = dynamic_preprocess(image, min_num, max_num, image_size, use_thumbnail)
        return [_square_uint8(random_jpeg(t, rng)[0], image_size) for t in tiles]
    # Fast path, same pixels as dynamic_preprocess: one resize, then views into the array.
    cols, rows = tile_grid(image.width, image.height, min_num, max_num, image_size)
    resized = np.asarray(image.resize((image_size * cols, image_size * rows), Image.Resampling.BICUBIC))
    s = image_size
    grid = resized.reshape(rows, s, cols, s, 3)  # (rows*S, cols*S, 3) -> (rows, S, cols, S, 3), a view
    tiles = [grid[k // cols, :, k % cols] for k in range(rows * cols)]  # row-major, each (S, S, 3)
    if use_thumbnail and len(tiles) > 1:
        tiles.append(_square_uint8(image, image_size))
    return tiles


def _as_image_list(images: ImageSource | Sequence[ImageSource]) -> list[ImageSource]:
    if isinstance(images, (str, os.PathLike, Image.Image)) or hasattr(images, "read"):
        return [images]
    images = list(images)
    if not images:
        raise ValueError("no images given")
    return images


def _open_rgb(source: ImageSource) -> Image.Image:
    """A source as RGB: files go through load_image, in-memory images through to_rgb."""
    if isinstance(source, Image.Image):
        return to_rgb(source, _describe(source))
    return load_image(source)


def load_image_tiles(
    images: ImageSource | Sequence[ImageSource],
    image_size: int = 448,
    max_num: int = 12,
    min_num: int = 1,
    use_thumbnail: bool = True,
    augment: bool = False,
    rng: random.Random | int | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> tuple[torch.Tensor, list[int]]:
    """One image, or the images of a multi-image sample, as ``pixel_values`` and tiles per image.

    Each image (a path, file object or PIL image) is loaded as RGB, tiled by
    :func:`~minivl.vision.tiling.dynamic_preprocess` (one image: ``max_num`` tiles; ``n``
    images: :func:`~minivl.vision.tiling.tiles_per_image` each, each with its own thumbnail),
    JPEG-augmented per tile when ``augment`` (qualities drawn from ``rng``, a ``random.Random``
    or a seed), and normalised. Returns ``pixel_values`` of shape ``(total_tiles, 3, S, S)``,
    float32, and the list of tile counts per image.
    Explained in chapter 1 (notebooks/01_dynamic_resolution.ipynb).
    """
    sources = _as_image_list(images)
    budget = max_num if len(sources) == 1 else tiles_per_image(len(sources), max_num)
    generator = _as_rng(rng)
    tiles: list[np.ndarray] = []
    counts = []
    for source in sources:
        chunk = _image_tiles_uint8(_open_rgb(source), image_size, min_num, budget, use_thumbnail, augment, generator)
        tiles.extend(chunk)
        counts.append(len(chunk))
    return _tiles_to_pixel_values(tiles, mean, std), counts


def load_video_tiles(
    frames: Sequence[ImageSource],
    image_size: int = 448,
    augment: bool = False,
    rng: random.Random | int | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> tuple[torch.Tensor, list[int]]:
    """Video frames as ``pixel_values`` ``(num_frames, 3, S, S)``: one tile per frame, no thumbnail.

    Each frame is converted to RGB, JPEG-augmented when ``augment`` (before the resize, as the
    official transform does), resized to ``image_size`` (BICUBIC) and normalised. The counts
    are all 1. Pick the frames first with :func:`~minivl.vision.tiling.get_frame_indices`
    (training) or :func:`~minivl.vision.tiling.get_index` (evaluation).
    Explained in chapter 1 (notebooks/01_dynamic_resolution.ipynb).
    """
    frames = list(frames)
    if not frames:
        raise ValueError("load_video_tiles: no frames given")
    generator = _as_rng(rng)
    arrays = []
    for frame in frames:
        image = _open_rgb(frame)
        if augment:
            image, _ = random_jpeg(image, generator)
        arrays.append(_square_uint8(image, image_size))
    return _tiles_to_pixel_values(arrays, mean, std), [1] * len(frames)
