"""Scoring on the synthetic suite: each metric on hand-made answers, and the whole loop."""

from __future__ import annotations

import json

import pytest

from minivl.data.records import Record, parse_record
from minivl.eval.suite import evaluate_suite, majority_baseline, scene_question_group, score_answer


def rec(answer, meta=None, kind_image=True):
    obj = {"image": "x.png", "conversations": [{"from": "human", "value": "<image>\nq"},
                                                {"from": "gpt", "value": answer}]}
    if meta is not None:
        obj["meta"] = meta
    return parse_record(obj)


def test_exact_relaxed_iou_and_choice():
    assert score_answer("shape_qa", " Red. ", rec("red")) == (1.0, True)
    assert score_answer("shape_qa", "blue", rec("red")) == (0.0, True)
    assert score_answer("chart", "10.4", rec("10")) == (1.0, True)  # within 5 %
    assert score_answer("chart", "10.6", rec("10")) == (0.0, True)
    g = rec("<ref>the circle</ref><box>[[0, 0, 500, 500]]</box>", {"width": 100, "height": 200})
    # gold box (0, 0, 50, 100) px; prediction (0, 0, 50, 50) px: IoU 0.5 -> a hit
    assert score_answer("grounding", "[[0, 0, 500, 250]]", g) == (1.0, True)
    # (0, 0, 40, 50): IoU 2000 / 5000 = 0.4 -> a miss
    assert score_answer("grounding", "<box>[[0, 0, 400, 250]]</box>", g) == (0.0, True)
    assert score_answer("grounding", "no idea", g) == (0.0, False)
    mc = rec("Answer: \\boxed{B}", {"options": ["1", "2", "0", "4"], "answer_letter": "B"})
    assert score_answer("reasoning", "so...\nAnswer: \\boxed{B}", mc) == (1.0, True)
    assert score_answer("reasoning", "C", mc) == (0.0, True)
    assert score_answer("reasoning", "I am not sure", mc) == (0.0, False)


class Oracle:
    """Stands in for a model: answers every batch_chat question with the gold answer, except
    one wrong answer per batch."""

    def __init__(self, records_by_question):
        self.gold = records_by_question
        self.training = False
        self.config = type("C", (), {"vision": type("V", (), {"image_size": 112})()})()

    def eval(self):
        return self

    def train(self, mode=True):
        return self

    def batch_chat(self, tokenizer, pixel_values, questions, generation_config, num_patches_list, image_counts):
        assert sum(num_patches_list) == pixel_values.shape[0] and len(image_counts) == len(questions)
        answers = [self.gold[q] for q in questions]
        answers[0] = "wrong"
        return answers


def test_evaluate_suite_counts_every_record(tmp_path):
    from minivl.data.records import read_meta
    from minivl.data.synthetic import generate_suite

    meta = generate_suite(tmp_path, scale="smoke", seed=0)["meta"]["test"]
    gold = {}
    for task in ("shape_qa", "video", "multi_image"):
        for r in read_meta(meta)[task].read_records()[0]:
            q = r.conversations[0]["value"]
            if r.kind == "video":
                from minivl.text.prompt import video_frame_prefix

                frames = len(r.extra["meta"]["boxes"])
                q = q.replace("<video>", video_frame_prefix(frames), 1)
            gold[q] = r.conversations[-1]["value"]
    out = evaluate_suite(Oracle(gold), None, meta, tasks=["shape_qa", "video", "multi_image"], batch_size=2,
                         details=True)
    # smoke test splits hold 2 records per task; batches of 2 -> one wrong answer per task
    for task in ("shape_qa", "video", "multi_image"):
        assert out["tasks"][task].n == 2 and out[task] == pytest.approx(0.5)
    assert out["all"] == pytest.approx(0.5)
    # shape_qa per question type: the first record (answered wrong) scores 0 in its type
    records = read_meta(meta)["shape_qa"].read_records()[0]
    types = [r.extra["meta"]["question_type"] for r in records]
    by_type = out["tasks"]["shape_qa"].by_type
    assert sum(n for _, n in by_type.values()) == 2
    assert by_type[types[0]][0] == pytest.approx(0.0 if types[0] != types[1] else 0.5)
    assert sum(n for _, n in out["tasks"]["video"].by_type.values()) == 2  # video names its types too
    assert out["tasks"]["shape_qa"].by_group == {}  # no group_by asked for
    # grouped by (question type, number of shapes): the wrong first record scores 0 in its group;
    # video records have no shapes in their meta, so scene_question_group leaves them out
    grouped = evaluate_suite(Oracle(gold), None, meta, tasks=["shape_qa", "video"], batch_size=2, details=True,
                             group_by=scene_question_group)["tasks"]
    keys = [(r.extra["meta"]["question_type"], len(r.extra["meta"]["shapes"])) for r in records]
    assert grouped["shape_qa"].by_group[keys[0]] == pytest.approx((0.0 if keys[0] != keys[1] else 0.5, 1 + (keys[0] == keys[1])))
    assert grouped["shape_qa"].by_group[keys[1]][0] == pytest.approx(1.0 if keys[0] != keys[1] else 0.5)
    assert grouped["video"].by_group == {}
    # keys that do not sort together (a str and a tuple) are kept in first-seen order
    mixed = evaluate_suite(Oracle(gold), None, meta, tasks=["shape_qa"], batch_size=2, details=True,
                           group_by=lambda r: "first" if r is records[0] or r.id == records[0].id else (1, 2))
    assert list(mixed["tasks"]["shape_qa"].by_group) == ["first", (1, 2)]
    with pytest.raises(KeyError, match="cannot score tasks \\['caption'\\]"):
        evaluate_suite(Oracle(gold), None, meta, tasks=["caption"])
    base = majority_baseline(meta, tasks=["shape_qa"])
    assert 0 < base["shape_qa"] <= 1


def _colour_question(kind: str, shapes: list[tuple[str, str]], qtype: str = "colour"):
    meta = {"question_type": qtype, "shapes": [{"kind": k, "colour": c} for k, c in shapes]}
    return Record(conversations=[{"from": "human", "value": f"<image>\nWhat colour is the {kind}?"},
                                 {"from": "gpt", "value": dict(shapes)[kind]}],
                  kind="image", images=["x.png"], extra={"meta": meta})


def test_colour_binding_group_says_whether_another_shape_shares_the_answer():
    from minivl.eval.suite import colour_binding_group

    # the circle is red; a blue square: no other red shape
    assert colour_binding_group(_colour_question("circle", [("circle", "red"), ("square", "blue")])) == (2, "unique")
    # a red triangle shares the circle's colour
    shared = [("circle", "red"), ("square", "blue"), ("triangle", "red")]
    assert colour_binding_group(_colour_question("circle", shared)) == (3, "shared")
    # the question's kind, not the first shape, is the one looked at
    assert colour_binding_group(_colour_question("square", shared)) == (3, "unique")
    assert colour_binding_group(_colour_question("circle", [("circle", "green")])) == (1, "unique")
    # not a colour question, or no shapes: left out
    assert colour_binding_group(_colour_question("circle", shared, qtype="count")) is None
    assert colour_binding_group(Record(conversations=[{"from": "human", "value": "hi"}, {"from": "gpt", "value": "x"}])) is None


def _count_question(question: str, answer: int):
    meta = {"question_type": "count", "answer": str(answer), "shapes": [{"kind": "circle", "colour": "red"}]}
    return Record(conversations=[{"from": "human", "value": f"<image>\n{question}"}, {"from": "gpt", "value": str(answer)}],
                  kind="image", images=["x.png"], extra={"meta": meta})


def test_count_question_group_names_what_is_counted():
    from minivl.eval.suite import count_question_group

    assert count_question_group(_count_question("How many shapes are there?", 4)) == ("all", 4)
    assert count_question_group(_count_question("How many red shapes are there?", 0)) == ("colour", 0)
    assert count_question_group(_count_question("How many squares are there?", 2)) == ("kind", 2)
    # a word that is no colour of the suite before "shapes", or no count question: left out
    assert count_question_group(_count_question("How many odd shapes are there?", 1)) is None
    assert count_question_group(_colour_question("circle", [("circle", "red")])) is None


def test_commonest_colour_rule_splits_ties(tmp_path):
    from minivl.eval.suite import commonest_colour_rule

    lines = []
    for kind, shapes in (("circle", [("circle", "red"), ("square", "red"), ("triangle", "blue")]),  # red: right
                         ("triangle", [("circle", "red"), ("square", "red"), ("triangle", "blue")]),  # red: wrong
                         ("square", [("circle", "green"), ("square", "blue")])):  # tie: half right
        record = _colour_question(kind, shapes)
        record.extra["meta"]["answer"] = dict(shapes)[kind]
        lines.append(json.dumps({"image": "x.png", "conversations": record.conversations, "meta": record.extra["meta"]}))
    lines.append(json.dumps({"image": "x.png", "conversations": record.conversations,
                             "meta": {"question_type": "count", "answer": "2", "shapes": []}}))  # not a colour question
    (tmp_path / "qa.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "meta.json").write_text(json.dumps({"shape_qa": {"root": ".", "annotation": "qa.jsonl", "length": 4}}))
    assert commonest_colour_rule(tmp_path / "meta.json") == (pytest.approx(0.5), 3)


def test_format_grouped_lays_out_rows_columns_and_empty_cells():
    from minivl.eval.suite import format_grouped

    by_group = {("a", 1): (0.5, 4), ("b", 2): (1.0, 12), (2, "a"): (0.25, 8)}
    lines = format_grouped(by_group, [("a", "row a"), ("b", "row b")], [1, 2], "what / n").splitlines()
    assert lines == ["what / n  " + " " * 10 + "1" + " " * 10 + "2",
                     "row a     " + "   50% ( 4)" + " " * 10 + "-",
                     "row b     " + " " * 10 + "-" + "  100% (12)"]
    assert len({len(line) for line in lines}) == 1  # header and cells line up
    swapped = format_grouped(by_group, [("a", "row a")], [2], "t", key=lambda row, n: (n, row)).splitlines()
    assert swapped[1].split() == ["row", "a", "25%", "(", "8)"]


def test_option_rank_rule_picks_by_value_not_by_letter(tmp_path):
    from minivl.eval.suite import option_rank_rule

    rows = [(["5", "3", "4", "6"], "C"),    # sorted 3 < 4 < 5 < 6: the second smallest is C (4): right
            (["12", "9", "10", "8"], "B"),  # 8 < 9 < 10 < 12: the second smallest is B (9): right
            (["0", "1", "2", "3"], "A"),    # second smallest is B: wrong
            (["2", "7", "x", "1"], "A")]    # not numeric: left out
    lines = [json.dumps({"image": "x.png", "conversations": [{"from": "human", "value": "<image>\nQ?"},
                                                              {"from": "gpt", "value": letter}],
                         "meta": {"options": options, "answer_letter": letter}}) for options, letter in rows]
    (tmp_path / "r.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "meta.json").write_text(json.dumps({"reasoning": {"root": ".", "annotation": "r.jsonl", "length": 4}}))
    assert option_rank_rule(tmp_path / "meta.json") == (pytest.approx(2 / 3), 3)
    assert option_rank_rule(tmp_path / "meta.json", rank=0) == (pytest.approx(1 / 3), 3)  # the smallest: row 3 only
    assert option_rank_rule(tmp_path / "meta.json", rank=3) == (0.0, 3)
    with pytest.raises(ValueError, match="rank must be"):
        option_rank_rule(tmp_path / "meta.json", rank=-1)
    with pytest.raises(ValueError, match="numeric options"):
        option_rank_rule(tmp_path / "meta.json", rank=4)


def test_option_rank_rule_on_a_generated_split_beats_a_guess(tmp_path):
    """The suite's distractors sit within 3 of the answer: measured on generated problems, the
    second-smallest option is right far more often than a quarter of the time."""
    import random

    from minivl.data.synthetic.reasoning import LETTERS, text_problem
    from minivl.eval.suite import option_rank_rule

    rng = random.Random(0)
    lines = []
    for _ in range(400):
        _, _, _, options, correct = text_problem(rng)
        lines.append(json.dumps({"image": "x.png", "conversations": [{"from": "human", "value": "<image>\nQ?"},
                                                                      {"from": "gpt", "value": LETTERS[correct]}],
                                 "meta": {"options": [str(v) for v in options], "answer_letter": LETTERS[correct]}}))
    (tmp_path / "r.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "meta.json").write_text(json.dumps({"reasoning": {"root": ".", "annotation": "r.jsonl", "length": 400}}))
    shares = [option_rank_rule(tmp_path / "meta.json", rank=r)[0] for r in range(4)]
    assert sum(shares) == pytest.approx(1.0)  # every record has exactly one right rank
    assert shares[1] > 0.4 and shares[3] < 0.1


def _multi_turn_meta(tmp_path, name="train", images=True):
    """Two three-turn shape_qa records (per-turn scene meta, as the suite's training split
    writes them) and one single-turn record; distinct questions, so an oracle can answer."""
    from PIL import Image

    qas = [[("How many circles are there?", "2", "count"), ("What colour is the square?", "red", "colour"),
            ("Where is the square?", "left", "position")],
           [("How many shapes are there?", "3", "count"), ("What colour is the triangle?", "blue", "colour"),
            ("How many red shapes are there?", "0", "count")],
           [("Where is the diamond?", "top", "position")]]
    lines = []
    for i, turns in enumerate(qas):
        if images:
            Image.new("RGB", (112, 112), (200, 200, 200)).save(tmp_path / f"{i}.png")
        conversations = []
        for j, (q, a, _) in enumerate(turns):
            conversations += [{"from": "human", "value": ("<image>\n" if j == 0 else "") + q}, {"from": "gpt", "value": a}]
        meta = {"question_type": turns[0][2], "answer": turns[0][1], "shapes": [{"kind": "square", "colour": "red"}],
                "turns": [{"question_type": t, "question": q, "answer": a} for q, a, t in turns]}
        lines.append(json.dumps({"id": f"shape_qa-{name}-{i:06d}", "image": f"{i}.png", "conversations": conversations,
                                 "meta": meta}))
    (tmp_path / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / f"{name}.json").write_text(json.dumps(
        {"shape_qa": {"root": ".", "annotation": f"{name}.jsonl", "length": 3, "max_dynamic_patch": 1}}))
    return tmp_path / f"{name}.json", qas


def test_single_turns_splits_a_conversation_into_its_questions():
    from minivl.eval.suite import single_turns

    record = parse_record({"id": "shape_qa-train-000007", "image": "x.png", "conversations": [
        {"from": "system", "value": "be brief"},
        {"from": "human", "value": "<image>\nHow many circles are there?"}, {"from": "gpt", "value": "2"},
        {"from": "human", "value": "What colour is the square?"}, {"from": "gpt", "value": "red"}],
        "meta": {"question_type": "count", "answer": "2", "shapes": [],
                 "turns": [{"question_type": "count", "answer": "2"}, {"question_type": "colour", "answer": "red"}]}})
    first, second = single_turns(record)
    assert [t["value"] for t in first.turns] == ["<image>\nHow many circles are there?", "2"]
    assert [t["value"] for t in second.turns] == ["<image>\nWhat colour is the square?", "red"]
    assert first.system == second.system == "be brief"
    assert (first.id, second.id) == ("shape_qa-train-000007#0", "shape_qa-train-000007#1")
    assert second.extra["meta"]["question_type"] == "colour" and second.extra["meta"]["answer"] == "red"
    assert second.extra["meta"]["shapes"] == [] and record.extra["meta"]["question_type"] == "count"  # a copy
    assert single_turns(first) == [first]  # a single-turn record stays as it is
    # without one meta entry per turn, the record-level meta is kept
    record.extra["meta"]["turns"] = record.extra["meta"]["turns"][:1]
    assert single_turns(record)[1].extra["meta"]["question_type"] == "count"


def test_evaluate_suite_asks_every_question_of_a_multi_turn_record(tmp_path):
    from minivl.eval.suite import commonest_colour_rule

    meta, qas = _multi_turn_meta(tmp_path)
    gold = {f"<image>\n{q}": a for turns in qas for q, a, _ in turns}
    out = evaluate_suite(Oracle(gold), None, meta, tasks=["shape_qa"], batch_size=4, details=True)["tasks"]["shape_qa"]
    # 7 questions in batches of 4 and 3, the first answer of each batch wrong: 5 / 7 (asking
    # the first question and scoring it against the last answer gave 1 / 3)
    assert out.n == 7 and out.score == pytest.approx(5 / 7)
    # wrong: rec 0's count question (batch 1) and rec 1's colour question (batch 2)
    assert out.by_type == {"colour": (0.5, 2), "count": (pytest.approx(2 / 3), 3), "position": (1.0, 2)}
    assert evaluate_suite(Oracle(gold), None, meta, tasks=["shape_qa"], per_task=2)["shape_qa"] == pytest.approx(0.5)
    # both colour questions (turn 2 of each record) are seen; the only shape is red
    assert commonest_colour_rule(meta) == (pytest.approx(0.5), 2)


def test_majority_baseline_counts_every_turn_and_scores_the_other_split(tmp_path):
    train, _ = _multi_turn_meta(tmp_path, images=False)
    # answers 2, red, left, 3, blue, 0, top: all once; add a record answering "red" twice
    extra = {"id": "shape_qa-train-000009", "image": "9.png", "meta": {},
             "conversations": [{"from": "human", "value": "<image>\nWhat colour is the circle?"}, {"from": "gpt", "value": "red"},
                               {"from": "human", "value": "What colour is the square?"}, {"from": "gpt", "value": "Red"}]}
    with open(tmp_path / "train.jsonl", "a") as f:
        f.write(json.dumps(extra) + "\n")
    # "red" twice among 9 answers ("Red" is another string in the count, the same answer when scored)
    assert majority_baseline(train) == {"shape_qa": pytest.approx(2 / 9)}
    lines = [json.dumps({"image": "x.png", "conversations": [{"from": "human", "value": "<image>\nq"},
                                                             {"from": "gpt", "value": a}]}) for a in ("Red", "blue", "red.", "0")]
    (tmp_path / "test.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "test.json").write_text(json.dumps({"shape_qa": {"root": ".", "annotation": "test.jsonl", "length": 4}}))
    assert majority_baseline(train, eval_meta=tmp_path / "test.json") == {"shape_qa": pytest.approx(2 / 4)}
    assert majority_baseline(tmp_path / "test.json") == {"shape_qa": pytest.approx(1 / 4)}
    with pytest.raises(KeyError, match="not in"):
        (tmp_path / "other.json").write_text(json.dumps({"video": {"root": ".", "annotation": "test.jsonl", "length": 4}}))
        majority_baseline(train, eval_meta=tmp_path / "other.json")


def test_option_set_rule_learns_which_value_of_a_set_is_right(tmp_path):
    from minivl.eval.suite import option_set_rule

    def write(name, rows):
        lines = [json.dumps({"image": "x.png", "conversations": [{"from": "human", "value": "<image>\nq"},
                                                                 {"from": "gpt", "value": letter}],
                             "meta": {"options": options, "answer_letter": letter}}) for options, letter in rows]
        (tmp_path / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
        (tmp_path / f"{name}.json").write_text(json.dumps({"reasoning": {"root": ".", "annotation": f"{name}.jsonl",
                                                                         "length": len(rows)}}))
        return tmp_path / f"{name}.json"

    # in training, the set {1, 2, 3, 5} had 3 right twice and 5 once; {0, 1, 2, 3} had 0 right
    train = write("train", [(["1", "2", "3", "5"], "C"), (["5", "3", "2", "1"], "B"), (["2", "5", "1", "3"], "B"),
                            (["0", "1", "2", "3"], "A"), (["x", "y", "z", "w"], "A")])  # not numeric: left out
    test = write("test", [(["3", "1", "5", "2"], "A"),   # seen set: 3 chosen, right
                          (["5", "1", "2", "3"], "A"),   # seen set: 3 chosen, 5 was right: wrong
                          (["3", "2", "1", "0"], "D"),   # seen set, letters shuffled: 0 chosen, right
                          (["7", "4", "6", "9"], "C")])  # unseen: the second smallest, 6, right
    assert option_set_rule(train, test) == (pytest.approx(3 / 4), 4)
    assert option_set_rule(train, test, fallback_rank=0) == (pytest.approx(2 / 4), 4)  # 4, wrong
    with pytest.raises(ValueError, match="no record"):
        option_set_rule(train, write("empty", [(["x", "y", "z", "w"], "A")]))
