"""InternVL's meta JSON and JSONL records: parsing, validation errors, repeat_time, round trips."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from minivl.data.records import (
    DatasetMeta,
    MetaError,
    Record,
    RecordError,
    apply_repeat_time,
    parse_meta,
    parse_record,
    read_meta,
    read_records,
    write_meta,
    write_records,
)

H = {"from": "human", "value": "What is 2 + 3?"}
G = {"from": "gpt", "value": "5"}

GOOD = [
    {"id": "t0", "conversations": [H, G]},
    {"id": 7, "conversations": [{"from": "system", "value": "Be brief."}, H, G, H, G]},
    {"id": "i0", "image": "a.png", "width": 112, "height": 224,
     "conversations": [{"from": "human", "value": "<image>\nDescribe."}, G], "meta": {"shapes": []}},
    {"id": "i1", "image": "b.png", "conversations": [{"from": "human", "value": "No placeholder: prepended later."}, G]},
    {"id": "m0", "image": ["a.png", "b.png"], "width_list": [112, 168], "height_list": [112, 168],
     "conversations": [{"from": "human", "value": "Image-1: <image>\nImage-2: <image>\nWhich?"}, G,
                       {"from": "human", "value": "And?"}, G]},
    {"id": "v0", "video": "clip_000", "conversations": [{"from": "human", "value": "<video>\nWhere?"}, G],
     "fault": "empty"},
]
KINDS = ["text", "text", "image", "image", "multi_image", "video"]


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_parse_kinds_and_fields():
    records = [parse_record(obj) for obj in GOOD]
    assert [r.kind for r in records] == KINDS
    assert records[1].system == "Be brief." and len(records[1].turns) == 4 and records[0].system is None
    assert records[2].images == ["a.png"] and records[2].width_list == [112] and records[2].height_list == [224]
    assert records[4].num_images == 2 and records[4].width_list == [112, 168]
    assert records[5].video == "clip_000" and records[5].num_images == 0
    assert records[2].extra == {"meta": {"shapes": []}} and records[5].extra == {"fault": "empty"}


def test_round_trip_file(tmp_path):
    path = write_lines(tmp_path / "a.jsonl", [json.dumps(o) for o in GOOD])
    records, skipped = read_records(path)
    assert not skipped
    assert [r.to_dict() for r in records] == GOOD
    assert [r.source for r in records] == [(str(path), i) for i in range(1, 7)]
    write_records(tmp_path / "b.jsonl", records)
    assert (tmp_path / "b.jsonl").read_text() == path.read_text()  # byte-identical
    again, _ = read_records(tmp_path / "b.jsonl")
    assert [r.to_dict() for r in again] == GOOD
    # dicts and Record objects write the same lines
    write_records(tmp_path / "c.jsonl", GOOD)
    assert (tmp_path / "c.jsonl").read_text() == path.read_text()


def test_record_to_dict_key_order():
    rec = Record(conversations=[H, G], kind="multi_image", id="x", images=["a", "b"], width_list=[1, 2],
                 extra={"meta": 1})
    assert list(rec.to_dict()) == ["id", "image", "width_list", "conversations", "meta"]
    assert json.loads(rec.to_json()) == rec.to_dict()


# Each malformed line, and the reason it must be rejected with.
BAD = [
    ('{"conversations": [', "invalid_json"),
    ("[1, 2]", "not_object"),
    ('{"id": 1}', "bad_conversations"),
    ('{"conversations": []}', "bad_conversations"),
    ('{"conversations": [{"from": "human"}, {"from": "gpt", "value": "x"}]}', "bad_turn"),
    ('{"conversations": [{"from": "human", "value": 3}, {"from": "gpt", "value": "x"}]}', "bad_turn"),
    ('{"conversations": [{"from": "user", "value": "q"}, {"from": "gpt", "value": "x"}]}', "bad_role"),
    ('{"conversations": [{"from": "human", "value": "q"}, {"from": "human", "value": "x"}]}', "bad_order"),
    ('{"conversations": [{"from": "gpt", "value": "q"}, {"from": "human", "value": "x"}]}', "bad_order"),
    ('{"conversations": [{"from": "human", "value": "q"}, {"from": "system", "value": "s"}, '
     '{"from": "gpt", "value": "x"}]}', "bad_order"),
    ('{"conversations": [{"from": "human", "value": "q"}]}', "no_answer"),
    ('{"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "x"}, '
     '{"from": "human", "value": "q2"}]}', "no_answer"),
    ('{"image": "", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "x"}]}', "bad_image"),
    ('{"image": [], "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "x"}]}', "bad_image"),
    ('{"image": 5, "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "x"}]}', "bad_image"),
    ('{"image": "a.png", "video": "v", "conversations": [{"from": "human", "value": "<image>"}, '
     '{"from": "gpt", "value": "x"}]}', "bad_video"),
    ('{"video": "", "conversations": [{"from": "human", "value": "<video>"}, {"from": "gpt", "value": "x"}]}',
     "bad_video"),
    ('{"image": ["a", "b"], "width_list": [1], "conversations": [{"from": "human", "value": "<image><image>"}, '
     '{"from": "gpt", "value": "x"}]}', "bad_size"),
    ('{"image": "a", "width": 0, "conversations": [{"from": "human", "value": "<image>"}, '
     '{"from": "gpt", "value": "x"}]}', "bad_size"),
    ('{"width": 5, "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "x"}]}', "bad_size"),
    ('{"image": "a", "conversations": [{"from": "human", "value": "<image><image>"}, '
     '{"from": "gpt", "value": "x"}]}', "placeholder_count"),
    ('{"image": ["a", "b"], "conversations": [{"from": "human", "value": "Image-1: <image>"}, '
     '{"from": "gpt", "value": "x"}]}', "placeholder_count"),
    ('{"conversations": [{"from": "human", "value": "<image>\\nq"}, {"from": "gpt", "value": "x"}]}',
     "placeholder_count"),
    ('{"video": "v", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "x"}]}',
     "placeholder_count"),
    ('{"video": "v", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "x"}, '
     '{"from": "human", "value": "<video>"}, {"from": "gpt", "value": "x"}]}', "placeholder_count"),
    ('{"image": "a", "conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "<image>"}]}',
     "placeholder_count"),
    ('{"id": [1], "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "x"}]}', "bad_id"),
]


@pytest.mark.parametrize("line, reason", BAD)
def test_strict_error_names_file_line_and_reason(tmp_path, line, reason):
    # line 1 is valid, line 2 is blank, line 3 is the bad one: blank lines still count
    path = write_lines(tmp_path / "bad.jsonl", [json.dumps(GOOD[0]), "", line])
    with pytest.raises(RecordError) as err:
        read_records(path)
    assert (err.value.file, err.value.line, err.value.reason) == (str(path), 3, reason)
    assert str(err.value).startswith(f"{path}:3: {reason}: ")


def test_lenient_mode_counts_skips(tmp_path):
    lines = [json.dumps(o) for o in GOOD] + [line for line, _ in BAD]
    path = write_lines(tmp_path / "mixed.jsonl", lines)
    records, skipped = read_records(path, strict=False)
    assert [r.id for r in records] == [o["id"] for o in GOOD]
    assert skipped == Counter(reason for _, reason in BAD)
    assert sum(skipped.values()) == len(BAD)


def test_missing_annotation_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        read_records(tmp_path / "nope.jsonl")


# ------------------------------------------------------------------------------------------
# repeat_time
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "r, expected",
    [
        (0.5, [0, 1, 2]),  # int(7 * 0.5) = 3: the first three, not a random subset
        (0.1, []),  # int(0.7) = 0
        (0.99, [0, 1, 2, 3, 4, 5]),  # int(6.93) = 6
        (1, [0, 1, 2, 3, 4, 5, 6]),
        (2, [0, 1, 2, 3, 4, 5, 6] * 2),
        (3.0, [0, 1, 2, 3, 4, 5, 6] * 3),
    ],
)
def test_repeat_time(r, expected):
    assert apply_repeat_time(list(range(7)), r) == expected


@pytest.mark.parametrize("r", [1.5, 2.25, 0, -1, float("nan"), "2", True, None])
def test_repeat_time_rejects(r):
    with pytest.raises(ValueError, match="repeat_time"):
        apply_repeat_time([1, 2], r)


# ------------------------------------------------------------------------------------------
# meta JSON
# ------------------------------------------------------------------------------------------


def test_meta_round_trip_and_paths(tmp_path):
    (tmp_path / "ann").mkdir()
    write_lines(tmp_path / "ann" / "a.jsonl", [json.dumps(o) for o in GOOD[:4]])
    data = {
        "a": {"root": "imgs/a", "annotation": "ann/a.jsonl", "data_augment": True, "max_dynamic_patch": 12,
              "repeat_time": 0.5, "length": 4},
        "b": {"root": "/abs/root", "annotation": "ann/a.jsonl", "data_augment": False, "repeat_time": 2, "length": 4},
    }
    path = tmp_path / "meta.json"
    path.write_text(json.dumps(data))
    metas = read_meta(path)
    assert list(metas) == ["a", "b"]
    a, b = metas["a"], metas["b"]
    assert (a.data_augment, a.max_dynamic_patch, a.repeat_time, a.length) == (True, 12, 0.5, 4)
    assert b.max_dynamic_patch is None
    assert a.annotation_path == tmp_path / "ann" / "a.jsonl"
    assert a.image_path("x.png") == tmp_path / "imgs" / "a" / "x.png"
    assert b.root_path == Path("/abs/root")
    assert [r.id for r in a.read_records()[0]] == ["t0", 7]  # first int(4 * 0.5) records
    assert len(b.read_records()[0]) == 8
    write_meta(tmp_path / "again.json", metas)
    assert json.loads((tmp_path / "again.json").read_text()) == data


def entry(**kw):
    base = {"root": "r", "annotation": "a.jsonl", "data_augment": False, "repeat_time": 1}
    base.update(kw)
    return {k: v for k, v in base.items() if v is not ...}


@pytest.mark.parametrize(
    "bad, key",
    [
        (entry(root=...), "root"),
        (entry(annotation=...), "annotation"),
        (entry(annotation="a.json"), "annotation"),
        (entry(data_augment="yes"), "data_augment"),
        (entry(max_dynamic_patch=0), "max_dynamic_patch"),
        (entry(repeat_time=1.5), "repeat_time"),
        (entry(repeat_time=0), "repeat_time"),
        (entry(length=-1), "length"),
        (entry(repeat_times=2), "repeat_times"),
    ],
)
def test_meta_errors_name_file_entry_and_key(tmp_path, bad, key):
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"ok": entry(), "broken": bad}))
    with pytest.raises(MetaError) as err:
        read_meta(path)
    assert str(err.value).startswith(f"{path}: entry 'broken', key '{key}': ")


def test_meta_whole_file_errors(tmp_path):
    path = tmp_path / "m.json"
    path.write_text("{not json")
    with pytest.raises(MetaError, match="not valid JSON"):
        read_meta(path)
    with pytest.raises(MetaError, match="non-empty JSON object"):
        parse_meta([])
    with pytest.raises(MetaError, match="entry 'x'"):
        parse_meta({"x": 3})


def test_meta_unknown_keys_allowed_on_request():
    metas = parse_meta({"x": entry(max_num_frame=32, note="hi")}, allow_unknown_keys=True)
    assert metas["x"].extra == {"max_num_frame": 32, "note": "hi"}
    assert parse_meta({"x": entry(max_num_frame=32)})["x"].extra == {"max_num_frame": 32}  # a known optional key
    assert DatasetMeta("x", "r", "a.jsonl").to_dict() == {"root": "r", "annotation": "a.jsonl", "data_augment": False,
                                                        "repeat_time": 1}
