"""`minivl chat` / `minivl eval` and grounding boxes drawn on images."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from minivl import cli
from minivl.chat import draw_boxes, parse_grounding


def test_parse_grounding_scales_0_1000_to_pixels():
    text = "<ref>the cat</ref><box>[[100, 200, 500, 1000]]</box> and <ref>dogs</ref><box>[[0, 0, 10, 10], [990, 990, 1000, 1000]]</box>"
    boxes = parse_grounding(text, width=200, height=100)
    assert boxes == [("the cat", (20.0, 20.0, 100.0, 100.0)), ("dogs", (0.0, 0.0, 2.0, 1.0)),
                     ("dogs", (198.0, 99.0, 200.0, 100.0))]
    assert parse_grounding("no boxes here", 10, 10) == []
    assert parse_grounding("[[0, 0, 500, 500]]", 10, 10) == [("", (0.0, 0.0, 5.0, 5.0))]


def test_draw_boxes_paints_the_outline_only():
    image = Image.new("RGB", (100, 100), "white")
    out = draw_boxes(image, "<ref>x</ref><box>[[200, 200, 800, 800]]</box>")
    assert out.getpixel((20, 50)) == (255, 0, 0)  # left edge of the box
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
    assert cli.main(["eval", "--model", str(trained / "final"), "--meta", str(trained / "data" / "test.json"),
                     "--task", "shape_qa", "--task", "reasoning", "--out", str(tmp_path / "ev")]) == 0
    res = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert set(res["tasks"]) == {"shape_qa", "reasoning"} and res["tasks"]["shape_qa"]["n"] == 2
    assert "| shape_qa | exact |" in (tmp_path / "ev" / "results.md").read_text()
    with pytest.raises(SystemExit, match="unknown benchmark"):
        cli.main(["eval", "--model", str(trained / "final"), "--meta", "x", "--bench", "mmmu"])
