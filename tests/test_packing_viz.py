"""Tests for minivl.data.packing_viz: the packing trace, occupancy, padding and unpacking."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from minivl.data.packing import PackedDataset, packed_collate_fn
from minivl.data.packing_viz import (
    TracedPackedDataset,
    format_trace,
    occupancy,
    padding_utilisation,
    plot_trace,
    stand_in_sample,
    unpack,
)


def make_sample(uid: int, tokens: int, tiles: int) -> dict:
    """Every token is the sample's uid, every tile is filled with it; the first label is ignored."""
    ids = torch.full((tokens,), uid, dtype=torch.long)
    labels = ids.clone()
    labels[0] = -100
    return {
        "input_ids": ids,
        "labels": labels,
        "pixel_values": torch.full((tiles, 3, 2, 2), float(uid)),
        "image_flags": torch.ones(tiles, dtype=torch.long),
    }


# (tokens, tiles) with T=10, K=4, max_buffer_size=2 (the stream of tests/test_packing.py),
# then a source skip (None), a sample with 9 > K tiles and a 23-token text sample to split
STREAM = [(4, 2), (3, 1), (5, 2), (6, 1), (2, 1), (10, 0), (3, 0), (2, 3), (1, 1)]


def traced_stream() -> tuple[TracedPackedDataset, list[dict]]:
    src: list = [make_sample(i, t, k) for i, (t, k) in enumerate(STREAM)]
    src.insert(3, None)
    src += [make_sample(20, 3, 9), make_sample(21, 23, 0)]
    ds = TracedPackedDataset([src], max_packed_tokens=10, num_images_expected=4, max_buffer_size=2, shuffle=False)
    return ds, list(ds)


def test_trace_matches_the_hand_trace():
    ds, packs = traced_stream()
    trace = ds.trace
    # by hand: s0 new; s1 fits A; s2 does not (5 tiles) -> new; None skipped; s3 fits neither -> new,
    # 3 > 2 buffers -> A leaves; s4 fits B (front); s5 is exactly T; s6 fills B to T; s7 fills C to K;
    # s8 new; s20 has 9 > K tiles; s21 (23 tokens) splits into 10 + 10 + 3
    assert [s.sample for s in trace] == [0, 1, 2, -1, 3, 4, 5, 6, 7, 8, 20, 21]
    assert [s.placed for s in trace] == [
        "new buffer", "buffer 0", "new buffer", "skipped: source_skipped", "new buffer", "buffer 0",
        "new buffer", "buffer 0", "buffer 0", "new buffer", "skipped: too_many_tiles", "split -> new buffers"]
    yielded = [[(v.labels, v.tokens, v.tiles, v.reason) for v in s.yielded] for s in trace]
    assert yielded == [[], [], [], [], [([0, 1], 7, 3, "too many buffers")], [], [([5], 10, 0, "tokens == T")],
                       [([2, 4, 6], 10, 3, "tokens == T")], [([3, 7], 8, 4, "tiles == K")], [], [],
                       [([21], 10, 0, "tokens == T"), ([21], 10, 0, "tokens == T")]]
    after = [[(v.labels, v.tokens, v.tiles) for v in s.buffers] for s in trace]
    assert after[2] == [([0, 1], 7, 3), ([2], 5, 2)]
    assert after[4] == [([2], 5, 2), ([3], 6, 1)]
    assert after[5] == [([2, 4], 7, 3), ([3], 6, 1)]
    assert after[8] == []
    assert after[11] == [([8], 1, 1), ([21], 3, 0)]
    assert [(v.labels, v.sizes, v.reason) for v in ds.flushed] == [([8], [1], "flush"), ([21], [3], "flush")]
    assert trace[11].tokens == 23  # the whole sample, before the split
    # the trace lists every pack, in the order the data set yields them
    listed = [v for s in trace for v in s.yielded] + list(ds.flushed)
    assert [v.tokens for v in listed] == [p["statistics"]["num_tokens"] for p in packs]
    assert [v.tiles for v in listed] == [p["statistics"]["num_tiles"] for p in packs]
    assert dict(ds.skip_counts) == {"source_skipped": 1, "too_many_tiles": 1, "split": 1}
    table = format_trace(trace, ds.flushed)
    assert "[2,4,6] 10t/3i (tokens == T)" in table and table.count("\n") == len(trace) + 1


def test_traced_dataset_packs_exactly_like_packed_dataset():
    rng = np.random.default_rng(3)
    sources = [[make_sample(100 * s + i, int(rng.integers(1, 60)), int(rng.integers(0, 5))) for i in range(40)]
               for s in range(3)]
    kwargs = dict(max_packed_tokens=64, num_images_expected=8, max_buffer_size=4, seed=7)
    plain = list(PackedDataset(sources, **kwargs))
    traced_ds = TracedPackedDataset(sources, **kwargs)
    traced = list(traced_ds)
    assert len(plain) == len(traced) > 20
    for a, b in zip(plain, traced):
        assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["pixel_values"], b["pixel_values"])
    assert len(traced_ds.trace) == 120
    for step in traced_ds.trace:
        for view in step.yielded:
            if view.reason == "tokens == T":
                assert view.tokens == 64
            elif view.reason == "tiles == K":
                assert view.tiles == 8
            else:
                assert view.reason == "too many buffers" and len(step.buffers) == 4
        assert all(v.tokens <= 64 and v.tiles <= 8 for v in step.buffers)
        tiles = [v.tiles for v in step.buffers]
        assert tiles == sorted(tiles, reverse=True)  # the list stays sorted by tiles, most first
    # a second pass gives the same trace (iterating resets it)
    first = [(s.sample, s.placed) for s in traced_ds.trace]
    list(traced_ds)
    assert [(s.sample, s.placed) for s in traced_ds.trace] == first


def test_occupancy_of_the_hand_stream():
    _, packs = traced_stream()
    occ = occupancy(packs, max_tokens=10, max_tiles=4)
    # packs: 7/3, 10/0, 10/3, 8/4, 10/0, 10/0, 1/1, 3/0 (tokens/tiles)
    assert occ["packs"] == 8
    assert occ["tokens"].tolist() == [7, 10, 10, 8, 10, 10, 1, 3]
    assert occ["token_fill"] == pytest.approx(59 / 80)
    assert occ["tile_fill"] == pytest.approx(11 / 32)
    assert occ["samples_per_pack"] == pytest.approx(12 / 8)
    assert occ["limited_by"] == {"tokens": 4, "tiles": 1, "neither": 3}
    with pytest.raises(ValueError, match="no packs"):
        occupancy([], 10, 4)


def test_padding_utilisation():
    lengths = [2, 4, 3, 1, 5]
    out = padding_utilisation(lengths, [[0, 1], [2, 3, 4]])
    # [2, 4] -> 2 x 4 = 8 slots; [3, 1, 5] -> 3 x 5 = 15 slots; 15 real tokens
    assert out == {"real": 15, "slots": 23, "padding": 8, "utilisation": 15 / 23}
    assert padding_utilisation(lengths, [[1], [0], [2], [3], [4]])["utilisation"] == 1.0
    with pytest.raises(ValueError, match="empty batch"):
        padding_utilisation(lengths, [[0], []])


CTX, IMG, END = 50, 51, 52


def vl_sample(uid: int, n_tiles: int, text: int, per_tile: int = 2, dummy: bool = False) -> dict:
    """``uid * text, <img>, CTX * (tiles * per_tile), </img>``; a text-only one gets a dummy tile."""
    image = [IMG] + [CTX] * (n_tiles * per_tile) + [END] if n_tiles else []
    ids = torch.tensor([uid] * text + image)
    tiles = torch.arange(n_tiles * 12, dtype=torch.float32).reshape(n_tiles, 3, 2, 2) + 100 * uid
    flags = torch.ones(n_tiles, dtype=torch.long)
    if dummy:
        tiles, flags = torch.zeros(1, 3, 2, 2), torch.zeros(1, dtype=torch.long)
    return {"input_ids": ids, "labels": ids.clone(), "pixel_values": tiles, "image_flags": flags}


def test_unpack_gives_the_samples_back():
    samples = [vl_sample(1, 2, 3), vl_sample(2, 0, 4, dummy=True), vl_sample(3, 1, 2), vl_sample(4, 3, 1)]
    pack = next(iter(PackedDataset([samples], max_packed_tokens=64, num_images_expected=16, shuffle=False)))
    assert pack["statistics"]["num_samples"] == 4 and pack["pixel_values"].shape[0] == 7  # 6 real + 1 dummy
    back = unpack(pack, image_token_id=CTX, num_image_token=2)
    assert len(back) == 4
    for original, got in zip(samples, back):
        assert torch.equal(got["input_ids"], original["input_ids"])
        assert got["position_ids"].tolist() == list(range(original["input_ids"].numel()))
        if int(original["image_flags"].sum()):
            assert torch.equal(got["pixel_values"], original["pixel_values"])
        else:
            assert got["pixel_values"] is None and got["image_flags"].numel() == 0
    strict = next(iter(PackedDataset([samples], max_packed_tokens=64, num_images_expected=16, shuffle=False,
                                     strict_mode=True)))
    assert strict["input_ids"].numel() == 64
    assert [s["input_ids"].numel() for s in unpack(strict, CTX, 2)] == [9, 4, 6, 9]
    with pytest.raises(ValueError, match="not a multiple of 3"):
        unpack(pack, image_token_id=CTX, num_image_token=3)


def test_packed_logits_equal_each_sample_alone():
    from minivl.config import MiniVLConfig
    from minivl.model import MiniVL
    from minivl.train.attention import enable_packed_attention

    torch.manual_seed(0)
    config = MiniVLConfig.smoke(vocab_size=64, image_token_id=CTX)
    model = MiniVL(config).eval()
    n = config.num_image_token
    size = config.vision.image_size

    def sample(uid: int, n_tiles: int, text: int) -> dict:
        g = torch.Generator().manual_seed(uid)
        image = [IMG] + [CTX] * (n_tiles * n) + [END] if n_tiles else []
        ids = torch.cat([torch.randint(0, 40, (text,), generator=g), torch.tensor(image, dtype=torch.long)])
        tiles = torch.randn(max(n_tiles, 1), 3, size, size, generator=g)
        flags = torch.ones(n_tiles, dtype=torch.long) if n_tiles else torch.zeros(1, dtype=torch.long)
        return {"input_ids": ids, "labels": ids.clone(), "pixel_values": tiles, "image_flags": flags}

    samples = [sample(1, 1, 5), sample(2, 0, 7), sample(3, 2, 3)]
    pack = next(iter(PackedDataset([samples], max_packed_tokens=256, num_images_expected=8, shuffle=False)))
    batch = packed_collate_fn(pack)
    enable_packed_attention(model.language_model, backend="sdpa")
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"],
                       image_flags=batch["image_flags"], position_ids=batch["position_ids"],
                       cu_seqlens=batch["cu_seqlens"], max_seqlen=batch["max_seqlen"]).logits[0]
        cu = batch["cu_seqlens"].tolist()
        assert cu == [0, 5 + n + 2, 5 + n + 2 + 7, 5 + n + 2 + 7 + 3 + 2 * n + 2]
        for k, alone in enumerate(unpack(pack, CTX, n)):
            logits = model(input_ids=alone["input_ids"][None], pixel_values=alone["pixel_values"],
                           image_flags=alone["image_flags"] if alone["pixel_values"] is not None else None,
                           ).logits[0]
            assert (packed[cu[k]:cu[k + 1]] - logits).abs().max() < 1e-5
        # without cu_seqlens (and with positions running on) later samples see earlier ones: not equal
        leaked = model(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"],
                       image_flags=batch["image_flags"], cu_seqlens=torch.tensor([0, cu[-1]], dtype=torch.int32)
                       ).logits[0]
        assert (leaked[cu[1]:cu[2]] - packed[cu[1]:cu[2]]).abs().max() > 1e-3


def test_plot_trace_draws_every_sample():
    import matplotlib

    matplotlib.use("Agg")
    ds, _ = traced_stream()
    ax = plot_trace(ds.trace, 10, ds.flushed)
    views = [v for s in ds.trace for v in (*s.buffers, *s.yielded)] + list(ds.flushed)
    # one rectangle per sample segment plus one outline per bar
    assert len(ax.patches) == sum(len(v.labels) + 1 for v in views)
    import matplotlib.pyplot as plt

    plt.close(ax.figure)


def test_stand_in_sample():
    s = stand_in_sample(7, tokens=5, tiles=3, supervised=2)
    assert s["input_ids"].tolist() == [7] * 5
    assert s["labels"].tolist() == [-100, -100, -100, 7, 7]
    assert s["pixel_values"].shape == (3, 3, 1, 1) and s["image_flags"].tolist() == [1, 1, 1]
    assert stand_in_sample(2, 4, 0)["labels"].tolist() == [-100, 2, 2, 2]
    with pytest.raises(ValueError, match="tokens >= 1"):
        stand_in_sample(0, 0, 1)
