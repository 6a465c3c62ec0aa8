"""The evaluation harness: prompts, extraction, per-metric scores, voting, result files, MiniVLRunner."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from minivl.eval.bench import (
    Generation,
    MiniVLRunner,
    build_item_prompt,
    evaluate,
    extract_item_answer,
    item_pixels,
    open_match,
    score_answer,
)
from minivl.eval.benchmarks import EvalItem
from minivl.eval.prompts import MC_COT_PROMPT, MC_DIRECT_PROMPT, OPEN_COT_PROMPT, OPEN_DIRECT_PROMPT

COLOURS = ["red", "blue", "green"]
GROUND_GOLD = "<ref>x</ref><box>[[100, 100, 500, 500]]</box>"  # (20, 10, 100, 50) px in a 200 x 100 image


def _items() -> list[EvalItem]:
    mc = [EvalItem(f"mc{i}", "mcq", "Which colour?", [g], "choice", kind="mc", options=COLOURS)
          for i, g in enumerate("BAC")]
    chart = [EvalItem(f"ch{i}", "chart", "How much?", ["10"], "relaxed") for i in range(2)]
    doc = [EvalItem("doc0", "doc", "Greeting?", ["hello world"], "anls")]
    ground = [EvalItem(f"g{i}", "ground", "Find x", [GROUND_GOLD], "iou@0.5", kind="grounding",
                       image_size=(200, 100)) for i in range(3)]
    open_ = [EvalItem("op0", "open", "When?", ["24/7", "3.429"], "open")]
    return mc + chart + doc + ground + open_


# greedy response and hand-computed score of each item
SCRIPT = {
    "mc0": ("B", 1.0), "mc1": ("Answer: \\boxed{C}", 0.0), "mc2": ("I don't know", 0.0),  # mc2 unparseable
    "ch0": ("10.4", 1.0), "ch1": ("11", 0.0),  # |10.4 - 10| <= 0.5; |11 - 10| > 0.5
    "doc0": ("hello wrld", 1 - 1 / 11),  # one edit over 11 characters
    "g0": ("<box>[[100, 100, 500, 600]]</box>", 1.0),  # IoU 3200 / 4000 = 0.8
    "g1": ("[[300, 100, 700, 500]]", 0.0),  # IoU 1600 / 4800 = 1/3
    "g2": ("no box", 0.0),  # unparseable
    "op0": ("3.43", 1.0),  # 3.429 rounds to 3.43
}


class ScriptedRunner:
    """Answers from a script: greedy calls give sample 0, sampled calls the rest."""

    def __init__(self, samples: dict[str, list[str]]):
        self.samples = samples
        self.calls: list[dict] = []

    def generate(self, items, prompts, *, do_sample, temperature, top_p, max_new_tokens, num_samples):
        self.calls.append(dict(ids=[i.id for i in items], prompts=list(prompts), do_sample=do_sample,
                               temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
                               num_samples=num_samples))
        out = []
        for item in items:
            texts = self.samples[item.id][:1] if not do_sample else self.samples[item.id][1:1 + num_samples]
            out.append([Generation(t, len(t.split()) + 1) for t in texts])
        return out


def test_prompts_add_placeholders_and_the_right_sentence():
    mc = EvalItem("a", "t", "Which colour?", ["B"], "choice", kind="mc", options=COLOURS)
    assert build_item_prompt(mc, "direct") == "Which colour?\nA. red\nB. blue\nC. green\n" + MC_DIRECT_PROMPT
    two = EvalItem("b", "t", "Which colour?", ["B"], "choice", kind="mc", options=COLOURS, images=["x.png", "y.png"])
    assert build_item_prompt(two, "cot") == ("Image-1: <image>\nImage-2: <image>\nWhich colour?\nA. red\nB. blue\n"
                                             "C. green\n" + MC_COT_PROMPT)
    video = EvalItem("c", "t", "Where?", ["up"], "exact", images=["f0", "f1", "f2"], video=True,
                     prompts={"direct": "Where?"})
    assert build_item_prompt(video, "direct") == "Frame-1: <image>\nFrame-2: <image>\nFrame-3: <image>\nWhere?"
    assert build_item_prompt(video, "cot") == ("Frame-1: <image>\nFrame-2: <image>\nFrame-3: <image>\nWhere?\n"
                                               + OPEN_COT_PROMPT)
    one = EvalItem("d", "t", "What?", ["x"], "anls", images=["p"])
    assert build_item_prompt(one) == "<image>\nWhat?\n" + OPEN_DIRECT_PROMPT
    ground = EvalItem("e", "t", "Please find <ref>it</ref>", [GROUND_GOLD], "iou@0.5", kind="grounding",
                      image_size=(10, 10), images=["p"])
    assert build_item_prompt(ground, "cot") == "<image>\nPlease find <ref>it</ref>"
    with pytest.raises(ValueError, match="mode"):
        build_item_prompt(one, "fast")


def test_item_validation_fails_loudly():
    with pytest.raises(ValueError, match="not one of the option letters"):
        EvalItem("a", "t", "q", ["D"], "choice", kind="mc", options=COLOURS)
    with pytest.raises(ValueError, match="unknown metric"):
        EvalItem("a", "t", "q", ["x"], "bleu")
    with pytest.raises(ValueError, match="image_size"):
        EvalItem("a", "t", "q", [GROUND_GOLD], "iou@0.5", kind="grounding")


def test_extraction_and_scores_per_metric():
    items = {i.id: i for i in _items()}
    for item_id, (response, expected) in SCRIPT.items():
        item = items[item_id]
        assert score_answer(item, extract_item_answer(item, response)) == pytest.approx(expected), item_id
    assert extract_item_answer(items["g0"], "<box>[[100, 100.5, 500, 600]]</box>") == "[[100, 100.5, 500, 600]]"
    assert extract_item_answer(items["mc1"], "Answer: \\boxed{C}") == "C"
    assert extract_item_answer(items["ch0"], "The answer is 10.4.") == "the answer is 10.4"  # whole response
    assert open_match("3.14159", ["3.14"]) == 1.0 and open_match("3.15", ["3.14"]) == 0.0
    assert open_match("24/7", ["24/7", "3.429"]) == 1.0 and open_match(None, ["x"]) == 0.0


def test_evaluate_direct_scores_every_metric_by_hand(tmp_path):
    items = _items()
    runner = ScriptedRunner({i: [r] for i, (r, _) in SCRIPT.items()})
    res = evaluate(runner, items, batch_size=4, out_dir=tmp_path, progress=False)
    tasks = res["tasks"]
    assert tasks["mcq"]["score"] == pytest.approx(1 / 3) and tasks["mcq"]["unparseable"] == 1
    assert tasks["chart"]["score"] == pytest.approx(0.5) and tasks["chart"]["unparseable"] == 0
    assert tasks["doc"]["score"] == pytest.approx(10 / 11)
    assert tasks["ground"]["score"] == pytest.approx(1 / 3) and tasks["ground"]["unparseable"] == 1
    assert tasks["open"]["score"] == 1.0
    task_means = [1 / 3, 0.5, 10 / 11, 1 / 3, 1.0]
    assert res["overall"]["score"] == pytest.approx(sum(task_means) / 5)
    assert res["overall"]["micro_score"] == pytest.approx(sum(s for _, s in SCRIPT.values()) / 10)
    assert res["overall"]["unparseable"] == 2 and res["overall"]["n"] == 10
    assert res["overall"]["tokens"] == sum(len(r.split()) + 1 for r, _ in SCRIPT.values())
    # batches of 4, greedy only, direct budget = the items' default 64
    assert [len(c["ids"]) for c in runner.calls] == [4, 4, 2]
    assert all(not c["do_sample"] and c["num_samples"] == 1 and c["max_new_tokens"] == 64 for c in runner.calls)
    assert runner.calls[0]["prompts"][0] == build_item_prompt(items[0], "direct")
    # files
    lines = (tmp_path / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == 10
    row = json.loads(lines[1])
    assert row["id"] == "mc1" and row["answer"] == "C" and row["score"] == 0.0 and row["gold"] == ["A"]
    saved = json.loads((tmp_path / "results.json").read_text())
    assert "predictions" not in saved and saved["tasks"]["mcq"]["n"] == 3
    assert "| mcq | 3 | 33.3 | 1 |" in (tmp_path / "results.md").read_text()


def test_evaluate_majority_vote_k3():
    mc = [EvalItem(f"v{i}", "mcq", "Which colour?", [g], "choice", kind="mc", options=COLOURS)
          for i, g in enumerate("BACB")]
    samples = {
        "v0": ["A", "B", "B"],  # greedy wrong, vote right (2 of 3)
        "v1": ["A", "C", "B"],  # three-way tie: the greedy A wins, right
        "v2": ["??", "hmm", "C"],  # one parsed sample decides, right
        "v3": ["??", "??", "??"],  # nothing parses: unparseable, wrong
    }
    runner = ScriptedRunner(samples)
    res = evaluate(runner, mc, mode="cot", k=3, temperature=0.7, top_p=0.9, batch_size=8, progress=False)
    preds = {p["id"]: p for p in res["predictions"]}
    assert [preds[i]["answer"] for i in ("v0", "v1", "v2", "v3")] == ["B", "A", "C", None]
    assert preds["v1"]["tie"] and not preds["v0"]["tie"] and preds["v0"]["votes"] == 2
    task = res["tasks"]["mcq"]
    assert task["score"] == pytest.approx(3 / 4) and task["unparseable"] == 1
    assert task["greedy_score"] == pytest.approx(1 / 4)  # only v1's greedy A is right
    assert task["pass_at_k"] == pytest.approx(3 / 4)
    assert res["overall"]["greedy_score"] == pytest.approx(1 / 4)
    assert task["tokens"] == 12 * 2  # every response is one word + 1 stop token
    # one greedy call and one sampled call for the other k - 1 = 2, with the CoT budget
    greedy, sampled = runner.calls
    assert (greedy["do_sample"], greedy["num_samples"]) == (False, 1)
    assert (sampled["do_sample"], sampled["num_samples"], sampled["temperature"], sampled["top_p"]) == (True, 2, 0.7, 0.9)
    assert greedy["max_new_tokens"] == 1024 and greedy["prompts"][0].endswith(MC_COT_PROMPT)
    assert res["settings"] == {"mode": "cot", "k": 3, "temperature": 0.7, "top_p": 0.9, "n_items": 4}
    with pytest.raises(ValueError, match="temperature"):
        evaluate(runner, mc, k=3, temperature=0.0, progress=False)


def test_evaluate_rejects_a_runner_with_the_wrong_number_of_samples():
    class Bad:
        def generate(self, items, prompts, **kwargs):
            return [[Generation("A", 1)] * 2 for _ in items]

    with pytest.raises(ValueError, match="expected 1"):
        evaluate(Bad(), _items()[:1], progress=False)


def test_item_pixels_tiles_each_image_and_upscales_the_first():
    # 28 x 14 at 14 px tiles: grid 2x1 (area 392 is not > 0.5 * 14^2 * 8, no move to 4x2): 2 tiles + thumbnail
    # upscaled 2x to 56 x 28: area 1568 > 784, the tie moves to the 4x2 grid: 8 tiles + thumbnail
    image = Image.new("RGB", (28, 14), "white")
    plain = EvalItem("a", "t", "q", ["x"], "exact", images=[image, image], tiles_per_image=[12, 12], max_num=12)
    assert item_pixels(plain, 14)[1] == [3, 3]
    up = EvalItem("a", "t", "q", ["x"], "exact", images=[image, image], tiles_per_image=[12, 12], max_num=12,
                  upscale_first=True)
    pv, patches = item_pixels(up, 14)
    assert patches == [9, 3] and pv.shape == (12, 3, 14, 14)
    capped = EvalItem("a", "t", "q", ["x"], "exact", images=[image], max_num=12, upscale_first=True)
    assert item_pixels(capped, 14, max_num=1)[1] == [1]


@pytest.fixture(scope="module")
def tiny():
    from tests._tiny_model import tiny_model_and_tokenizer

    return tiny_model_and_tokenizer()


def test_minivl_runner_matches_batch_chat_and_counts_tokens(tiny):
    model, tok = tiny
    red, wide = Image.new("RGB", (112, 112), "red"), Image.new("RGB", (224, 112), "blue")
    items = [EvalItem("a", "t", "What colour is it?", ["red"], "exact", images=[red], max_num=6),
             EvalItem("b", "t", "Compare.", ["same"], "exact", images=[red, wide], max_num=6)]
    prompts = [build_item_prompt(i) for i in items]
    runner = MiniVLRunner(model, tok)
    out = runner.generate(items, prompts, do_sample=False, temperature=0.0, top_p=1.0, max_new_tokens=6,
                          num_samples=1)
    pv_a, n_a = item_pixels(items[0], 112)
    pv_b, n_b = item_pixels(items[1], 112)
    assert n_a == [1] and n_b == [1, 3]  # 224 x 112 -> 2 tiles + thumbnail
    expected = model.batch_chat(tok, torch.cat([pv_a, pv_b]), prompts, {"max_new_tokens": 6, "do_sample": False},
                                num_patches_list=n_a + n_b, image_counts=[1, 2])
    assert [g[0].text for g in out] == expected
    # token counts: generated ids up to and including <|im_end|>, or all of them
    stop = tok.convert_tokens_to_ids("<|im_end|>")
    single = model.generate(pixel_values=pv_a, input_ids=tok(model.expand_image_placeholders(
        model.build_chat_prompt(prompts[0]), n_a), return_tensors="pt", add_special_tokens=False)["input_ids"],
        max_new_tokens=6, do_sample=False, eos_token_id=stop, pad_token_id=tok.pad_token_id)[0].tolist()
    assert out[0][0].num_tokens == (single.index(stop) + 1 if stop in single else len(single))
    torch.manual_seed(0)
    sampled = runner.generate(items, prompts, do_sample=True, temperature=1.0, top_p=1.0, max_new_tokens=4,
                              num_samples=3)
    assert [len(s) for s in sampled] == [3, 3]
    assert all(1 <= g.num_tokens <= 4 for s in sampled for g in s)
    with pytest.raises(ValueError, match="placeholders"):
        runner.generate(items[:1], ["no placeholder"], do_sample=False, temperature=0.0, top_p=1.0,
                        max_new_tokens=2, num_samples=1)
