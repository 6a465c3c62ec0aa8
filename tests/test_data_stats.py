"""Mixture, tile and token statistics: values derived by hand from InternVL's rules."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from PIL import Image

from minivl.data.dataset import DataConfig, SupervisedDataset
from minivl.data.records import DatasetMeta, write_meta
from minivl.data.stats import (
    abbreviate_prompt,
    format_table,
    mixture_table,
    planned_tiles,
    supervised_spans,
    tile_count_table,
    token_length_stats,
)
from minivl.text.tokenizer import train_tokenizer

N_TOK = 16


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(vocab_size=400)


def cfg(**kw) -> DataConfig:
    base = dict(image_size=112, num_image_token=N_TOK, max_dynamic_patch=6, max_length=4096,
                min_num_frame=2, max_num_frame=4)
    base.update(kw)
    return DataConfig(**base)


def conv(question: str, answer: str) -> list[dict]:
    return [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Images of known sizes, a 6-frame video folder and one JSONL per kind."""
    root = tmp_path_factory.mktemp("stats")
    for name, size in {"sq448.png": (448, 448), "wide.png": (224, 112), "sq112.png": (112, 112),
                       "sq224.png": (224, 224)}.items():
        Image.new("RGB", size, "white").save(root / name)
    (root / "clip").mkdir()
    for t in range(6):
        Image.new("RGB", (112, 112), (40 * t, 0, 0)).save(root / "clip" / f"frame_{t:02d}.png")
    records = {
        # 448 x 448 with 16 tiles of 112: a 4 x 4 grid + thumbnail = 17
        "big": [{"id": 0, "image": "sq448.png", "width": 448, "height": 448, "conversations": conv("<image>\nRead.", "PEN")}],
        # 2:1 with budget 6: grid 2 x 1 + thumbnail = 3; no width/height -> the file header is read
        "wide": [{"id": 0, "image": "wide.png", "conversations": conv("<image>\nWhat colour?", "white")}],
        # 3 images, budget 8 -> 8 // 3 = 2 each; a square prefers 1 x 1 (ratio 1) -> 1 tile, no thumbnail
        # 2 images of 224, budget 8 -> 4 each: 2 x 2 + thumbnail = 5 each
        "multi": [
            {"id": 0, "image": ["sq112.png"] * 3, "width_list": [112] * 3, "height_list": [112] * 3,
             "conversations": conv("Image-1: <image>\nImage-2: <image>\nImage-3: <image>\nWhich?", "Image-1")},
            {"id": 1, "image": ["sq224.png", "sq224.png"],
             "conversations": conv("Image-1: <image>\nImage-2: <image>\nSame?", "yes")},
        ],
        "clip": [{"id": 0, "video": "clip", "conversations": conv("<video>\nWhere?", "up")}],
        "text": [{"id": 0, "conversations": conv("What is 2 + 2?", "4")},
                 {"id": 1, "conversations": conv("Say hi.", "hi")},
                 {"id": 2, "conversations": conv("Name a colour.", "red")}],
    }
    budgets = {"big": 16, "wide": 6, "multi": 8, "clip": 1, "text": None}
    repeats = {"big": 1, "wide": 1, "multi": 2, "clip": 1, "text": 0.5}
    metas = []
    for name, recs in records.items():
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
        metas.append(DatasetMeta(name=name, root=".", annotation=f"{name}.jsonl", max_dynamic_patch=budgets[name],
                                 repeat_time=repeats[name]))
    with (root / "text.jsonl").open("a") as fh:  # one malformed line: counted, not read
        fh.write('{"conversations": "not a list"}\n')
    return root, write_meta(root / "meta.json", metas)


def datasets(folder, tok, **kw):
    from minivl.data.records import read_meta

    _, meta = folder
    return [SupervisedDataset(m, tok, cfg(**kw), train=False) for m in read_meta(meta).values()]


def test_mixture_table_applies_repeat_time(folder):
    _, meta = folder
    rows = {r["name"]: r for r in mixture_table(meta)}
    assert [rows[n]["records"] for n in ("big", "wide", "multi", "clip", "text")] == [1, 1, 2, 1, 3]
    assert rows["multi"]["samples"] == 4  # repeat_time 2 doubles the list
    assert rows["text"]["samples"] == 1  # repeat_time 0.5 keeps the first int(3 * 0.5) = 1
    assert rows["text"]["bad_lines"] == 1
    total = 1 + 1 + 4 + 1 + 1
    assert rows["multi"]["share"] == pytest.approx(4 / total)
    assert sum(r["share"] for r in rows.values()) == pytest.approx(1.0)
    stats = {n: {"tokens_mean": t} for n, t in zip(rows, (100.0, 50.0, 25.0, 10.0, 200.0))}
    with_tokens = {r["name"]: r for r in mixture_table(meta, stats)}
    assert with_tokens["multi"]["tokens"] == pytest.approx(100.0)  # 4 samples x 25
    assert with_tokens["text"]["token_share"] == pytest.approx(200 / (100 + 50 + 100 + 10 + 200))
    with pytest.raises(KeyError, match="no entry for"):
        mixture_table(meta, {"big": {"tokens_mean": 1}})


def test_planned_tiles_by_hand_and_as_built(folder, tok):
    ds = {d.meta.name: d for d in datasets(folder, tok)}
    expected = {"big": [[17]], "wide": [[3]], "multi": [[1, 1, 1], [5, 5]], "clip": [[1, 1, 1, 1]], "text": [[], [], []]}
    for name, per_record in expected.items():
        d = ds[name]
        for record, tiles in zip(d.records, per_record):
            assert planned_tiles(record, d.meta, d.config) == tiles, name
    # the data set really builds those tiles (text: one dummy tile)
    for d in ds.values():
        for i, record in enumerate(d.records):
            sample = d[i]
            planned = planned_tiles(record, d.meta, d.config)
            assert sample["num_patches_list"] == planned
            assert sample["pixel_values"].shape[0] == (sum(planned) or 1)
    # 6 frames, max_num_frame 4 -> 4 tiles at evaluation; 6 with a larger cap
    clip = ds["clip"]
    assert planned_tiles(clip.records[0], clip.meta, cfg(max_num_frame=32)) == [1] * 6
    with pytest.raises(ValueError, match="drawn"):
        planned_tiles(clip.records[0], clip.meta, clip.config, train=True)
    assert planned_tiles(clip.records[0], clip.meta, cfg(min_num_frame=3, max_num_frame=3), train=True) == [1] * 3


def test_tile_count_table(folder, tok):
    rows = {r["name"]: r for r in tile_count_table(datasets(folder, tok))}
    assert rows["multi"]["histogram"] == Counter({3: 2, 10: 2})  # repeat 2: each record twice
    assert rows["multi"]["mean"] == pytest.approx(6.5)
    assert rows["multi"]["images_per_record"] == pytest.approx(2.5)
    assert (rows["big"]["min"], rows["big"]["max"]) == (17, 17)
    assert rows["text"]["histogram"] == Counter({1: 1})  # one record left after repeat 0.5, one dummy tile
    assert rows["clip"]["histogram"] == Counter({4: 1})
    assert all(r["unreadable"] == 0 for r in rows.values())


def test_token_length_stats_counts(folder, tok):
    ds = {d.meta.name: d for d in datasets(folder, tok)}
    stats = token_length_stats(ds["multi"])
    assert stats["samples"] == 4 and stats["skipped"] == 0
    # image tokens: (1 + 1 + 1) x 16 = 48 and (5 + 5) x 16 = 160, each record twice
    assert stats["image_tokens_mean"] == pytest.approx((48 + 160) / 2)
    assert stats["tiles_mean"] == pytest.approx((3 + 10) / 2)
    # supervised: the answer's tokens and <|im_end|>
    sup = [len(tok.encode("Image-1", add_special_tokens=False)) + 1, len(tok.encode("yes", add_special_tokens=False)) + 1]
    assert stats["supervised_mean"] == pytest.approx(sum(sup) / 2)
    lengths = [int(ds["multi"][i]["input_ids"].numel()) for i in range(4)]
    assert stats["lengths"] == lengths
    assert (stats["tokens_min"], stats["tokens_max"]) == (min(lengths), max(lengths))
    assert stats["tokens_mean"] == pytest.approx(sum(lengths) / 4)
    # a too-long limit skips and counts
    (short,) = [d for d in datasets(folder, tok, max_length=60) if d.meta.name == "big"]
    assert token_length_stats(short)["skipped"] == 1 and short.skips["too_long"] == 1


def test_abbreviated_prompt_and_supervised_spans(folder, tok):
    ds = {d.meta.name: d for d in datasets(folder, tok)}
    sample = ds["multi"][1]
    text = abbreviate_prompt(sample["input_ids"], tok)
    assert "Image-1: <img><IMG_CONTEXT>×80</img>\nImage-2: <img><IMG_CONTEXT>×80</img>\nSame?" in text
    assert text.count("<IMG_CONTEXT>") == 2
    assert text.endswith("<|im_start|>assistant\nyes<|im_end|>\n")
    assert supervised_spans(sample["input_ids"], sample["labels"], tok) == ["yes<|im_end|>"]
    bad = sample["labels"].clone()
    pos = int((bad != -100).nonzero()[0])
    bad[pos] = bad[pos] + 1
    with pytest.raises(ValueError, match="differs"):
        supervised_spans(sample["input_ids"], bad, tok)


def test_format_table():
    rows = [{"name": "a", "samples": 1200, "share": 0.25, "mean": 2.5, "aug": True, "h": Counter()},
            {"name": "bb", "samples": 3, "share": 0.75, "mean": None, "aug": False, "h": Counter()}]
    lines = format_table(rows).splitlines()
    assert lines[0].split() == ["name", "samples", "share", "mean", "aug"]
    assert lines[2].split() == ["a", "1,200", "25.0%", "2.50", "yes"]
    assert lines[3].split() == ["bb", "3", "75.0%", "-", "no"]
