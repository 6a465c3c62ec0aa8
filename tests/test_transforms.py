"""Image loading, RGB rules, JPEG augmentation and pixel_values (minivl.vision.transforms)."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
import torch
from PIL import Image

from minivl.vision.tiling import dynamic_preprocess
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


def _noise(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


# ---------------------------------------------------------------------------------------- tensors


def test_normalised_values_by_hand():
    image = Image.new("RGB", (40, 40), (0, 128, 255))
    pixel_values, counts = load_image_tiles(image, image_size=56)
    assert counts == [1] and pixel_values.shape == (1, 3, 56, 56) and pixel_values.dtype == torch.float32
    # (v / 255 - mean) / std: (0 - .485)/.229, (128/255 - .456)/.224, (1 - .406)/.225
    assert pixel_values[0, :, 10, 10].tolist() == pytest.approx([-2.117904, 0.205182, 2.64], abs=1e-6)
    # and bit-exact with the three float32 steps of ToTensor + Normalize
    f32 = np.float32
    expected = [(f32(v) / f32(255) - f32(m)) / f32(s) for v, m, s in zip((0, 128, 255), IMAGENET_MEAN, IMAGENET_STD)]
    assert pixel_values[0, :, 0, 0].numpy().tolist() == [float(e) for e in expected]
    assert IMAGENET_MEAN == (0.485, 0.456, 0.406) and IMAGENET_STD == (0.229, 0.224, 0.225)


def test_to_tensor_divides_uint8_by_255():
    image = _noise(5, 3)
    t = to_tensor(image)
    assert t.shape == (3, 3, 5) and t.dtype == torch.float32
    a = np.array(image)
    assert t[1, 2, 4].item() == np.float32(a[2, 4, 1]) / np.float32(255)
    assert torch.equal(t * 255, torch.from_numpy(a).permute(2, 0, 1).float())  # (H, W, C) -> (C, H, W)
    with pytest.raises(ValueError, match="RGB"):
        to_tensor(Image.new("L", (2, 2)))


def test_fast_path_equals_official_per_tile_transform():
    image = _noise(300, 130)  # ratio 2.31 -> (2, 1) with max 6 and S 56
    transform = build_transform(is_train=False, input_size=56)
    expected = torch.stack([transform(t) for t in dynamic_preprocess(image, 1, 6, 56, True)])
    pixel_values, counts = load_image_tiles(image, image_size=56, max_num=6)
    assert counts == [len(expected)] and torch.equal(pixel_values, expected)
    # normalize() on one tile equals the batched normalisation
    assert torch.equal(normalize(to_tensor(dynamic_preprocess(image, 1, 6, 56)[0])), pixel_values[0])


def test_matches_transformers_pil_image_processor():
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

    proc = GotOcr2ImageProcessorPil(
        size={"height": 112, "width": 112}, image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD),
        crop_to_patches=True, min_patches=1, max_patches=6,
    )
    for image in (_noise(300, 200, 1), _noise(123, 457, 2), _noise(90, 90, 3)):
        ref = proc(images=[image], return_tensors="pt")
        ours, counts = load_image_tiles(image, image_size=112, max_num=6)
        assert counts == ref["num_patches"].tolist()
        assert ours.shape == ref["pixel_values"].shape
        assert (ours - ref["pixel_values"]).abs().max().item() <= 1e-6


def test_multi_image_budget_and_thumbnails():
    wide, square = _noise(300, 100, 1), _noise(50, 50, 2)
    # 2 images, max 12 -> 6 each: ratio 3 -> (3,1) + thumbnail = 4; square small -> (1,1) = 1
    pixel_values, counts = load_image_tiles([wide, square], image_size=56, max_num=12)
    assert counts == [4, 1] and pixel_values.shape == (5, 3, 56, 56)
    # 3 images, max 6 -> 2 each: ratio 3 -> (2,1) + thumbnail = 3
    _, counts = load_image_tiles([wide, wide, square], image_size=56, max_num=6)
    assert counts == [3, 3, 1]
    # the second image's tile equals its own single-image processing
    alone, _ = load_image_tiles(square, image_size=56, max_num=6)
    assert torch.equal(pixel_values[4], alone[0])


def test_video_one_tile_per_frame():
    frames = [_noise(64, 48, k) for k in range(3)]
    pixel_values, counts = load_video_tiles(frames, image_size=56)
    assert counts == [1, 1, 1] and pixel_values.shape == (3, 3, 56, 56)
    transform = build_transform(False, 56)
    for k in range(3):
        assert torch.equal(pixel_values[k], transform(frames[k]))
    with pytest.raises(ValueError, match="no frames"):
        load_video_tiles([], image_size=56)


# ---------------------------------------------------------------------------------------- JPEG


def test_jpeg_qualities_uniform_range():
    assert JPEG_QUALITIES == tuple(range(75, 101))
    rng = random.Random(0)
    tiny = Image.new("RGB", (8, 8), (200, 30, 60))
    drawn = {random_jpeg(tiny, rng)[1] for _ in range(1500)}
    assert drawn == set(range(75, 101))
    with pytest.raises(ValueError, match="quality"):
        jpeg_degrade(tiny, 0)


def test_jpeg_augmentation_per_tile_and_reproducible():
    image = _noise(168, 112, 5)  # ratio 1.5 -> (3,2) -> 6 tiles + thumbnail at S 56
    a, counts = load_image_tiles(image, image_size=56, augment=True, rng=3)
    b, _ = load_image_tiles(image, image_size=56, augment=True, rng=random.Random(3))
    c, _ = load_image_tiles(image, image_size=56, augment=True, rng=4)
    plain, _ = load_image_tiles(image, image_size=56, augment=False, rng=3)
    assert counts == [7]
    assert torch.equal(a, b)  # same seed, same pixels
    assert not torch.equal(a, c)
    assert not torch.equal(a, plain)  # JPEG changed the noise
    assert torch.equal(plain, load_image_tiles(image, image_size=56)[0])  # augment off ignores rng
    # each tile (thumbnail included) is JPEG-encoded at its own quality, drawn in tile order
    rng = random.Random(3)
    qualities = [rng.choice(JPEG_QUALITIES) for _ in range(7)]
    assert len(set(qualities)) > 1
    tiles = dynamic_preprocess(image, 1, 12, 56, True)
    transform = build_transform(False, 56)
    for k, (tile, q) in enumerate(zip(tiles, qualities)):
        assert torch.equal(a[k], transform(jpeg_degrade(tile, q))), f"tile {k} not at quality {q}"
    other = next(q for q in qualities if q != qualities[0])
    assert not torch.equal(a[0], transform(jpeg_degrade(tiles[0], other)))


def test_build_transform_train_draws_jpeg():
    tile = _noise(56, 56, 9)
    out = build_transform(True, 56, rng=11)(tile)
    q = random.Random(11).choice(JPEG_QUALITIES)
    assert torch.equal(out, build_transform(False, 56)(jpeg_degrade(tile, q)))


# ---------------------------------------------------------------------------------------- loading


def _save(tmp_path, name: str, image: Image.Image, **kwargs) -> str:
    path = tmp_path / name
    image.save(path, **kwargs)
    return str(path)


def test_truncated_corrupt_empty_missing(tmp_path):
    good = _save(tmp_path, "good.jpg", _noise(64, 64))
    data = open(good, "rb").read()
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(data[: len(data) // 2])
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(200)))
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    cases = [(truncated, "truncated"), (corrupt, "not a readable image"), (empty, "empty file"),
             (tmp_path / "missing.png", "not found")]
    for path, reason in cases:
        with pytest.raises(ImageLoadError, match=reason) as info:
            load_image(path)
        assert info.value.path == str(path) and str(path) in str(info.value)
        assert isinstance(info.value, ValueError)
    assert load_image(good).size == (64, 64)


def test_zero_size_image():
    with pytest.raises(ImageLoadError, match="zero-size"):
        load_image(Image.new("RGB", (0, 5)))
    with pytest.raises(ImageLoadError, match="zero-size"):
        load_image_tiles(Image.new("RGB", (7, 0)))


def test_palette_with_transparency_on_white(tmp_path):
    image = Image.new("P", (2, 1))
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    image.putpixel((0, 0), 0)
    image.putpixel((1, 0), 1)
    path = _save(tmp_path, "p.png", image, transparency=1)  # index 1 (blue) is transparent
    rgb = load_image(path)
    assert rgb.mode == "RGB"
    assert np.asarray(rgb).tolist() == [[[255, 0, 0], [255, 255, 255]]]
    opaque = _save(tmp_path, "p_opaque.png", image)
    assert np.asarray(load_image(opaque)).tolist() == [[[255, 0, 0], [0, 0, 255]]]


def test_alpha_composited_on_white(tmp_path):
    rgba = Image.fromarray(np.array([[[255, 0, 0, 0], [0, 0, 255, 255], [0, 0, 0, 128]]], dtype=np.uint8), "RGBA")
    out = np.asarray(load_image(_save(tmp_path, "a.png", rgba))).astype(int)
    assert out[0, 0].tolist() == [255, 255, 255]  # transparent red -> white
    assert out[0, 1].tolist() == [0, 0, 255]  # opaque blue stays
    # black at alpha 128 over white: 255 * (1 - 128/255) = 127 (Pillow's integer blend may round by 1)
    assert np.abs(out[0, 2] - 127).max() <= 1
    la = Image.fromarray(np.array([[[0, 0], [100, 255]]], dtype=np.uint8), "LA")
    assert np.asarray(load_image(_save(tmp_path, "la.png", la))).tolist() == [[[255, 255, 255], [100, 100, 100]]]


def test_cmyk_and_grayscale(tmp_path):
    cmyk = Image.new("CMYK", (3, 1))
    cmyk.putpixel((0, 0), (0, 0, 0, 0))
    cmyk.putpixel((1, 0), (255, 0, 0, 0))
    cmyk.putpixel((2, 0), (0, 0, 0, 255))
    out = np.asarray(load_image(_save(tmp_path, "c.tif", cmyk))).tolist()
    assert out == [[[255, 255, 255], [0, 255, 255], [0, 0, 0]]]  # paper, cyan, black
    gray = Image.fromarray(np.array([[0, 77, 255]], dtype=np.uint8), "L")
    assert np.asarray(load_image(_save(tmp_path, "g.png", gray))).tolist() == [[[0] * 3, [77] * 3, [255] * 3]]


def test_sixteen_bit_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 385, 386, 65535]], dtype=np.uint16)
    # round(v / 257): 0, 1, 1.498 -> 1, 1.502 -> 2, 255
    path = _save(tmp_path, "16.png", Image.fromarray(values))
    out = np.asarray(load_image(path))
    assert out[0, :, 0].tolist() == [0, 1, 1, 2, 255] and (out[..., 0] == out[..., 2]).all()
    as_i = Image.fromarray(np.array([[-5, 32896, 70000]], dtype=np.int32), "I")
    assert as_i.mode == "I"
    assert np.asarray(to_rgb(as_i))[0, :, 1].tolist() == [0, 128, 255]
    as_f = Image.fromarray(np.array([[-3.0, 100.4, 300.0]], dtype=np.float32))  # float: clipped to 0..255
    assert np.asarray(load_image(as_f))[0, :, 0].tolist() == [0, 100, 255]


def test_animated_gif_first_frame(tmp_path):
    frames = [Image.new("RGB", (4, 4), c) for c in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50)
    assert Image.open(path).n_frames == 3
    assert np.asarray(load_image(path))[0, 0].tolist() == [255, 0, 0]


def test_exif_rotation_applied(tmp_path):
    stored = np.zeros((16, 32, 3), dtype=np.uint8)  # W=32, H=16: left half black, right half white
    stored[:, 16:] = 255
    image = Image.fromarray(stored)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation 6: display rotated 90 degrees clockwise
    path = _save(tmp_path, "rot.jpg", image, exif=exif, quality=95)
    out = np.asarray(load_image(path)).astype(float)
    assert out.shape == (32, 16, 3)  # width and height swapped
    assert out[:12].mean() < 30 and out[20:].mean() > 225  # left (black) became the top


def test_decompression_bomb_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    warn = _save(tmp_path, "warn.png", Image.new("RGB", (40, 40)))  # 1600 pixels: Pillow only warns
    bomb = _save(tmp_path, "bomb.png", Image.new("RGB", (100, 100)))  # 10000 > 2 * 1000: Pillow raises
    with pytest.raises(ImageLoadError, match="1600 pixels exceeds the limit of 1000") as info:
        load_image(warn)
    assert info.value.path == warn
    with pytest.raises(ImageLoadError, match="decompression-bomb"):
        load_image(bomb)
    with pytest.raises(ImageLoadError, match="limit of 100 pixels"):
        load_image(_save(tmp_path, "small.png", Image.new("RGB", (20, 20))), max_pixels=100)


def test_file_objects_and_paths_in_load_image_tiles(tmp_path):
    buffer = io.BytesIO()
    _noise(30, 20).save(buffer, format="PNG")
    buffer.seek(0)
    assert load_image(buffer).size == (30, 20)
    with pytest.raises(ImageLoadError, match="<BytesIO>"):
        load_image(io.BytesIO(b"not an image"))
    path = _save(tmp_path, "x.png", _noise(90, 30))
    pixel_values, counts = load_image_tiles(path, image_size=28, max_num=4)
    assert counts == [4]  # ratio 3 -> (3, 1) + thumbnail
    assert pixel_values.shape == (4, 3, 28, 28)
