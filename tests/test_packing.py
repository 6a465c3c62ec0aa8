"""Tests for minivl.data.packing: InternVL's select / search / pack / maintain loop."""

from __future__ import annotations

import logging
import math
from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from minivl.data.packing import (
    PackedDataset,
    balance_by_length,
    cu_seqlens_from_data_index,
    internvl_length_grouped_order,
    length_grouped_batches,
    packed_collate_fn,
    padded_collate_fn,
)

IMG, END, CTX = 901, 902, 903


def make_sample(uid: int, tokens: int, tiles: int, size: int = 2, supervised: int | None = None) -> dict:
    """Every token is the sample's uid; every tile is filled with the uid; label 0 ignored."""
    ids = torch.full((tokens,), uid, dtype=torch.long)
    labels = ids.clone()
    labels[0] = -100
    if supervised is not None:
        labels[: tokens - supervised] = -100
    return {
        "input_ids": ids,
        "labels": labels,
        "pixel_values": torch.full((tiles, 3, size, size), float(uid)),
        "image_flags": torch.ones(tiles, dtype=torch.long),
    }


def uids_of(pack: dict) -> list[int]:
    """Sample uids of a pack in order (first token of every data_index segment)."""
    cu = cu_seqlens_from_data_index(pack["data_index"]).tolist()
    return [int(pack["input_ids"][s]) for s, e in zip(cu[:-1], cu[1:]) if int(pack["data_index"][s]) >= 0]


def ordered_ds(samples, **kw) -> PackedDataset:
    return PackedDataset([samples], shuffle=False, **kw)


# (tokens, tiles) of a hand-traced stream with T=10, K=4, max_buffer_size=2; see the trace below
STREAM = [(4, 2), (3, 1), (5, 2), (6, 1), (2, 1), (10, 0), (3, 0), (2, 3), (1, 1)]


def test_hand_traced_stream():
    # s0 -> [A=s0(4t,2i)]; s1 fits A -> A=s0+s1 (7,3); s2 does not fit A (5 tiles) -> [A(3), B=s2(2)];
    # s3 fits neither (13, 11 tokens) -> [A, B, C=s3(1)] -> 3 > 2 buffers: yield A (front);
    # s4 fits B -> B=s2+s4 (7,3) -> [B, C]; s5 has exactly T=10 tokens: yield at once;
    # s6 fits B -> 10 tokens = T: yield B; s7 fits C -> C=s3+s7 (8 tokens, 4 = K tiles): yield;
    # s8 -> new buffer, flushed at the end.
    samples = [make_sample(i, t, k) for i, (t, k) in enumerate(STREAM)]
    ds = ordered_ds(samples, max_packed_tokens=10, num_images_expected=4, max_buffer_size=2)
    packs = list(ds)
    assert [uids_of(p) for p in packs] == [[0, 1], [5], [2, 4, 6], [3, 7], [8]]
    assert [p["statistics"]["num_tokens"] for p in packs] == [7, 10, 10, 8, 1]
    assert [p["statistics"]["num_tiles"] for p in packs] == [3, 0, 3, 4, 1]
    first = packs[0]
    assert first["position_ids"].tolist() == [0, 1, 2, 3, 0, 1, 2]
    assert first["data_index"].tolist() == [0, 0, 0, 0, 1, 1, 1]
    # tiles in packing order: two tiles of s0 then one of s1
    assert first["pixel_values"][:, 0, 0, 0].tolist() == [0.0, 0.0, 1.0]
    assert first["statistics"] == {"num_samples": 2, "num_tokens": 7, "num_padding_tokens": 0,
                                   "num_tiles": 3, "num_padding_tiles": 0, "num_skipped": 0}


def test_first_fit_follows_tile_order_and_insertion_is_stable():
    # a, b, c: three buffers of 2 tiles (in arrival order). d (1 tile) goes to the first, a;
    # a+d (3 tiles) moves to the front. e: a+d is full (9+3 > 10 tokens) so e joins b;
    # b+e (9 tokens, 3 tiles) is inserted after a+d (equal tiles: newer after older).
    spec = [(6, 2), (6, 2), (6, 2), (3, 1), (3, 1)]
    samples = [make_sample(i, t, k) for i, (t, k) in enumerate(spec)]
    ds = ordered_ds(samples, max_packed_tokens=10, num_images_expected=8, max_buffer_size=5)
    assert [uids_of(p) for p in ds] == [[0, 3], [1, 4], [2]]


def epoch_uids(ds) -> Counter:
    return Counter(u for pack in ds for u in uids_of(pack))


def random_sources(seed: int = 0):
    rng = np.random.default_rng(seed)
    sources, uid = [], 0
    for n in (23, 11, 8):
        src = []
        for _ in range(n):
            src.append(make_sample(uid, int(rng.integers(2, 20)), int(rng.integers(0, 4))))
            uid += 1
        sources.append(src)
    return sources


def test_every_sample_appears_repeat_times_and_limits_hold():
    sources = random_sources()
    ds = PackedDataset(sources, max_packed_tokens=32, num_images_expected=6, max_buffer_size=4,
                       repeat_times=[1, 2, 0.5], seed=3)
    packs = list(ds)
    counts = Counter(u for p in packs for u in uids_of(p))
    expected = Counter()
    for s in sources[0]:
        expected[int(s["input_ids"][0])] += 1
    for s in sources[1]:
        expected[int(s["input_ids"][0])] += 2
    for s in sources[2][: int(len(sources[2]) * 0.5)]:  # repeat < 1 keeps the first int(n r)
        expected[int(s["input_ids"][0])] += 1
    assert counts == expected
    for p in packs:
        assert p["input_ids"].numel() <= 32 and p["pixel_values"].shape[0] <= 6
        assert p["image_flags"].numel() == p["pixel_values"].shape[0]
        # each sample's tiles carry its uid, in the order of its tokens
        tile_uids = [int(v) for v in p["pixel_values"][:, 0, 0, 0]]
        assert tile_uids == sorted(tile_uids, key=uids_of(p).index)
    assert sum(p["statistics"]["num_tokens"] for p in packs) == sum(
        int(s["input_ids"].numel()) * c for src in sources for s in src
        for c in [expected[int(s["input_ids"][0])]])
    assert sum(ds.skip_counts.values()) == 0


def test_dataset_choice_follows_length_weights():
    # 300 vs 100 samples, max_buffer_size=0: every sample is its own pack, in selection order.
    a = [make_sample(i, 3, 0) for i in range(300)]
    b = [make_sample(1000 + i, 3, 0) for i in range(100)]
    ds = PackedDataset([a, b], max_packed_tokens=8, num_images_expected=2, max_buffer_size=0)
    order = [uids_of(p)[0] for p in ds]
    assert len(order) == 400
    share_a = sum(u < 1000 for u in order[:200]) / 200
    assert 0.68 < share_a < 0.82  # weight 300/400 = 0.75 (uniform choice would give 0.5)


def test_determinism_for_a_seed():
    sources = random_sources(1)
    kw = dict(max_packed_tokens=32, num_images_expected=6, max_buffer_size=4)
    run1 = [uids_of(p) for p in PackedDataset(sources, seed=7, **kw)]
    run2 = [uids_of(p) for p in PackedDataset(sources, seed=7, **kw)]
    other = [uids_of(p) for p in PackedDataset(sources, seed=8, **kw)]
    assert run1 == run2
    assert run1 != other
    ds = PackedDataset(sources, seed=7, **kw)
    ds.set_epoch(1)
    assert [uids_of(p) for p in ds] != run1


def test_official_seeding_without_seed():
    # seed=None: the shuffle of source i is np.random.default_rng(i).shuffle of its order
    sources = random_sources(2)
    ds = PackedDataset(sources)
    order = list(range(11))
    np.random.default_rng(1).shuffle(order)
    assert ds.shard_indices(1, 0, 1) == order
    assert ds.shard_indices(1, 1, 3) == order[1::3]


def test_too_many_tiles_is_reported_not_dropped_silently(caplog):
    samples = [make_sample(0, 4, 1), make_sample(1, 4, 5), make_sample(2, 4, 1)]
    ds = ordered_ds(samples, max_packed_tokens=10, num_images_expected=4, max_buffer_size=0)
    with caplog.at_level(logging.ERROR, logger="minivl.data.packing"):
        packs = list(ds)
    assert [uids_of(p) for p in packs] == [[0], [2]]
    assert ds.skip_counts["too_many_tiles"] == 1
    assert [p["statistics"]["num_skipped"] for p in packs] == [0, 1]
    assert "too_many_tiles" in caplog.text and "5 tiles > 4" in caplog.text


def test_sample_longer_than_T_is_split_and_counted():
    ds = ordered_ds([make_sample(5, 13, 0)], max_packed_tokens=10, num_images_expected=4)
    packs = list(ds)
    assert [p["input_ids"].numel() for p in packs] == [10, 3]
    assert packs[1]["position_ids"].tolist() == [10, 11, 12]  # pieces keep their positions
    assert ds.skip_counts["split"] == 1


def image_sample() -> dict:
    # 3 text, <img> 4 ctx </img>, 2 text, <img> 4 ctx </img>, 3 text = 20 tokens; 4 tiles,
    # 2 per image (2 ctx tokens per tile), tiles numbered 0..3.
    ids = [1, 2, 3, IMG, CTX, CTX, CTX, CTX, END, 4, 5, IMG, CTX, CTX, CTX, CTX, END, 6, 7, 8]
    ids_t = torch.tensor(ids)
    labels = torch.where(ids_t < 100, ids_t, torch.tensor(-100))
    pv = torch.arange(4).float().reshape(4, 1, 1, 1).expand(4, 3, 2, 2).clone()
    return {"input_ids": ids_t, "labels": labels, "pixel_values": pv, "image_flags": torch.ones(4, dtype=torch.long)}


def test_split_never_cuts_inside_an_image_block():
    # T = 12: a cut at 12 falls inside the second block (11..16) and moves back to its <img> at 11
    ds = ordered_ds([image_sample()], max_packed_tokens=12, num_images_expected=4,
                    img_start_token_id=IMG, img_end_token_id=END)
    packs = list(ds)
    assert [p["input_ids"].numel() for p in packs] == [11, 9]
    assert packs[0]["input_ids"][-1].item() == 5 and packs[1]["input_ids"][0].item() == IMG
    assert packs[0]["pixel_values"][:, 0, 0, 0].tolist() == [0.0, 1.0]
    assert packs[1]["pixel_values"][:, 0, 0, 0].tolist() == [2.0, 3.0]
    # T = 10: the cut at 10 is between the blocks
    packs = list(ordered_ds([image_sample()], max_packed_tokens=10, num_images_expected=4,
                            img_start_token_id=IMG, img_end_token_id=END))
    assert [p["input_ids"].numel() for p in packs] == [10, 10]
    assert [p["pixel_values"][:, 0, 0, 0].tolist() for p in packs] == [[0.0, 1.0], [2.0, 3.0]]


def test_image_block_longer_than_T_is_reported():
    ds = ordered_ds([image_sample()], max_packed_tokens=5, num_images_expected=4,
                    img_start_token_id=IMG, img_end_token_id=END)
    packs = list(ds)
    assert [p["input_ids"].tolist() for p in packs] == [[1, 2, 3]]
    assert ds.skip_counts["image_block_longer_than_max_tokens"] == 1
    # without the <img>/</img> ids an image sample cannot be cut safely: reported
    ds = ordered_ds([image_sample()], max_packed_tokens=12, num_images_expected=4)
    assert list(ds) == [] and ds.skip_counts["too_long_without_image_markers"] == 1


def _collect_worker_uids(ds, workers):
    loader = DataLoader(ds, batch_size=1, num_workers=workers, collate_fn=packed_collate_fn)
    out = Counter()
    for batch in loader:
        cu = batch["cu_seqlens"].tolist()
        out.update(int(batch["input_ids"][0, s]) for s in cu[:-1])
    return out


def test_dataloader_workers_and_ranks_cover_every_sample_once():
    sources = random_sources(4)
    all_uids = Counter(int(s["input_ids"][0]) for src in sources for s in src)
    kw = dict(max_packed_tokens=32, num_images_expected=6, max_buffer_size=3, seed=0)
    assert _collect_worker_uids(PackedDataset(sources, **kw), 2) == all_uids
    # two ranks x one worker: disjoint shards whose union is everything
    r0 = epoch_uids(PackedDataset(sources, rank=0, world_size=2, **kw))
    r1 = epoch_uids(PackedDataset(sources, rank=1, world_size=2, **kw))
    assert not set(r0) & set(r1) and r0 + r1 == all_uids


def test_strict_mode_pads_to_K_tiles_and_T_tokens():
    samples = [make_sample(i, t, k) for i, (t, k) in enumerate(STREAM)]
    ds = ordered_ds(samples, max_packed_tokens=10, num_images_expected=4, max_buffer_size=2,
                    strict_mode=True, pad_token_id=77)
    packs = list(ds)
    assert len(packs) == 5
    for p in packs:
        assert p["input_ids"].shape == (10,) and p["pixel_values"].shape == (4, 3, 2, 2)
        st = p["statistics"]
        assert st["num_tokens"] + st["num_padding_tokens"] == 10
        assert st["num_tiles"] + st["num_padding_tiles"] == 4
        assert p["image_flags"].tolist() == [1] * st["num_tiles"] + [0] * st["num_padding_tiles"]
    first = packs[0]  # s0 + s1: 7 tokens, 3 tiles
    assert first["input_ids"][7:].tolist() == [77, 77, 77]
    assert first["labels"][7:].tolist() == [-100] * 3
    assert first["pixel_values"][3].abs().sum().item() == 0.0
    batch = packed_collate_fn([first])
    assert batch["cu_seqlens"].tolist() == [0, 4, 7, 10]  # padding is one extra segment
    assert batch["loss_weight"][0, 7:].tolist() == [0.0, 0.0, 0.0]


def test_packed_collate_values():
    a = make_sample(0, 4, 1)  # labels [-100, 0, 0, 0]: 3 supervised
    b = make_sample(1, 5, 0, supervised=2)  # labels [-100, -100, -100, 1, 1]: 2 supervised
    pack = next(iter(ordered_ds([a, b], max_packed_tokens=16, num_images_expected=4)))
    batch = packed_collate_fn([pack], loss_reduction="square")
    assert batch["input_ids"].shape == (1, 9)
    assert batch["cu_seqlens"].dtype == torch.int32 and batch["cu_seqlens"].tolist() == [0, 4, 9]
    assert batch["max_seqlen"] == 5
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1, 2, 3, 4]]
    w3, w2 = 1 / math.sqrt(3), 1 / math.sqrt(2)
    assert torch.allclose(batch["loss_weight"], torch.tensor([[0, w3, w3, w3, 0, 0, 0, w2, w2]]))
    token = packed_collate_fn([pack], loss_reduction="sample")["loss_weight"]
    assert torch.allclose(token, torch.tensor([[0, 1 / 3, 1 / 3, 1 / 3, 0, 0, 0, 0.5, 0.5]]))
    assert batch["pixel_values"].shape == (1, 3, 2, 2) and batch["statistics"]["num_samples"] == 2


def test_collate_ignores_the_first_label_of_every_sample():
    # a label on a sample's first token has no previous token in that sample: it is ignored
    a = make_sample(0, 3, 0)
    b = make_sample(1, 3, 0)
    b["labels"] = b["input_ids"].clone()  # first label active
    pack = next(iter(ordered_ds([a, b], max_packed_tokens=16, num_images_expected=4)))
    batch = packed_collate_fn(pack, loss_reduction="token")
    assert batch["labels"].tolist() == [[-100, 0, 0, -100, 1, 1]]
    assert batch["loss_weight"].tolist() == [[0.0, 1.0, 1.0, 0.0, 1.0, 1.0]]


def test_padded_collate_and_length_grouping():
    batch = padded_collate_fn([make_sample(0, 3, 1), make_sample(1, 5, 2)], pad_token_id=9)
    assert batch["input_ids"].tolist() == [[0, 0, 0, 9, 9], [1, 1, 1, 1, 1]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 1, 1], [0, 1, 2, 3, 4]]
    assert batch["attention_mask"].sum().item() == 8
    assert batch["statistics"]["num_padding_tokens"] == 2
    assert batch["pixel_values"].shape == (3, 3, 2, 2)
    assert batch["loss_weight"].tolist() == [[0, 1, 1, 0, 0], [0, 1, 1, 1, 1]]

    lengths = [5, 1, 9, 3, 7, 2, 8]
    batches = length_grouped_batches(lengths, batch_size=2, seed=0, mega_batch_mult=2)
    assert sorted(i for b in batches for i in b) == list(range(7))
    assert [len(b) for b in batches] == [2, 2, 2, 1]
    for start in (0, 2):  # batches 0-1 and 2-3 come from one mega-batch each: longest first
        flat = [lengths[i] for b in batches[start: start + 2] for i in b]
        assert flat == sorted(flat, reverse=True)
    order = np.random.default_rng(0).permutation(7).tolist()
    assert sorted(batches[0] + batches[1]) == sorted(order[:4])


def test_bad_samples_fail_loudly():
    bad = make_sample(0, 3, 1)
    del bad["image_flags"]
    with pytest.raises(KeyError, match="image_flags"):
        list(ordered_ds([bad], max_packed_tokens=8, num_images_expected=2))
    with pytest.raises(ValueError, match="one pack"):
        packed_collate_fn([{}, {}])


def test_samples_a_source_skips_are_counted_not_packed():
    """A source returns None for a sample it could not build; the pack skips and counts it."""
    from minivl.data.packing import PackedDataset

    def sample(n, tag):
        ids = torch.full((n,), tag)
        return {"input_ids": ids, "labels": ids.clone(), "pixel_values": torch.zeros(0, 3, 4, 4),
                "image_flags": torch.zeros(0, dtype=torch.long)}

    source = [sample(3, 1), None, sample(4, 2), None]
    ds = PackedDataset([source], max_packed_tokens=100, num_images_expected=4, shuffle=False)
    packs = list(ds)
    seen = sorted(int(t) for p in packs for t in p["input_ids"].unique())
    assert seen == [1, 2]
    assert ds.skip_counts["source_skipped"] == 2


def test_balance_by_length_by_hand():
    # lengths 10, 9, 8, 3, 2, 1 (longest first) into 2 chunks of 3: each index goes to the
    # chunk with the smaller total that is not full
    assert balance_by_length(range(6), [10, 9, 8, 3, 2, 1], 2) == [[0, 3, 4], [1, 2, 5]]
    assert balance_by_length(range(5), [5, 4, 3, 2, 1], 2) == [[0, 2, 4], [1, 3]]  # uneven: round robin
    assert balance_by_length([4, 7], [0] * 8, 1) == [[4, 7]]
    with pytest.raises(ValueError, match="num_chunks"):
        balance_by_length([1], [1, 2], 0)


def test_internvl_length_grouped_order():
    lengths = [int(x) for x in torch.randint(1, 500, (103,), generator=torch.Generator().manual_seed(1))]
    batch, chunks = 4, 3
    order = internvl_length_grouped_order(lengths, batch, chunks, torch.Generator().manual_seed(7))
    assert sorted(order) == list(range(len(lengths)))
    perm = torch.randperm(len(lengths), generator=torch.Generator().manual_seed(7)).tolist()
    mega = batch * chunks
    for start in range(0, len(lengths), mega):
        group = order[start: start + mega]
        assert set(group) == set(perm[start: start + mega])  # one optimizer step's random draw
        if len(group) == mega:  # each micro-batch longest first
            micro = [group[k: k + batch] for k in range(0, mega, batch)]
            assert all([lengths[i] for i in m] == sorted((lengths[i] for i in m), reverse=True) for m in micro)
            longest = sorted(group, key=lambda i: -lengths[i])[:chunks]
            assert sorted(m[0] for m in micro) == sorted(longest)  # the longest ones are spread out
            totals = [sum(lengths[i] for i in m) for m in micro]
            assert max(totals) - min(totals) <= max(lengths[i] for i in group)  # balanced work
