"""`minivl chat` / `minivl eval` back-ends and grounding boxes drawn on images."""

from __future__ import annotations

import io
import json

import pytest
import torch
from PIL import Image

from minivl.eval.inference import (
    BOX_COLOURS,
    chat_command,
    draw_boxes,
    eval_command,
    parse_grounding,
    to_pixels,
)

WHITE = (255, 255, 255)
TWO_REFS = ("<ref>cat</ref><box>[[200, 200, 800, 800]]</box> and "
            "<ref>dog</ref><box>[[0, 500, 500, 1000], [600, 100, 900, 300]]</box>")


def test_parse_grounding_reads_every_ref_and_box():
    assert parse_grounding(TWO_REFS) == [("cat", [200.0, 200.0, 800.0, 800.0]), ("dog", [0.0, 500.0, 500.0, 1000.0]),
                                         ("dog", [600.0, 100.0, 900.0, 300.0])]
    assert parse_grounding("<box>[[1, 2, 3, 4]]</box>") == [("", [1.0, 2.0, 3.0, 4.0])]
    assert parse_grounding("the box is [[10, 20, 30.5, 40]]") == [("", [10.0, 20.0, 30.5, 40.0])]
    assert parse_grounding("no boxes") == []
    assert to_pixels([100, 200, 500, 1000], 200, 100) == (20.0, 20.0, 100.0, 100.0)


def test_draw_boxes_outlines_labels_and_colours():
    image = Image.new("RGB", (100, 100), "white")
    out = draw_boxes(image, TWO_REFS)
    cat, dog = BOX_COLOURS[0], BOX_COLOURS[1]
    assert out.getpixel((20, 70)) == cat and out.getpixel((80, 50)) == cat  # left and right edges of (20, 20, 80, 80)
    assert out.getpixel((65, 60)) == WHITE  # inside is not filled
    assert out.getpixel((75, 30)) == dog and out.getpixel((60, 20)) == dog  # second dog box (60, 10, 90, 30)
    assert out.getpixel((0, 75)) == dog  # first dog box, clamped to the image (0, 50, 50, 99)
    assert any(out.getpixel((x, 12)) == cat for x in range(20, 30))  # the "cat" tag above the box
    assert image.getpixel((20, 70)) == WHITE  # the input is untouched
    # reversed corners draw the same box; no label, no tag
    assert draw_boxes(image, "<box>[[800, 800, 200, 200]]</box>").tobytes() == \
        draw_boxes(image, "<box>[[200, 200, 800, 800]]</box>").tobytes()
    plain = draw_boxes(image, "<box>[[200, 200, 800, 800]]</box>")
    assert all(plain.getpixel((x, 12)) == WHITE for x in range(20, 30))
    assert draw_boxes(Image.new("L", (10, 10)), "nothing").mode == "RGB"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tests._tiny_model import tiny_model_and_tokenizer

    model, tok = tiny_model_and_tokenizer()
    folder = tmp_path_factory.mktemp("ckpt")
    model.save_pretrained(folder, tokenizer=tok)
    images = []
    for name, size, colour in (("a.png", (112, 112), "red"), ("b.png", (224, 112), "blue")):
        Image.new("RGB", size, colour).save(folder / name)
        images.append(folder / name)
    return model.eval(), tok, folder, images


def test_chat_command_single_multi_image_and_streaming(tiny):
    from minivl.vision.transforms import load_image_tiles

    model, tok, folder, (a, b) = tiny
    config = {"max_new_tokens": 5, "do_sample": False}
    buf = io.StringIO()
    (answer,) = chat_command(None, [a], "What colour?", max_num=6, stream=True, max_new_tokens=5, out=buf,
                             model=model, tokenizer=tok)
    pv, _ = load_image_tiles(a, image_size=112, max_num=6)
    assert answer == model.chat(tok, pv, "What colour?", config)
    assert buf.getvalue().strip() == answer  # the streamed text is the answer
    # two images: Image-k lines, each image tiled on its own (b: 2 tiles + thumbnail)
    buf = io.StringIO()
    (answer,) = chat_command(None, [a, b], "Same colour?", stream=False, max_new_tokens=5, out=buf, model=model,
                             tokenizer=tok)
    pv_b, n_b = load_image_tiles(b, image_size=112, max_num=12)
    assert n_b == [3]
    expected = model.chat(tok, torch.cat([pv, pv_b]), "Image-1: <image>\nImage-2: <image>\nSame colour?", config,
                          num_patches_list=[1, 3])
    assert answer == expected and buf.getvalue() == answer + "\n"
    # loading the checkpoint directory gives the same answer
    assert chat_command(folder, [a], "What colour?", max_num=6, stream=False, max_new_tokens=5,
                        out=io.StringIO()) == [model.chat(tok, pv, "What colour?", config)]


def test_chat_command_multi_turn_and_draw(tiny, tmp_path):
    model, tok, _, (a, _) = tiny
    buf = io.StringIO()
    answers = chat_command(None, [a], None, max_num=6, stream=False, max_new_tokens=4, out=buf, model=model,
                           tokenizer=tok, questions=["first?", "  ", "second?"], draw=tmp_path / "boxes.png")
    assert len(answers) == 2  # the blank line is skipped
    from minivl.vision.transforms import load_image_tiles

    pv, _ = load_image_tiles(a, image_size=112, max_num=6)
    config = {"max_new_tokens": 4, "do_sample": False}
    first, history = model.chat(tok, pv, "<image>\nfirst?", config, return_history=True)
    second = model.chat(tok, pv, "second?", config, history=history)
    assert answers == [first, second]
    assert buf.getvalue().splitlines()[:2] == answers
    assert Image.open(tmp_path / "boxes.png").size == (112, 112)
    with pytest.raises(ValueError, match="draw"):
        chat_command(None, [], "hi", stream=False, max_new_tokens=2, out=io.StringIO(), model=model, tokenizer=tok,
                     draw=tmp_path / "x.png")


def test_eval_command_on_the_synthetic_suite(tiny, tmp_path):
    from minivl.data.synthetic.suite import generate_suite
    from minivl.eval.bench import score_answer
    from minivl.eval.benchmarks import load_synthetic_bench

    model, tok, folder, _ = tiny
    generate_suite(tmp_path / "synth", scale="smoke", splits=("test",), tasks=("shape_qa", "grounding", "reasoning"))
    meta = tmp_path / "synth" / "test.json"
    buf = io.StringIO()
    res = eval_command(folder, "synthetic", meta, mode="cot", k=2, out=tmp_path / "ev", limit=1, batch_size=2,
                       max_new_tokens=4, progress=False, stdout=buf)
    items = {i.id: i for i in load_synthetic_bench(meta, per_task=1)}
    preds = res["predictions"]
    assert [p["id"] for p in preds] == list(items) and len(preds) == 3
    for p in preds:
        assert len(p["responses"]) == 2 and p["score"] == score_answer(items[p["id"]], p["answer"])
        assert 2 <= p["tokens"] <= 8  # two responses of 1..4 tokens
    for task in ("shape_qa", "grounding", "reasoning"):
        rows = [p for p in preds if p["task"] == task]
        assert res["tasks"][task]["score"] == pytest.approx(sum(p["score"] for p in rows))
        assert res["tasks"][task]["unparseable"] == sum(not p["parsed"] for p in rows)
    assert "| shape_qa | 1 |" in buf.getvalue() and "mode=cot k=2" in buf.getvalue()
    saved = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert saved["settings"]["k"] == 2 and saved["overall"]["n"] == 3
    assert len((tmp_path / "ev" / "predictions.jsonl").read_text().splitlines()) == 3
