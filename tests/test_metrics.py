"""Metrics of minivl.eval.metrics against values computed by hand."""

from __future__ import annotations

import json

import pytest

from minivl.eval.metrics import (
    anls,
    box_iou,
    exact_match,
    grounding_accuracy,
    grounding_hit,
    levenshtein,
    mc_accuracy,
    parse_box,
    relaxed_correctness,
    results_markdown,
    summarize,
    write_results,
)


def test_mc_accuracy_counts_none_as_wrong():
    assert mc_accuracy(["A", None, "C", "B"], ["A", "B", "C", "D"]) == 0.5
    with pytest.raises(ValueError, match="length"):
        mc_accuracy(["A"], ["A", "B"])
    with pytest.raises(ValueError, match="no predictions"):
        mc_accuracy([], [])


def test_exact_match():
    assert exact_match(" Paris. ", "paris") == 1.0
    assert exact_match("Lyon", ["paris", "lyon"]) == 1.0
    assert exact_match("paris france", "paris") == 0.0
    assert exact_match(None, "paris") == 0.0


@pytest.mark.parametrize(
    "pred, gold, expected",
    [
        ("105", "100", 1.0),      # |105-100|/100 = 0.05 exactly: inclusive
        ("95", "100", 1.0),
        ("105.01", "100", 0.0),   # 0.0501 > 0.05
        ("94.99", "100", 0.0),
        ("1.05", "1", 1.0),       # 5% again, though 1.05 - 1 rounds to 0.050000000000000044
        ("0.9499", "1", 0.0),
        ("-104", "-100", 1.0),    # relative to |gold|
        ("10%", "0.1", 1.0),      # a trailing % divides by 100
        ("10.5%", "10", 0.0),     # 0.105 vs 10
        ("0.0", "0", 0.0),        # gold 0: string match, and "0.0" != "0"
        ("0", "0", 1.0),
        ("Yes", "yes", 1.0),      # non-numeric: case-insensitive equality
        ("yes.", "yes", 0.0),
        ("twelve", "12", 0.0),
        (None, "12", 0.0),
    ],
)
def test_relaxed_correctness(pred, gold, expected):
    assert relaxed_correctness(pred, gold) == expected


def test_relaxed_correctness_best_over_golds():
    assert relaxed_correctness("50", ["10", "49"]) == 1.0  # |50-49|/49 = 2%


def test_levenshtein():
    assert levenshtein("kitten", "sitting") == 3
    assert levenshtein("", "abc") == 3
    assert levenshtein("flaw", "lawn") == 2


@pytest.mark.parametrize(
    "pred, golds, expected",
    [
        ("docvqa", "docvqb", 5 / 6),                    # 1 edit over 6 characters
        ("hello world", ["hello word", "xyz"], 10 / 11),  # best gold: 1 edit over 11
        (" Hello   World ", "hello world", 1.0),        # case and spaces are normalised
        ("ab", "ac", 0.5),                              # similarity exactly 0.5 is kept
        ("abc", "axy", 0.0),                            # 1 - 2/3 = 1/3 < 0.5 -> 0
        ("", "", 1.0),
        (None, "abc", 0.0),
    ],
)
def test_anls(pred, golds, expected):
    assert anls(pred, golds) == pytest.approx(expected, abs=1e-12)


def test_parse_box_scaling_and_first_match():
    # 0-1000 coordinates on a 640 x 480 image: x * 640 / 1000, y * 480 / 1000
    text = "<ref>cat</ref><box>[[100, 200, 500, 800]]</box> and <box>[[0, 0, 10, 10]]</box>"
    assert parse_box(text, 640, 480) == pytest.approx((64.0, 96.0, 320.0, 384.0))
    # values summing to < 4 are read as 0-1 already
    assert parse_box("[[0.1, 0.2, 0.5, 0.8]]", 640, 480) == pytest.approx((64.0, 96.0, 320.0, 384.0))
    # a single bracket pair matches too (the pattern's outer brackets are optional: \[*)
    assert parse_box("[10, 20, 30, 40]]", 1000, 1000) == pytest.approx((10.0, 20.0, 30.0, 40.0))
    assert parse_box("no box here", 640, 480) is None
    assert parse_box("[[a, b, c, d]]", 640, 480) is None


def test_box_iou_known_boxes():
    assert box_iou((0, 0, 10, 10), (5, 5, 15, 15)) == pytest.approx(25 / 175)
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert box_iou((0, 0, 10, 10), (10, 0, 20, 10)) == 0.0  # touching edges
    assert box_iou((0, 0, 10, 10), (0, 0, 20, 10)) == 0.5
    assert box_iou((0, 0, 4, 2), (1, 1, 3, 5)) == pytest.approx(2 / 14)
    with pytest.raises(ValueError):
        box_iou((0, 0, 1), (0, 0, 1, 1))


def test_grounding_hits_at_iou_half():
    # gold (0,0,200,100) on a 1000 x 1000 image; prediction (0,0,100,100): IoU 0.5 exactly, a hit
    assert grounding_hit("<box>[[0, 0, 100, 100]]</box>", (0, 0, 200, 100), 1000, 1000) == 1.0
    # prediction (0,0,90,100): IoU 0.45, a miss
    assert grounding_hit("<box>[[0, 0, 90, 100]]</box>", (0, 0, 200, 100), 1000, 1000) == 0.0
    texts = ["<box>[[0, 0, 500, 500]]</box>", "<box>[[500, 500, 1000, 1000]]</box>", "no idea"]
    golds = [(0, 0, 100, 50), (0, 0, 100, 50), (0, 0, 100, 50)]
    # on 200 x 100 images the first prediction is exactly (0, 0, 100, 50)
    assert grounding_accuracy(texts, golds, [(200, 100)] * 3) == pytest.approx(1 / 3)


RECORDS = [
    {"task": "mmmu", "score": 1, "parsed": True, "tokens": 10},
    {"task": "mmmu", "score": 0, "parsed": False, "tokens": 30},
    {"task": "mmmu", "score": 1, "tokens": 20},
    {"task": "mmmu", "score": 0, "parsed": True},
    {"task": "docvqa", "score": 0.75},
    {"task": "docvqa", "score": 0.25, "parsed": False},
]


def test_summarize_by_hand():
    results = summarize(RECORDS)
    assert list(results["tasks"]) == ["mmmu", "docvqa"]
    assert results["tasks"]["mmmu"] == {"n": 4, "score": 0.5, "unparseable": 1, "tokens": 60}
    assert results["tasks"]["docvqa"] == {"n": 2, "score": 0.5, "unparseable": 1, "tokens": 0}
    assert results["overall"] == {"n": 6, "score": 0.5, "micro_score": 3 / 6, "unparseable": 2, "tokens": 60}
    # macro and micro differ when tasks differ in size
    uneven = summarize([{"task": "a", "score": 1}, {"task": "b", "score": 0}, {"task": "b", "score": 0}])
    assert uneven["overall"]["score"] == 0.5
    assert uneven["overall"]["micro_score"] == pytest.approx(1 / 3)


def test_summarize_fails_loudly():
    with pytest.raises(KeyError, match="record 1 has no 'score'"):
        summarize([{"task": "a", "score": 1}, {"task": "a"}])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        summarize([{"task": "a", "score": 75}])
    with pytest.raises(ValueError, match="no records"):
        summarize([])


def test_write_results(tmp_path):
    results = summarize(RECORDS)
    json_path, md_path = write_results(results, tmp_path / "out")
    assert json.loads(json_path.read_text()) == results
    assert md_path.read_text() == (
        "| task | n | score (%) | unparseable |\n"
        "|---|---:|---:|---:|\n"
        "| mmmu | 4 | 50.0 | 1 |\n"
        "| docvqa | 2 | 50.0 | 1 |\n"
        "| **overall** | 6 | 50.0 | 2 |\n"
    )
    with pytest.raises(KeyError, match="summarize"):
        results_markdown({"tasks": {}})
