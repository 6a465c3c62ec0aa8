"""Benchmark loaders: the synthetic suite's test split, and MMMU / ChartQA / DocVQA / AI2D from local fixtures."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from minivl.eval.bench import build_item_prompt, extract_item_answer, item_pixels, score_answer
from minivl.eval.benchmarks import (
    load_ai2d,
    load_benchmark,
    load_chartqa,
    load_docvqa,
    load_mmmu,
    load_synthetic_bench,
    mmmu_tiles,
)
from minivl.eval.prompts import MC_DIRECT_PROMPT, OPEN_DIRECT_PROMPT

TASKS = ("caption", "shape_qa", "small_text", "chart", "grounding", "multi_image", "video", "reasoning", "text_only")


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    from minivl.data.synthetic.suite import generate_suite

    out = tmp_path_factory.mktemp("synth")
    result = generate_suite(out, scale="smoke", splits=("test",), tasks=TASKS)
    return out / "test.json", result["counts"]["test"]


def _records(suite_dir, task):
    path = suite_dir / "annotations" / "test" / f"{task}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_synthetic_items_metrics_and_budgets(suite):
    meta, counts = suite
    items = load_synthetic_bench(meta)
    by_task: dict[str, list] = {}
    for item in items:
        by_task.setdefault(item.task, []).append(item)
    # every scored task; caption and text_only are left out by default; a reasoning pair is one item
    assert list(by_task) == ["shape_qa", "small_text", "chart", "grounding", "multi_image", "video", "reasoning"]
    assert len(by_task["reasoning"]) == counts["reasoning"] // 2
    assert {t: by_task[t][0].metric for t in by_task} == {
        "shape_qa": "exact", "small_text": "exact", "chart": "relaxed", "grounding": "iou@0.5",
        "multi_image": "exact", "video": "exact", "reasoning": "choice"}
    assert {t: by_task[t][0].max_num for t in by_task} == {
        "shape_qa": 1, "small_text": 16, "chart": 6, "grounding": 1, "multi_image": 8, "video": 1, "reasoning": 6}
    assert [i.max_num for i in load_synthetic_bench(meta, tasks=["small_text"], max_num=2)] == [2] * counts["small_text"]
    assert len(load_synthetic_bench(meta, tasks=["shape_qa", "chart"], per_task=1)) == 2
    with pytest.raises(ValueError, match="caption"):
        load_synthetic_bench(meta, tasks=["caption"])
    with pytest.raises(ValueError, match="unknown task"):
        load_synthetic_bench(meta, tasks=["nope"])


def test_synthetic_prompts_are_the_trained_ones(suite):
    meta, _ = suite
    root = meta.parent
    items = {i.id: i for i in load_synthetic_bench(meta, tasks=["shape_qa", "multi_image", "video", "grounding",
                                                                 "reasoning", "text_only"])}
    for task in ("shape_qa", "multi_image", "grounding", "text_only"):
        for record in _records(root, task):
            item = items[record["id"]]
            # the direct prompt rebuilt by the harness is the record's human turn, placeholders included
            assert build_item_prompt(item, "direct") == record["conversations"][0]["value"]
            assert item.answers == [record["conversations"][1]["value"]]
    for record in _records(root, "video"):
        item = items[record["id"]]
        n = record["meta"]["num_frames"]
        assert item.video and len(item.images) == n
        frames = "\n".join(f"Frame-{k}: <image>" for k in range(1, n + 1))
        assert build_item_prompt(item) == record["conversations"][0]["value"].replace("<video>", frames)
        assert item_pixels(item, 28)[1] == [1] * n
    record = _records(root, "grounding")[0]
    item = items[record["id"]]
    assert item.image_size == (record["meta"]["width"], record["meta"]["height"])
    gold = record["conversations"][1]["value"]
    assert score_answer(item, extract_item_answer(item, gold)) == 1.0
    for record in _records(root, "reasoning"):
        info = record["meta"]
        item = items[info["instance"]]
        assert item.kind == "mc" and item.gold == info["answer_letter"] and item.options == info["options"]
        assert build_item_prompt(item, info["variant"]) == record["conversations"][0]["value"]
        assert score_answer(item, extract_item_answer(item, record["conversations"][1]["value"])) == 1.0
        assert item.question == record["conversations"][0]["value"].removeprefix("<image>\n").split("\nA. ")[0]


def _img(colour: str, size=(28, 14)) -> Image.Image:
    return Image.new("RGB", size, colour)


def _save(ds, path, how: str):
    if how == "disk":
        ds.save_to_disk(str(path))
    else:
        ds.to_parquet(str(path))
    return path


def test_mmmu_loader(tmp_path):
    import datasets

    rows = {
        "id": ["validation_Art_Theory_1", "validation_Math_2", "validation_Math_3"],
        "question": ["Which painting is older, <image 1> or <image 2>?", "Compute x in <image 1>.",
                     "How many images?"],
        "options": ["['<image 1>', '<image 2>', 'Same age']", "[]", "['5', '7']"],
        "answer": ["B", "['3.5', '7/2']", "B"],
        "question_type": ["multiple-choice", "open", "multiple-choice"],
        "explanation": ["", "", ""],
    }
    for k in range(1, 8):
        rows[f"image_{k}"] = [_img("red") if k <= 2 else None, _img("blue") if k == 1 else None, _img("green")]
    features = datasets.Features({**{key: datasets.Value("string") for key in rows if not key.startswith("image_")},
                                  **{f"image_{k}": datasets.Image() for k in range(1, 8)}})
    path = _save(datasets.Dataset.from_dict(rows, features=features), tmp_path / "mmmu", "disk")
    items = load_mmmu(path)
    a, b, c = items
    assert (a.kind, a.metric, a.gold, a.options) == ("mc", "choice", "B", ["<image 1>", "<image 2>", "Same age"])
    assert build_item_prompt(a) == ("Image-1: <image>\nImage-2: <image>\n"
                                    "Which painting is older, <image 1> or <image 2>?\n"
                                    "A. <image 1>\nB. <image 2>\nC. Same age\n" + MC_DIRECT_PROMPT)
    assert a.tiles_per_image == [12, 12] and a.upscale_first and a.max_new_tokens == 10
    assert a.extra["subject"] == "Art_Theory"
    assert (b.kind, b.metric, b.answers) == ("open", "open", ["3.5", "7/2"])
    assert build_item_prompt(b) == "<image>\nCompute x in <image 1>.\n" + OPEN_DIRECT_PROMPT
    assert score_answer(b, extract_item_answer(b, "7/2")) == 1.0 and score_answer(b, "3.50") == 1.0
    assert len(c.images) == 7 and c.tiles_per_image == [9] * 7  # 64 // 7 = 9
    assert mmmu_tiles(1) == 12 and mmmu_tiles(6) == 10 and mmmu_tiles(100) == 1
    # 28 x 14 upscaled to 56 x 28 -> 8 tiles + thumbnail; the second image stays 2 + thumbnail
    assert item_pixels(a, 14)[1] == [9, 3]
    assert len(load_benchmark("mmmu", path, limit=2)) == 2


def test_chartqa_loader_from_parquet(tmp_path):
    import datasets

    ds = datasets.Dataset.from_dict(
        {"image": [_img("red"), _img("blue")], "query": ["Peak value?", "Which bar is tallest?"],
         "label": [["12.5"], ["Blue"]], "human_or_machine": [0, 1]},
        features=datasets.Features({"image": datasets.Image(), "query": datasets.Value("string"),
                                    "label": datasets.Sequence(datasets.Value("string")),
                                    "human_or_machine": datasets.Value("int64")}))
    path = _save(ds, tmp_path / "chartqa.parquet", "parquet")
    items = load_chartqa(path, split="test")
    assert [i.task for i in items] == ["chartqa", "chartqa"] and items[0].max_num == 12
    assert [i.extra["subset"] for i in items] == ["human", "augmented"]
    assert build_item_prompt(items[0]) == "<image>\nPeak value?\n" + OPEN_DIRECT_PROMPT
    assert score_answer(items[0], "13.1") == 1.0 and score_answer(items[0], "13.2") == 0.0  # 5% of 12.5 = 0.625
    assert score_answer(items[1], extract_item_answer(items[1], "blue.")) == 1.0
    assert isinstance(items[0].images[0], Image.Image) and items[0].images[0].size == (28, 14)


def test_docvqa_and_ai2d_loaders(tmp_path):
    import datasets

    doc = datasets.Dataset.from_dict(
        {"questionId": [7], "question": ["What is the date?"], "answers": [["May 5", "5 May"]],
         "image": [_img("white")], "docId": [1]},
        features=datasets.Features({"questionId": datasets.Value("int64"), "question": datasets.Value("string"),
                                    "answers": datasets.Sequence(datasets.Value("string")),
                                    "image": datasets.Image(), "docId": datasets.Value("int64")}))
    (item,) = load_docvqa(_save(datasets.DatasetDict({"validation": doc}), tmp_path / "doc", "disk"))
    assert (item.id, item.metric, item.max_num, item.max_new_tokens) == ("docvqa-7", "anls", 18, 100)
    assert score_answer(item, "may 6") == pytest.approx(1 - 1 / 5)  # one edit in "may 5"
    assert score_answer(item, "june") == 0.0
    hidden = datasets.Dataset.from_dict({"questionId": [1], "question": ["q"], "answers": [None],
                                         "image": [_img("white")]},
                                        features=datasets.Features({"questionId": datasets.Value("int64"),
                                                                    "question": datasets.Value("string"),
                                                                    "answers": datasets.Sequence(datasets.Value("string")),
                                                                    "image": datasets.Image()}))
    with pytest.raises(ValueError, match="hidden"):
        load_docvqa(_save(hidden, tmp_path / "hidden", "disk"))

    ai2d = datasets.Dataset.from_dict(
        {"question": ["Which label is the sun?"], "options": [["a", "b", "c", "d"]], "answer": ["2"],
         "image": [_img("yellow")]},
        features=datasets.Features({"question": datasets.Value("string"),
                                    "options": datasets.Sequence(datasets.Value("string")),
                                    "answer": datasets.Value("string"), "image": datasets.Image()}))
    (q,) = load_ai2d(_save(ai2d, tmp_path / "ai2d", "disk"))
    assert (q.gold, q.kind, q.max_num) == ("C", "mc", 6)
    assert build_item_prompt(q) == "<image>\nWhich label is the sun?\nA. a\nB. b\nC. c\nD. d\n" + MC_DIRECT_PROMPT
    assert score_answer(q, extract_item_answer(q, "C")) == 1.0
    with pytest.raises(KeyError, match="columns"):
        load_chartqa(_save(doc, tmp_path / "not_chart", "disk"))  # no label / answer column
    with pytest.raises(ValueError, match="unknown benchmark"):
        load_benchmark("mmbench", tmp_path)
