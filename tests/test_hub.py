"""Tests of minivl.data.hub: public VLM data layouts mapped to InternVL records, offline."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

datasets = pytest.importorskip("datasets")

from minivl.data.hub import (  # noqa: E402
    MMMU_MC_SUFFIX,
    MMMU_OPEN_SUFFIX,
    load_hub_dataset,
    map_cauldron,
    map_dataset,
    map_llava,
    map_mmmu,
    parse_options,
    safe_name,
)


def solid(colour: tuple[int, int, int], size=(8, 6)) -> Image.Image:
    image = Image.new("RGB", size, colour)
    image.putpixel((1, 2), (colour[2], colour[0], colour[1]))  # one odd pixel, so images differ inside
    return image


def same_pixels(path, image) -> bool:
    return np.array_equal(np.asarray(Image.open(path).convert("RGB")), np.asarray(image.convert("RGB")))


def test_llava_rows(tmp_path):
    red = solid((255, 0, 0))
    ds = datasets.Dataset.from_dict({
        "id": ["000001", "x/2"],
        "image": [red, None],
        "conversations": [
            [{"from": "human", "value": "<image>\nWhat colour?"}, {"from": "gpt", "value": "Red."}],
            [{"from": "user", "value": "Say hi."}, {"from": "assistant", "value": "Hi!"}],
        ],
    })
    assert isinstance(ds.features["image"], datasets.Image)  # PIL images become an Image feature
    records = map_dataset(ds, map_llava, tmp_path / "img")
    assert records == [
        {"id": "000001", "image": "000001.png",
         "conversations": [{"from": "human", "value": "<image>\nWhat colour?"}, {"from": "gpt", "value": "Red."}]},
        {"id": "x/2", "conversations": [{"from": "human", "value": "Say hi."}, {"from": "gpt", "value": "Hi!"}]},
    ]
    assert same_pixels(tmp_path / "img" / "000001.png", red)
    assert sorted(p.name for p in (tmp_path / "img").iterdir()) == ["000001.png"]


def test_llava_path_images_and_errors(tmp_path):
    src = tmp_path / "coco"
    (src / "train2017").mkdir(parents=True)
    solid((0, 0, 255)).save(src / "train2017" / "a.png")
    row = {"image": "train2017/a.png", "conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]}
    assert map_llava(row, 7, tmp_path / "out")["image"] == "train2017/a.png"  # path kept, nothing copied
    assert not (tmp_path / "out" / "train2017").exists()
    record = map_llava(row, 7, tmp_path / "out", image_source_dir=str(src))
    assert record["id"] == "llava-7"
    assert (tmp_path / "out" / "train2017" / "a.png").read_bytes() == (src / "train2017" / "a.png").read_bytes()
    with pytest.raises(FileNotFoundError, match="llava-7"):
        map_llava({**row, "image": "missing.png"}, 7, tmp_path / "out", image_source_dir=str(src))
    with pytest.raises(ValueError, match="cannot read turn"):
        map_llava({"conversations": [{"from": "robot", "value": "x"}]}, 3, tmp_path)
    assert safe_name("a/b c:d") == "a_b_c_d"


def test_cauldron_rows(tmp_path):
    a, b, c = solid((10, 20, 30)), solid((200, 100, 0), (5, 9)), solid((0, 255, 0))
    ds = datasets.Dataset.from_dict({
        "images": [[a, b], [c], []],
        "texts": [
            [{"user": "Which is brighter?", "assistant": "Image-2.", "source": "vsr"},
             {"user": "And larger?", "assistant": "Image-1.", "source": "vsr"}],
            [{"user": "Colour?", "assistant": "Green.", "source": "clevr"}],
            [{"user": "2+2?", "assistant": "4", "source": "text"}],
        ],
    })
    records = map_dataset(ds, map_cauldron, tmp_path)
    assert records == [
        {"id": "cauldron-0", "image": ["cauldron-0_1.png", "cauldron-0_2.png"], "conversations": [
            {"from": "human", "value": "Image-1: <image>\nImage-2: <image>\nWhich is brighter?"},
            {"from": "gpt", "value": "Image-2."},
            {"from": "human", "value": "And larger?"},
            {"from": "gpt", "value": "Image-1."}]},
        {"id": "cauldron-1", "image": "cauldron-1_1.png", "conversations": [
            {"from": "human", "value": "<image>\nColour?"}, {"from": "gpt", "value": "Green."}]},
        {"id": "cauldron-2", "conversations": [{"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "4"}]},
    ]
    assert same_pixels(tmp_path / "cauldron-0_2.png", b) and same_pixels(tmp_path / "cauldron-1_1.png", c)
    assert Image.open(tmp_path / "cauldron-0_2.png").size == (5, 9)
    assert len(map_dataset(ds, map_cauldron, tmp_path, limit=2)) == 2


def mmmu_dict():
    img1, img2 = solid((1, 2, 3)), solid((4, 5, 6))
    none = [None, None]
    return {
        "id": ["validation_Art_1", "validation_Math_2"],
        "question": ["Compare <image 1> and <image 2>. Which is older?", "What is 2 + <image 1>?"],
        "options": ["['<image 1>', '<image 2>', 'Both']", "[]"],
        "answer": ["B", "5"],
        "question_type": ["multiple-choice", "open"],
        "image_1": [img1, img2],
        "image_2": [img2, None],
        **{f"image_{k}": none for k in range(3, 8)},
    }


def test_mmmu_rows(tmp_path):
    data = mmmu_dict()
    ds = datasets.Dataset.from_dict(data, features=datasets.Features({
        "id": datasets.Value("string"), "question": datasets.Value("string"), "options": datasets.Value("string"),
        "answer": datasets.Value("string"), "question_type": datasets.Value("string"),
        **{f"image_{k}": datasets.Image() for k in range(1, 8)}}))
    records = map_dataset(ds, map_mmmu, tmp_path)
    assert records[0] == {
        "id": "validation_Art_1", "image": ["validation_Art_1_1.png", "validation_Art_1_2.png"],
        "conversations": [
            {"from": "human", "value": "Image-1: <image>\nImage-2: <image>\nCompare Image-1 and Image-2. Which is older?"
                                       "\nA. Image-1\nB. Image-2\nC. Both\n" + MMMU_MC_SUFFIX},
            {"from": "gpt", "value": "B"}]}
    assert records[1] == {
        "id": "validation_Math_2", "image": "validation_Math_2_1.png",
        "conversations": [{"from": "human", "value": "Image-1: <image>\nWhat is 2 + Image-1?\n" + MMMU_OPEN_SUFFIX},
                          {"from": "gpt", "value": "5"}]}
    assert same_pixels(tmp_path / "validation_Art_1_2.png", data["image_2"][0])


def test_mmmu_renumbers_gaps_and_fails_on_missing_images(tmp_path):
    row = {"id": "v_3", "question": "Look at <image 3>.", "options": "['x', 'y']", "answer": "A",
           "image_1": None, "image_2": None, "image_3": solid((9, 9, 9))}
    record = map_mmmu(row, 0, tmp_path)
    assert record["image"] == "v_3_3.png"
    assert record["conversations"][0]["value"] == "Image-1: <image>\nLook at Image-1.\nA. x\nB. y\n" + MMMU_MC_SUFFIX
    with pytest.raises(ValueError, match="<image 2> but image_2 is empty"):
        map_mmmu({**row, "question": "See <image 2>."}, 0, tmp_path)
    assert parse_options("['1', \"it's\"]") == ["1", "it's"]
    with pytest.raises(ValueError, match="cannot parse"):
        parse_options("[unclosed")


def test_load_hub_dataset_local_files_and_streaming(tmp_path):
    rows = [{"id": str(i), "conversations": [{"from": "human", "value": f"q{i}"}, {"from": "gpt", "value": f"a{i}"}]}
            for i in range(5)]
    jsonl = tmp_path / "llava.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    records = load_hub_dataset(jsonl, mapper=map_llava, image_dir=tmp_path / "img", cache_dir=str(tmp_path / "c"))
    assert records == rows
    streamed = load_hub_dataset(jsonl, mapper=map_llava, streaming=True, image_dir=tmp_path / "img", limit=3)
    assert streamed == rows[:3]
    ds = load_hub_dataset(jsonl, streaming=True)
    assert isinstance(ds, datasets.IterableDataset)

    data = mmmu_dict()
    saved = tmp_path / "mmmu_saved"
    datasets.DatasetDict({"validation": datasets.Dataset.from_dict(data)}).save_to_disk(str(saved))
    mapped = load_hub_dataset(saved, split="validation", mapper=map_mmmu, streaming=True, image_dir=tmp_path / "m")
    assert [r["conversations"][1]["value"] for r in mapped] == ["B", "5"]
    assert same_pixels(tmp_path / "m" / "validation_Math_2_1.png", data["image_1"][1])
    with pytest.raises(KeyError, match="no split 'test'"):
        load_hub_dataset(saved, split="test")
    with pytest.raises(ValueError, match="image_dir"):
        load_hub_dataset(jsonl, mapper=map_llava)


def test_load_hub_dataset_offline_hub_id_fails_clearly(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(RuntimeError, match="offline"):
        load_hub_dataset("minivl-nonexistent/never-published-dataset", split="train")
