"""Answer extraction of minivl.eval.extract on a table of tricky model outputs."""

from __future__ import annotations

import pytest

from minivl.eval.extract import (
    RULES,
    extract_answer,
    extract_choice,
    extract_open,
    last_answer_line,
    last_boxed,
    normalize_answer,
)

OPTIONS = ["dog", "cat", "black cat", "bird"]  # A, B, C, D

# (response, expected letter, expected rule). Each expectation follows from the rule order
# in the module docstring, worked out by hand.
CASES = [
    # rule 3: a lone letter, any wrapping; a response that is only a letter may be lower case
    ("B", "B", "letter"),
    ("b", "B", "letter"),
    ("(C)", "C", "letter"),
    ("D.", "D", "letter"),
    ("The answer is B", "B", "letter"),
    ("I think the answer is C", "C", "letter"),  # "I" is the pronoun (and not an option)
    # rule 2: the last Answer: line, resolved as a slot
    ("Answer: (C)", "C", "answer_line"),
    ("answer: c", "C", "answer_line"),
    ("Final Answer: D", "D", "answer_line"),
    ("Answer:\nC", "C", "answer_line"),
    ("Answer: The bird", "D", "answer_line"),
    ("**Answer: B**", "B", "answer_line"),
    ("Answer: A. Then later... Answer: B", "B", "answer_line"),
    # rule 1: the last balanced \boxed{}, nested braces, \text{}, "B. foo"
    ("Options A and C are wrong. \\boxed{D}. Answer: \\boxed{\\text{B}}", "B", "boxed"),
    ("\\boxed{B. cat}", "B", "boxed"),
    ("\\boxed{\\text{(b)}}", "B", "boxed"),
    ("So C looks right, but A is what the figure shows: \\boxed{A}", "A", "boxed"),
    ("\\boxed{\\textbf{black cat}}", "C", "boxed"),
    # an unbalanced last box is skipped for the previous one
    ("\\boxed{D} ... \\boxed{\\text{C}", "D", "boxed"),
    # rule 4: option text only
    ("It is a bird.", "D", "option_text"),
    ("the cat", "B", "option_text"),
    ("I think it is a black cat.", "C", "option_text"),  # longest match wins over "cat"
    ("Dog", "A", "option_text"),
    # the article: "A cat" is not option A when other evidence exists
    ("Let's think. A cat is on the mat. So the answer is B.", "B", "letter"),
    ("A cat is on the mat.", "B", "option_text"),
    ("A horse.", "A", "article_letter"),  # nothing else at all: the lone A is used
    ("A is correct.", "A", "letter"),     # "is" follows an option letter, not an article
    # unparseable: never a random pick
    ("A or B", None, "none"),
    ("dog or bird", None, "none"),
    ("I have no idea.", None, "none"),
    ("", None, "none"),
    ("Both B and D fit.", None, "none"),
    ("\\boxed{E} although B is close", None, "none"),  # committed to a non-option
    ("Bob ate A1 steak", None, "none"),                 # letters inside words are not tokens
]


@pytest.mark.parametrize("response, letter, rule", CASES)
def test_extract_choice_table(response, letter, rule):
    got = extract_choice(response, OPTIONS)
    assert (got.answer, got.rule) == (letter, rule)
    assert got.parsed == (letter is not None)
    assert got.rule in RULES


def test_options_as_mapping_limit_valid_letters():
    # Only A and B exist: the standalone "C" is not a valid letter and does not count.
    got = extract_choice("C is not listed, so B", {"A": "yes", "B": "no"})
    assert (got.answer, got.rule) == ("B", "letter")


def test_judge_is_asked_only_when_rules_fail():
    calls = []

    def judge(response, options):
        calls.append((response, dict(options)))
        return "d"

    assert extract_choice("Answer: B", OPTIONS, judge=judge).answer == "B"
    assert calls == []
    got = extract_choice("The one with feathers.", OPTIONS, judge=judge)
    assert (got.answer, got.rule) == ("D", "judge")
    assert calls == [("The one with feathers.", {"A": "dog", "B": "cat", "C": "black cat", "D": "bird"})]


@pytest.mark.parametrize("verdict", ["Z", None, "", "AB"])
def test_invalid_judge_verdict_is_unparseable(verdict):
    got = extract_choice("The one with feathers.", OPTIONS, judge=lambda r, o: verdict)
    assert (got.answer, got.rule) == (None, "none")


def test_last_boxed_and_answer_line():
    assert last_boxed("x \\boxed{1} y \\boxed{\\frac{1}{2}} z") == "\\frac{1}{2}"
    assert last_boxed("\\boxed{a{b{c}}d}") == "a{b{c}}d"
    assert last_boxed("no box") is None
    assert last_boxed("\\boxed{open") is None
    assert last_answer_line("Answer: A\nmore\nanswer:  (B) dog \nend") == "(B) dog"
    assert last_answer_line("Answer:") is None


@pytest.mark.parametrize(
    "response, answer, rule",
    [
        ("The Red Ball.", "the red ball", "raw"),
        ("reasoning... Answer: \\boxed{\\text{Blue}}", "blue", "boxed"),
        ("so it is 7.\nAnswer: 42.", "42", "answer_line"),
        ("  Paris  ", "paris", "raw"),
        ("3.5", "3.5", "raw"),  # only a trailing period goes
        ("   ", None, "none"),
    ],
)
def test_extract_open(response, answer, rule):
    got = extract_open(response)
    assert (got.answer, got.rule) == (answer, rule)


def test_extract_answer_dispatch_and_normalize():
    assert extract_answer("Answer: B", OPTIONS).answer == "B"
    assert extract_answer("Answer: B").answer == "b"  # open: normalised text, not a letter
    assert normalize_answer("  $\\text{New   York}$. ") == "new york"
    with pytest.raises(ValueError, match="judge"):
        extract_answer("x", judge=lambda r, o: "A")
    with pytest.raises(TypeError):
        extract_choice(None, OPTIONS)  # type: ignore[arg-type]
