"""Records -> model inputs: tile budgets per data type, token counts, counted skips."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

from minivl.data.dataset import (
    DataConfig,
    MixtureDataset,
    SupervisedDataset,
    build_datasets,
    conversation_texts,
    drop_skipped,
    skip_report,
)
from minivl.data.records import DatasetMeta, parse_record
from minivl.data.synthetic import generate_suite
from minivl.text.tokenizer import image_token_id, train_tokenizer
from minivl.vision.tiling import num_tiles

N_TOK = 16  # tokens per 112 px tile with patch 14 and pixel unshuffle 0.5


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    out = tmp_path_factory.mktemp("suite")
    result = generate_suite(out, scale="smoke", seed=0)
    tok = train_tokenizer(conversation_texts(result["meta"]["train"]), vocab_size=600)
    return result, tok


def config(**kw):
    base = dict(image_size=112, num_image_token=N_TOK, max_dynamic_patch=6, max_length=2048,
                min_num_frame=2, max_num_frame=4)
    base.update(kw)
    return DataConfig(**base)


def test_every_clean_sample_builds_with_the_right_token_counts(suite):
    result, tok = suite
    ctx = image_token_id(tok)
    datasets = build_datasets(result["meta"]["train"], tok, config(), seed=0)
    assert {d.meta.name for d in datasets} >= {"shape_qa", "small_text", "multi_image", "video", "text_only"}
    for d in datasets:
        for i in range(len(d)):
            s = d[i]
            record = d.records[i]
            if s is None:  # only labelled faults may be skipped
                assert record.extra.get("fault"), (d.meta.name, i, d.skip_examples)
                continue
            tiles = s["pixel_values"].shape[0]
            assert s["pixel_values"].shape[1:] == (3, 112, 112)
            assert s["image_flags"].shape == (tiles,)
            assert s["input_ids"].shape == s["labels"].shape
            n_ctx = int((s["input_ids"] == ctx).sum())
            if record.kind == "text":
                assert tiles == 1 and s["image_flags"].tolist() == [0] and n_ctx == 0
                continue
            assert s["image_flags"].tolist() == [1] * tiles
            assert n_ctx == N_TOK * tiles == N_TOK * sum(s["num_patches_list"])
            if record.kind == "image":
                w, h = record.width_list[0], record.height_list[0]
                expected = num_tiles(w, h, max_num=d.meta.max_dynamic_patch, image_size=112)
                assert tiles == expected, (d.meta.name, w, h)
            elif record.kind == "multi_image":
                per = max(1, d.meta.max_dynamic_patch // len(record.images))
                assert len(s["num_patches_list"]) == len(record.images)
                assert all(1 <= t <= per + 1 for t in s["num_patches_list"])
            elif record.kind == "video":
                assert 2 <= tiles <= 4 and s["num_patches_list"] == [1] * tiles


def test_small_text_gets_many_tiles(suite):
    result, tok = suite
    (d,) = build_datasets(result["meta"]["train"], tok, config(), names=["small_text"])
    s = d[0]
    assert d.meta.max_dynamic_patch == 16
    assert s["pixel_values"].shape[0] == 16 + 1  # a 448 px square canvas: a 4 x 4 grid + thumbnail


def test_augmentation_is_seeded_and_train_only(suite):
    result, tok = suite
    (d,) = build_datasets(result["meta"]["train"], tok, config(), names=["shape_qa"], seed=3)
    assert d.meta.data_augment
    a, b = d[0]["pixel_values"], d[0]["pixel_values"]
    assert torch.equal(a, b)  # same seed, epoch and index -> same JPEG qualities
    d.set_epoch(1)
    assert not torch.equal(a, d[0]["pixel_values"])
    (clean,) = build_datasets(result["meta"]["train"], tok, config(), names=["shape_qa"], seed=3, train=False)
    (clean2,) = build_datasets(result["meta"]["train"], tok, config(), names=["shape_qa"], seed=4, train=False)
    assert torch.equal(clean[0]["pixel_values"], clean2[0]["pixel_values"])


def _meta(tmp_path, records, name="bad"):
    ann = tmp_path / f"{name}.jsonl"
    ann.write_text("".join(json.dumps(r) + "\n" for r in records))
    return DatasetMeta(name=name, root=str(tmp_path), annotation=str(ann), data_augment=False, base_dir=tmp_path)


def test_bad_samples_are_skipped_and_counted(suite, tmp_path):
    _, tok = suite
    from PIL import Image

    Image.new("RGB", (40, 30), "red").save(tmp_path / "ok.png")
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    conv = [{"from": "human", "value": "<image>\nWhat colour?"}, {"from": "gpt", "value": "red"}]
    records = [
        {"id": 0, "image": "ok.png", "conversations": conv},
        {"id": 1, "image": "missing.png", "conversations": conv},
        {"id": 2, "image": "corrupt.png", "conversations": conv},
        {"id": 3, "image": "ok.png", "conversations": [{"from": "human", "value": "What colour? " * 400},
                                                        {"from": "gpt", "value": "red"}]},
        {"id": 4, "image": ["ok.png", "ok.png"],
         "conversations": [{"from": "human", "value": "Image-1: <image>\nWhich?"}, {"from": "gpt", "value": "1"}]},
    ]
    # record 4 has 2 images and 1 placeholder: the reader itself refuses it in strict mode
    with pytest.raises(Exception, match="placeholder"):
        parse_record(records[4])
    ds = SupervisedDataset(_meta(tmp_path, records), tok, config(max_length=512), train=False)
    assert len(ds) == 4  # the malformed line is dropped at load time and counted
    samples = [ds[i] for i in range(len(ds))]
    assert samples[0] is not None and [s is None for s in samples] == [False, True, True, True]
    assert ds.skips == Counter(missing_file=1, corrupt_image=1, too_long=1, record_placeholder_count=1)
    assert "missing.png" in ds.skip_examples["missing_file"]
    report = skip_report([ds])
    assert "missing_file 1" in report and "too_long 1" in report
    assert len(drop_skipped(samples)) == 1


def test_mixture_locates_and_weights(suite):
    result, tok = suite
    datasets = build_datasets(result["meta"]["train"], tok, config(), names=["shape_qa", "video", "text_only"])
    mix = MixtureDataset(datasets)
    sizes = [len(d) for d in datasets]
    assert len(mix) == sum(sizes)
    assert mix.locate(0) == (0, 0)
    assert mix.locate(sizes[0]) == (1, 0)
    assert mix.locate(sum(sizes) - 1) == (2, sizes[2] - 1)
    assert mix.weights() == pytest.approx([n / sum(sizes) for n in sizes])
    assert mix[sizes[0]]["dataset"] == "video"
    with pytest.raises(IndexError):
        mix.locate(len(mix))
    with pytest.raises(KeyError, match="no data set named \\['nope'\\]"):
        build_datasets(result["meta"]["train"], tok, config(), names=["nope"])


def test_the_token_cache_gives_the_same_samples_and_its_own_copies(suite, tmp_path):
    from minivl.data.dataset import build_datasets

    result, tok = suite
    meta = result["meta"]["train"]
    plain = build_datasets(meta, tok, config(), seed=3)
    cached = build_datasets(meta, tok, config(token_cache_size=1000), seed=3)
    for epoch in (0, 1, 0):  # video frames are drawn anew each epoch: keys carry the frame count
        for a, b in zip(plain, cached):
            a.set_epoch(epoch)
            b.set_epoch(epoch)
            for i in range(len(a)):
                x, y = a[i], b[i]
                assert (x is None) == (y is None)
                if x is not None:
                    for key in ("input_ids", "labels", "attention_mask", "pixel_values"):
                        assert torch.equal(x[key], y[key]), (a.meta.name, i, key)
    assert sum(len(d._token_cache) for d in cached) > 0 and all(not d._token_cache for d in plain)
    assert [d.skips for d in cached] == [d.skips for d in plain]
    # a sample is its own: writing to it leaves the cache, and the next sample, untouched
    ds = next(d for d in cached if d.meta.name == "shape_qa")
    first = ds[0]
    first["labels"].fill_(-5)
    assert not torch.equal(ds[0]["labels"], first["labels"])
    # the bound: at most token_cache_size samples per data set
    small = build_datasets(meta, tok, config(token_cache_size=2), seed=3, names=["shape_qa"])[0]
    for i in range(len(small)):
        small[i]
    assert len(small._token_cache) == 2
    # a sample too long is refused, and counted, every time it is drawn
    conv = [{"from": "human", "value": "What colour? " * 400}, {"from": "gpt", "value": "red"}]
    long = SupervisedDataset(_meta(tmp_path, [{"id": 0, "conversations": conv}], name="long"), tok,
                             config(max_length=512, token_cache_size=10), train=False)
    assert long[0] is None and long[0] is None and long.skips["too_long"] == 2 and not long._token_cache


def test_length_estimates_follow_internvl_group_by_length(suite, tmp_path):
    """A record's own ``length`` wins; otherwise the token count of its joined turns, cached by
    character length with the image allowance added for later records of that length."""
    _, tok = suite
    turns = [("How many circles?", "2"), ("How many squares?", "3"), ("What colour is it?", "red")]
    records = [parse_record({"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]})
               for q, a in turns]
    records.append(parse_record({"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}],
                                 "length": 77}))
    meta = DatasetMeta(name="t", root=str(tmp_path), annotation=str(tmp_path / "t.jsonl"), max_dynamic_patch=3,
                       base_dir=tmp_path)
    data = SupervisedDataset(meta, tok, config(), records=records)
    counts = [len(tok("\n".join(q_a))["input_ids"]) for q_a in turns]
    allowance = N_TOK * (3 + 1)  # the entry's 3 tiles plus the thumbnail
    assert len(turns[0][0] + turns[0][1]) == len(turns[1][0] + turns[1][1])  # same character length
    assert data.length_estimates() == [counts[0], counts[0] + allowance, counts[2], 77]
    mixture = MixtureDataset([data, data])
    assert mixture.length_estimates() == data.length_estimates() * 2
