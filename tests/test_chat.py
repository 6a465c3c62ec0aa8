"""`minivl chat` / `minivl eval` and grounding boxes drawn on images."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from minivl import cli
from minivl.eval.inference import draw_boxes, parse_grounding, to_pixels


def test_parse_grounding_scales_0_1000_to_pixels():
    text = "<ref>the cat</ref><box>[[100, 200, 500, 1000]]</box> and <ref>dogs</ref><box>[[0, 0, 10, 10], [990, 990, 1000, 1000]]</box>"
    boxes = [(label, to_pixels(box, 200, 100)) for label, box in parse_grounding(text)]
    assert boxes == [("the cat", (20.0, 20.0, 100.0, 100.0)), ("dogs", (0.0, 0.0, 2.0, 1.0)),
                     ("dogs", (198.0, 99.0, 200.0, 100.0))]
    assert parse_grounding("no boxes here") == []


def test_draw_boxes_paints_the_outline_only():
    image = Image.new("RGB", (100, 100), "white")
    out = draw_boxes(image, "<ref>x</ref><box>[[200, 200, 800, 800]]</box>")
    assert out.getpixel((20, 50)) != (255, 255, 255)  # left edge of the box
    assert out.getpixel((50, 50)) == (255, 255, 255)  # inside stays white
    assert image.getpixel((20, 50)) == (255, 255, 255)  # the original is untouched


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from minivl.quickstart import run_quickstart

    out = tmp_path_factory.mktemp("qs")
    run_quickstart(out, scale="smoke", progress=False)
    return out


def test_chat_and_eval_commands(trained, tmp_path, capsys):
    image = trained / "data" / "images" / "test" / "shape_qa" / "000000.png"
    assert cli.main(["chat", "--model", str(trained / "final"), "--image", str(image), "--max-new-tokens", "5",
                     "--no-stream", "--draw", str(tmp_path / "boxes.png"), "How many shapes are there?"]) == 0
    assert (tmp_path / "boxes.png").exists()
    assert cli.main(["eval", "--model", str(trained / "final"), "--data", str(trained / "data" / "test.json"),
                     "--task", "shape_qa", "--task", "reasoning", "--out", str(tmp_path / "ev")]) == 0
    res = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert "shape_qa" in json.dumps(res) and "reasoning" in json.dumps(res)
    preds = (tmp_path / "ev" / "predictions.jsonl").read_text().splitlines()
    assert len(preds) == 2 + 2  # 2 shape_qa items; the reasoning cot/direct pairs of 2 instances
    assert (tmp_path / "ev" / "results.md").exists()
    with pytest.raises(SystemExit):
        cli.main(["eval", "--model", str(trained / "final"), "--data", "x", "--bench", "nope"])
