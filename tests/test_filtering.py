"""Tests of minivl.data.filtering: each rule on hand-made records, ratios computed by hand."""

from __future__ import annotations

import math
import random

import pytest
import torch

from minivl.data.filtering import (
    FAULT_KINDS,
    ChatJudgeScorer,
    HeuristicFilter,
    HeuristicSettings,
    PerplexityScorer,
    QualityFilter,
    RepetitionFilter,
    calculate_ngram_repetition,
    duplicate_ngram_fraction,
    inject_faults,
    longest_char_run,
    longest_zero_run,
    parse_judge_score,
    plain_segments,
    quantile_threshold,
    rule_abnormal_length,
    rule_char_run,
    rule_empty_answer,
    rule_placeholder_mismatch,
    rule_repeated_lines,
    rule_unterminated,
    rule_zero_run,
    run_filters,
    score_filters,
    train_reference_lm,
)

S = HeuristicSettings()


def rec(answer: str | list[str], question: str = "What is shown?", rid: str = "r", **extra) -> dict:
    answers = [answer] if isinstance(answer, str) else answer
    turns = []
    for k, a in enumerate(answers):
        turns.append({"from": "human", "value": question if k == 0 else f"And then? ({k})"})
        turns.append({"from": "gpt", "value": a})
    return {"id": rid, "conversations": turns, **extra}


WORDS = [f"w{i}" for i in range(100)]


# ---------------------------------------------------------------------------------------------
# n-gram repetition
# ---------------------------------------------------------------------------------------------


def test_ratios_on_small_strings_by_hand():
    # "a b a b a b a b": 7 bigrams ab ba ab ba ab ba ab; 2 distinct, both repeated
    assert calculate_ngram_repetition("a b a b a b a b", 2) == pytest.approx(2 / 7)
    assert duplicate_ngram_fraction("a b a b a b a b", 2) == pytest.approx(1 - 2 / 7)
    # "a b c d a b c d": ab bc cd da ab bc cd -> ab, bc, cd repeated; 4 distinct of 7
    assert calculate_ngram_repetition("a b c d a b c d", 2) == pytest.approx(3 / 7)
    assert duplicate_ngram_fraction("a b c d a b c d", 2) == pytest.approx(3 / 7)
    # whitespace of any kind separates words
    assert calculate_ngram_repetition("a\nb  a\tb", 2) == pytest.approx(1 / 3)
    # fewer words than n: no n-gram, ratio 0
    assert calculate_ngram_repetition(" ".join(WORDS[:9]), 10) == 0.0
    assert duplicate_ngram_fraction("", 10) == 0.0
    assert calculate_ngram_repetition(" ".join(WORDS), 10) == 0.0


def test_internvl_ratio_on_10grams_and_its_blind_spot():
    passage = " ".join(WORDS[:30])
    # twice: 60 words, 51 10-grams; those starting at 0..20 recur 30 words later -> 21 / 51
    assert calculate_ngram_repetition(f"{passage} {passage}") == pytest.approx(21 / 51)
    # three times: 81 10-grams, only 30 distinct ones, all repeated -> 30 / 81, below 0.4
    assert calculate_ngram_repetition(" ".join([passage] * 3)) == pytest.approx(30 / 81)
    assert duplicate_ngram_fraction(" ".join([passage] * 3)) == pytest.approx(1 - 30 / 81)
    flt = RepetitionFilter()
    assert flt.check(rec(f"{passage} {passage}")).rule == "10-gram"
    assert flt.check(rec(" ".join([passage] * 3))) is None  # InternVL's rule misses the longer loop
    assert RepetitionFilter(mode="duplicate", threshold=0.5).check(rec(" ".join([passage] * 3))) is not None
    # a sentence of 8 words looping 8 times: 64 words, 55 10-grams, 8 distinct -> 8 / 55
    loop = " ".join(["the red circle is left of the square"] * 8)
    assert calculate_ngram_repetition(loop) == pytest.approx(8 / 55)
    assert duplicate_ngram_fraction(loop) == pytest.approx(47 / 55)


def test_threshold_is_strict_and_only_assistant_turns_count():
    passage = " ".join(WORDS[:27])
    text = f"{passage} {passage}"  # 54 words, 45 10-grams, 18 repeated: exactly 0.4
    assert calculate_ngram_repetition(text) == pytest.approx(0.4)
    assert RepetitionFilter().check(rec(text)) is None
    longer = " ".join(WORDS[:28])
    assert calculate_ngram_repetition(f"{longer} {longer}") == pytest.approx(19 / 47)
    assert RepetitionFilter().check(rec(f"{longer} {longer}")) is not None
    # repetition in the question is not the model's output: not flagged
    assert RepetitionFilter().check(rec("Fine.", question=f"{longer} {longer}")) is None
    # any assistant turn triggers the flag, and the detail names it
    flag = RepetitionFilter().check(rec(["Fine.", f"{longer} {longer}"]))
    assert flag is not None and "assistant turn 1" in flag.detail
    with pytest.raises(ValueError, match="mode"):
        RepetitionFilter(mode="chars")


# ---------------------------------------------------------------------------------------------
# heuristic rules
# ---------------------------------------------------------------------------------------------


def test_empty_answer():
    assert rule_empty_answer(rec(""), S) is not None
    assert rule_empty_answer(rec(" \n\t"), S) is not None
    assert rule_empty_answer(rec(["ok", ""]), S) is not None
    assert rule_empty_answer({"id": "q", "conversations": [{"from": "human", "value": "hi"}]}, S) == "no assistant turn"
    assert rule_empty_answer(rec("0"), S) is None


def test_placeholder_mismatch():
    # text-only: no placeholder allowed
    assert rule_placeholder_mismatch(rec("a", "describe"), S) is None
    assert rule_placeholder_mismatch(rec("a", "<image>\ndescribe"), S) == "1 <image> placeholders for 0 image(s)"
    # single image: 0 (implicitly prepended) or 1
    assert rule_placeholder_mismatch(rec("a", "describe", image="x.png"), S) is None
    assert rule_placeholder_mismatch(rec("a", "<image>\ndescribe", image="x.png"), S) is None
    assert rule_placeholder_mismatch(rec("a", "describe", image="x.png"),
                                     HeuristicSettings(implicit_single_placeholder=False)) is not None
    assert rule_placeholder_mismatch(rec("a", "<image><image>", image="x.png"), S) is not None
    # multi-image: exactly one per image, counted over all turns
    three = ["a.png", "b.png", "c.png"]
    q3 = "Image-1: <image>\nImage-2: <image>\nImage-3: <image>\nCompare."
    assert rule_placeholder_mismatch(rec("a", q3, image=three), S) is None
    assert rule_placeholder_mismatch(rec("a", q3, image=three[:2]), S) == "3 <image> placeholders for 2 image(s)"
    assert rule_placeholder_mismatch(rec("a", q3, image=three + ["d.png"]), S) is not None
    assert rule_placeholder_mismatch(rec("it is <image>", "<image>", image="x.png"), S) is not None
    # video: one <video>, no <image>
    assert rule_placeholder_mismatch(rec("a", "<video>\nWhat moves?", video="v/"), S) is None
    assert rule_placeholder_mismatch(rec("a", "What moves?", video="v/"), S) is None
    assert rule_placeholder_mismatch(rec("a", "<video><video>", video="v/"), S) is not None
    assert rule_placeholder_mismatch(rec("a", "<image>\n<video>", video="v/"), S) is not None
    assert rule_placeholder_mismatch(rec("a", "<video>\nWhat moves?"), S) is not None


def test_abnormal_length():
    assert rule_abnormal_length(rec(" ".join(["word"] * 1500) + "."), HeuristicSettings(max_sentence_words=10**6)) \
        is None
    assert "1501 words" in rule_abnormal_length(rec(" ".join(["word"] * 1501)),
                                                HeuristicSettings(max_sentence_words=10**6))
    # sentences split at . ! ? and newlines: two sentences of 100 words pass, one of 121 does not
    two = " ".join(["a"] * 99) + ". " + " ".join(["b"] * 100)
    assert rule_abnormal_length(rec(two), S) is None
    assert "121 words" in rule_abnormal_length(rec(" ".join(["a"] * 121)), S)
    assert rule_abnormal_length(rec("\n".join([" ".join(["a"] * 100)] * 3)), S) is None
    assert rule_abnormal_length(rec("abc"), HeuristicSettings(min_answer_chars=4)) is not None
    assert rule_abnormal_length(rec("abcd"), HeuristicSettings(min_answer_chars=4)) is None


def test_zero_and_char_runs():
    assert longest_zero_run("population 1000000 in 2000") == 6
    assert longest_zero_run("0 0 0,0.0") == 5
    assert longest_zero_run("0 0 0, 0.0") == 3  # ", " is two separators: the run stops
    assert longest_zero_run("00  00") == 2  # two spaces break the run
    assert rule_zero_run(rec("The value is " + "0" * 11 + "."), S) is None
    assert rule_zero_run(rec("The value is " + "0" * 12 + "."), S) is not None
    assert rule_zero_run(rec("Vector: " + " ".join(["0"] * 12)), S) is not None
    assert longest_char_run("ab----c-") == ("-", 4)
    assert longest_char_run("a" + " " * 40 + "b") == ("a", 1)  # whitespace runs do not count
    assert rule_char_run(rec("Title\n" + "=" * 23), S) is None
    assert rule_char_run(rec("Title\n" + "=" * 24), S) is not None
    assert rule_char_run(rec("Hmmm" + "m" * 30), S) is not None


def test_repeated_lines_and_unterminated():
    assert rule_repeated_lines(rec("x\ny\nx\nx\nx"), S) is not None  # 3 duplicates
    assert rule_repeated_lines(rec("x\ny\nx\nx"), S) is None  # 2 duplicates
    assert rule_repeated_lines(rec("x\n\n\n\n\ny\n \n"), S) is None  # blank lines ignored
    assert rule_repeated_lines(rec("x\n x \nx\t\nx"), S) is not None  # compared after strip
    eight = "one two three four five six seven eight"
    assert rule_unterminated(rec(eight), S) is not None
    assert rule_unterminated(rec(eight + "."), S) is None
    assert rule_unterminated(rec(eight + " <box>[[1, 2, 3, 4]]</box>"), S) is None
    assert rule_unterminated(rec("one two three four five six seven"), S) is None  # short answers pass
    assert rule_unterminated(rec([eight, "Blue"]), S) is None  # only the last answer


def test_heuristic_filter_first_rule_wins_and_subsets():
    flt = HeuristicFilter()
    flag = flt.check(rec("", "<image>", rid="e"))  # empty and placeholder mismatch: empty comes first
    assert (flag.filter, flag.rule) == ("heuristic", "empty_answer")
    assert flt.check(rec("Fine.", "<image>")).rule == "placeholder_mismatch"
    assert flt.check(rec("A red circle.")) is None
    only_lines = HeuristicFilter(rules=[("repeated_lines", rule_repeated_lines)], name="lines")
    assert only_lines.check(rec("")) is None
    assert only_lines.check(rec("x\nx\nx\nx")).filter == "lines"


def clean_records(n: int, seed: int = 0) -> list[dict]:
    """Varied clean records: short answers, long descriptions, lists, numbers, boxes, multi-image."""
    rng = random.Random(seed)
    colours = ["red", "green", "blue", "yellow", "purple", "orange"]
    shapes = ["circle", "square", "triangle", "star"]
    out = []
    for i in range(n):
        c, s, k = rng.choice(colours), rng.choice(shapes), rng.randint(1, 9)
        kind = i % 6
        if kind == 0:
            out.append(rec(c, "<image>\nWhat colour is the shape?", f"c{i}", image=f"img/{i}.png"))
        elif kind == 1:
            out.append(rec(f"There are {k} {s}s. The largest one is {c} and sits near the centre of the "
                           f"image, while the others are spread along the bottom edge.", "How many?", f"c{i}",
                           image=f"img/{i}.png"))
        elif kind == 2:
            items = "\n".join(f"{j + 1}. A {rng.choice(colours)} {rng.choice(shapes)} at x={rng.randint(0, 1000)}."
                              for j in range(k))
            out.append(rec(f"The image contains:\n{items}", "<image>\nList the shapes.", f"c{i}",
                           image=f"img/{i}.png"))
        elif kind == 3:
            out.append(rec(f"<ref>the {c} {s}</ref><box>[[{rng.randint(0, 400)}, {rng.randint(0, 400)}, "
                           f"{rng.randint(500, 1000)}, {rng.randint(500, 1000)}]]</box>",
                           f"<image>\nWhere is the {c} {s}?", f"c{i}", image=f"img/{i}.png"))
        elif kind == 4:
            out.append(rec(f"Image-1 shows {k} shapes and Image-2 shows {k + 1}, so Image-2 has one more.",
                           "Image-1: <image>\nImage-2: <image>\nWhich image has more shapes?", f"c{i}",
                           image=[f"img/{i}a.png", f"img/{i}b.png"]))
        else:
            year = rng.choice([1900, 2000, 2010, 2024])
            out.append(rec([f"In {year} the total was {k * 1000} units, or {k * 100000} cents.",
                            f"It grew by {k * 10} percent over the next decade, reaching {k * 1100} units."],
                           "Summarise the table.", f"c{i}"))
    return out


def test_clean_records_have_few_false_positives():
    clean = clean_records(300)
    for flt in (HeuristicFilter(), RepetitionFilter(), RepetitionFilter(mode="duplicate", threshold=0.5)):
        flagged = [f for f in flt.apply(clean) if f is not None]
        assert len(flagged) <= 3, (flt.name, flagged[:3])  # bound: at most 1 % false positives


# ---------------------------------------------------------------------------------------------
# fault injection
# ---------------------------------------------------------------------------------------------


def test_inject_faults_labels_and_kinds():
    clean = clean_records(120, seed=1)
    faulty = inject_faults(clean, rate=0.25, seed=3)
    assert faulty == inject_faults(clean, rate=0.25, seed=3)  # seeded
    assert len(faulty) == 120 and all("fault" not in r for r in clean)  # inputs untouched
    labels = [r["fault"] for r in faulty]
    assert sum(x is not None for x in labels) == 30
    assert sorted(set(labels) - {None}) == sorted(FAULT_KINDS)
    h = HeuristicSettings()
    for before, after in zip(clean, faulty):
        kind = after["fault"]
        if kind is None:
            assert {**before, "fault": None} == after
            continue
        assert after != {**before, "fault": kind}
        old = before["conversations"][-1]["value"]
        new = after["conversations"][-1]["value"]
        if kind == "empty":
            assert new.strip() == "" and rule_empty_answer(after, h) is not None
        elif kind == "placeholder_mismatch":
            assert rule_placeholder_mismatch(before, h) is None and rule_placeholder_mismatch(after, h) is not None
        elif kind == "truncated":
            assert old.startswith(new) and 0.3 * len(old.rstrip()) - 1 <= len(new) <= 0.8 * len(old.rstrip())
        elif kind == "garbage":
            assert len(new.split()) == max(3, len(old.split())) and new.endswith(".")
        elif kind == "repetition":
            assert new.startswith(old) and len(new.split()) >= 40 and duplicate_ngram_fraction(new, 3) > 0.4
    with pytest.raises(ValueError, match="unknown fault kind"):
        inject_faults(clean, kinds=["typo"])


# ---------------------------------------------------------------------------------------------
# LLM scoring
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_lm():
    records = clean_records(60, seed=2)
    model, tokenizer, losses = train_reference_lm(records, steps=20, batch_size=8, hidden_size=32, max_length=96, lr=1e-2,
                                                  vocab_size=300, seed=0)
    return model, tokenizer, losses


def hand_mean_nll(model, tokenizer, record) -> float:
    """Mean NLL of the answer tokens, one position at a time."""
    ids, answer = [], []
    for turn in record["conversations"]:
        role = {"human": "User: ", "gpt": "Assistant: ", "system": "System: "}[turn["from"]]
        for text, is_answer in ((role, False), (turn["value"], turn["from"] == "gpt"), ("\n", False)):
            piece = tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
            ids += piece
            answer += [is_answer] * len(piece)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0]
    terms = [torch.nn.functional.cross_entropy(logits[t - 1 : t], torch.tensor([ids[t]]))
             for t in range(1, len(ids)) if answer[t]]
    return float(sum(terms) / len(terms))


def test_perplexity_scorer_matches_hand_computation(tiny_lm):
    model, tokenizer, losses = tiny_lm
    assert model.__class__.__name__ == "Qwen2ForCausalLM"
    assert sum(losses[-5:]) / 5 < losses[0] - 1.0  # the reference LM learned something
    records = [rec("A red circle."), rec(["Three.", "Then a blue square appears at the top."], rid="m"),
               rec("zq xv kkp wqe lrr.", "<image>\nWhat is it?", image="x.png"), rec("", rid="empty")]
    expected = [hand_mean_nll(model, tokenizer, r) for r in records[:3]]
    one_by_one = PerplexityScorer(model, tokenizer, batch_size=1).score(records)
    batched = PerplexityScorer(model, tokenizer, batch_size=4).score(records)  # right padding
    assert one_by_one[:3] == pytest.approx(expected, abs=1e-5)
    assert batched[:3] == pytest.approx(expected, abs=1e-5)
    assert one_by_one[3] is None and batched[3] is None  # no answer token to score
    # the segments the scorer tokenizes are exactly the plain layout
    assert plain_segments(records[0]) == [("User: ", False), ("What is shown?", False), ("\n", False),
                                          ("Assistant: ", False), ("A red circle.", True), ("\n", False)]


def test_perplexity_separates_garbage_after_training(tiny_lm):
    model, tokenizer, _ = tiny_lm
    held_out = clean_records(12, seed=9)
    garbage = inject_faults(held_out, rate=1.0, seed=0, kinds=["garbage"])
    scorer = PerplexityScorer(model, tokenizer)
    clean_nll, garbage_nll = scorer.score(held_out), scorer.score(garbage)
    assert sum(garbage_nll) / 12 > sum(clean_nll) / 12 + 0.3
    flt = QualityFilter(scorer, threshold=max(clean_nll) + 1e-6, name="ppl")
    assert flt.apply(held_out) == [None] * 12


def test_parse_judge_score():
    cases = {
        "Score: 8": 8.0, "score of 6.5": 6.5, "**Score:** 9/10": 9.0, "7": 7.0, " 10. ": 10.0,
        "I'd rate it 7 out of 10.": 7.0, "8/10 - clear and correct": 8.0, "Seven": 7.0,
        "Rating: 3": 3.0, "The score is 4, because step 2 repeats": 4.0, "0": 0.0,
        "I would give this a 8.": 8.0, "Overall 6.5, fine": 6.5,
        "The answer is great": None, "version 2.0.1": None, "Score: 15": None, "between 6 and 8": None, "": None, "Score: N": None,
    }
    for reply, expected in cases.items():
        assert parse_judge_score(reply) == expected, reply


def test_chat_judge_scorer_with_fake_chat():
    replies = {"good": "Score: 9", "bad": "Score: 2/10", "edge": "7", "odd": "I cannot rate this."}
    prompts = []

    def fake_chat(prompt: str) -> str:
        prompts.append(prompt)
        rid = prompt.split("Assistant: ")[1].split()[0]  # the answers below are the ids
        return replies[rid]

    records = [rec(k, rid=k) for k in replies]
    judge = ChatJudgeScorer(fake_chat)
    assert judge.score(records) == [9.0, 2.0, 7.0, None]
    assert judge.last_replies == list(replies.values())
    assert "User: What is shown?\nAssistant: good" in prompts[0] and "0 to 10" in prompts[0]
    flt = QualityFilter(judge, threshold=7, name="judge")
    flags = flt.apply(records)
    assert [f.rule if f else None for f in flags] == [None, "low_score", None, "unparseable"]
    kept, report = run_filters(records, [flt])
    assert [r["id"] for r in kept] == ["good", "edge"]
    assert report.rule_counts() == {("judge", "low_score"): 1, ("judge", "unparseable"): 1}
    with pytest.raises(ValueError, match="conversation"):
        ChatJudgeScorer(fake_chat, prompt="no slot")


class FixedScorer:
    def __init__(self, scores, higher_is_better):
        self._scores, self.higher_is_better, self.missing_rule = scores, higher_is_better, "missing"

    def score(self, records):
        return list(self._scores)


def test_quality_filter_thresholds():
    records = [rec(str(i), rid=str(i)) for i in range(5)]
    low = QualityFilter(FixedScorer([1.0, 2.0, 3.0, 4.0, 5.0], False), remove_fraction=0.2)
    assert [f is not None for f in low.apply(records)] == [False, False, False, False, True]
    assert low.threshold_used == pytest.approx(4.2)  # 0.8-quantile of 1..5
    high = QualityFilter(FixedScorer([1.0, 2.0, 3.0, 4.0, 5.0], True), remove_fraction=0.4)
    assert [f is not None for f in high.apply(records)] == [True, True, False, False, False]
    assert high.threshold_used == pytest.approx(2.6)
    nan = QualityFilter(FixedScorer([1.0, None, float("nan"), 2.0, 3.0], False), threshold=2.5)
    assert [f.rule if f else None for f in nan.apply(records)] == [None, "missing", "missing", None, "high_nll"]
    assert quantile_threshold([3.0, None, 1.0], 0.5) == 2.0
    with pytest.raises(ValueError, match="exactly one"):
        QualityFilter(FixedScorer([], False))


# ---------------------------------------------------------------------------------------------
# pipeline, report and scores
# ---------------------------------------------------------------------------------------------


def labelled_set() -> list[dict]:
    passage = " ".join(WORDS[:30])
    return [
        {**rec("A red circle.", rid="ok1"), "fault": None},
        {**rec("", rid="empty1"), "fault": "empty"},
        {**rec(" ", rid="empty2"), "fault": "empty"},
        {**rec(f"{passage}. {passage}.", rid="rep1"), "fault": "repetition"},
        {**rec("x\nx\nx\nx", rid="lines"), "fault": "repetition"},
        {**rec("Fine.", "<image>", rid="ph"), "fault": "placeholder_mismatch"},
        {**rec("one two three four five six seven eight", rid="fp")},  # clean but unterminated
        {**rec("qzx vvk.", rid="garb"), "fault": "garbage"},
    ]


def test_run_filters_report():
    records = labelled_set()
    kept, report = run_filters(records, [HeuristicFilter(), RepetitionFilter()])
    assert [r["id"] for r in kept] == ["ok1", "garb"]
    assert kept[0] is records[0]
    assert (report.total, report.kept, report.removed) == (8, 2, 6)
    assert report.counts() == {"heuristic": 5, "repetition": 1}
    assert report.seen == {"heuristic": 8, "repetition": 3}  # the second filter sees the survivors only
    assert report.rule_counts() == {("heuristic", "empty_answer"): 2, ("heuristic", "repeated_lines"): 1,
                                    ("heuristic", "placeholder_mismatch"): 1, ("heuristic", "unterminated"): 1,
                                    ("repetition", "10-gram"): 1}
    assert [r.index for r in report.removals] == [1, 2, 4, 5, 6, 3]
    assert [r.id for r in report.examples("heuristic", "empty_answer")] == ["empty1", "empty2"]
    md = report.to_markdown()
    assert "| heuristic | empty_answer | 2 |" in md and "| repetition | 10-gram | 1 |" in md
    assert "1 &lt;image&gt; placeholders for 0 image(s)" in md and "<image>" not in md
    text = report.to_text()
    assert text.startswith("8 records -> 2 kept, 6 removed (75.0 %)")
    assert "removed     5 of     8 seen" in text
    with pytest.raises(ValueError, match="unique"):
        run_filters(records, [HeuristicFilter(), HeuristicFilter()])


def test_score_filters_precision_recall():
    records = labelled_set()
    ev = score_filters(records, [HeuristicFilter(), RepetitionFilter()])
    assert ev.faults == {"repetition": 2, "garbage": 1, "placeholder_mismatch": 1, "empty": 2}
    h = ev["heuristic"]  # flags empty1, empty2, lines, ph, fp
    assert (h.flagged, h.tp, h.fp, h.fn) == (5, 4, 1, 2)
    assert h.precision == pytest.approx(4 / 5) and h.recall == pytest.approx(4 / 6)
    assert h.recall_by_fault == {"repetition": 0.5, "garbage": 0.0, "placeholder_mismatch": 1.0, "empty": 1.0}
    r = ev["repetition"]  # flags rep1 only (the 4-line loop has no 10-gram)
    assert (r.flagged, r.tp, r.fp, r.fn) == (1, 1, 0, 5)
    u = ev["all (union)"]
    assert (u.flagged, u.tp, u.fp, u.fn) == (6, 5, 1, 1)
    assert u.recall_by_fault["repetition"] == 1.0
    assert "| heuristic | 5 | 0.80 | 0.67 |" in ev.to_markdown()
    assert math.isnan(score_filters(records[:1], [RepetitionFilter()])["repetition"].precision)
    with pytest.raises(ValueError, match="fault"):
        score_filters([rec("a")], [RepetitionFilter()])


def test_chat_judge_from_model_decodes_only_new_tokens(tiny_lm):
    model, tokenizer, _ = tiny_lm
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    judge = ChatJudgeScorer.from_model(model, tokenizer, max_new_tokens=5, prompt="Rate: {conversation}\nScore:")
    record = rec("A red circle.")
    prompt = judge.prompt_for(record)
    assert prompt == "Rate: User: What is shown?\nAssistant: A red circle.\nScore:"
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=5, do_sample=False)
    expected = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    assert judge.score([record]) == [parse_judge_score(expected)]
    assert judge.last_replies == [expected]


def test_filter_meta_writes_kept_records_and_a_meta_that_points_at_them(tmp_path):
    import json

    from minivl.data.filtering import filter_meta
    from minivl.data.records import read_meta

    src = tmp_path / "suite"
    (src / "images" / "a").mkdir(parents=True)
    (src / "ann").mkdir()
    good = [rec("a circle", rid=f"g{i}", image="x.png") for i in range(3)]
    empty = rec("", rid="e", image="x.png")
    lines = [json.dumps(good[0]), json.dumps(empty), "{not json", json.dumps(good[1]), "", json.dumps(good[2])]
    (src / "ann" / "a.jsonl").write_text("\n".join(lines) + "\n")
    (src / "ann" / "b.jsonl").write_text(json.dumps(rec("two", rid="b0")) + "\n")
    (src / "train.json").write_text(json.dumps({
        "a": {"root": "images/a", "annotation": "ann/a.jsonl", "data_augment": True, "max_dynamic_patch": 4,
              "repeat_time": 2, "length": 5},
        "b": {"root": "images/a", "annotation": "ann/b.jsonl"}}))

    out, reports = filter_meta(src / "train.json", tmp_path / "elsewhere" / "train_filtered.json")
    metas = read_meta(out)
    # the malformed line and the empty answer are removed and counted; the rest kept in order
    assert reports["a"].total == 5 and reports["a"].kept == 3 and reports["a"].removed == 2
    assert reports["a"].counts() == {"unreadable": 1, "heuristic": 1, "repetition_duplicate": 0}
    assert [r.flag.rule for r in reports["a"].removals] == ["not_a_json_object", "empty_answer"]
    kept = [json.loads(x)["id"] for x in metas["a"].annotation_path.read_text().splitlines()]
    assert kept == ["g0", "g1", "g2"]
    # the knobs survive, the length is the kept count, the image root is the same folder
    assert (metas["a"].data_augment, metas["a"].max_dynamic_patch, metas["a"].repeat_time) == (True, 4, 2)
    assert metas["a"].length == 3 and metas["b"].length == 1
    assert metas["a"].root_path.resolve() == (src / "images" / "a").resolve()
    assert "2 removed" in reports["a"].to_text()
