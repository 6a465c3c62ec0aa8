"""Prompts of minivl.eval.prompts: verbatim texts and InternVL's MMMU layout."""

from __future__ import annotations

import pytest

from minivl.eval.prompts import (
    GROUNDING_PROMPT,
    MC_COT_PROMPT,
    MC_DIRECT_PROMPT,
    OPEN_COT_PROMPT,
    OPEN_DIRECT_PROMPT,
    build_grounding_prompt,
    build_prompt,
    format_options,
    option_dict,
)

# The report's Fig. 9 (a) prompt, written out independently of the module (one backslash,
# an em dash between "indefinitely" and "provide").
FIG9_A = (
    "Answer the preceding multiple choice question. The last line of your response should follow "
    "this format: 'Answer: \\boxed{$LETTER}' (without quotes), where LETTER is one of the options. "
    "If you are uncertain or the problem is too complex, make a reasoned guess based on the "
    "information provided. Avoid repeating steps indefinitely\u2014provide your best guess even if "
    "unsure. Think step by step logically, considering all relevant information before answering."
)
FIG9_B = (
    "Answer the preceding question. The last line of your response should follow this format: "
    "'Answer: \\boxed{$FINAL_ANSWER}' (without quotes), where 'FINAL_ANSWER' is your conclusion "
    "based on the reasoning provided. If you are uncertain or the problem is too complex, make a "
    "reasoned guess based on the information provided. Avoid repeating steps indefinitely\u2014provide "
    "your best guess even if unsure. Think step by step logically, considering all relevant "
    "information before answering."
)


def test_verbatim_texts():
    assert MC_DIRECT_PROMPT == "Answer with the option's letter from the given choices directly."
    assert OPEN_DIRECT_PROMPT == "Answer the question using a single word or phrase."
    assert MC_COT_PROMPT == FIG9_A
    assert OPEN_COT_PROMPT == FIG9_B
    assert MC_COT_PROMPT.count("\\") == 1 and "\\\\" not in MC_COT_PROMPT
    assert GROUNDING_PROMPT.format("the red car") == (
        "Please provide the bounding box coordinate of the region this sentence describes: "
        "<ref>the red car</ref>"
    )


def test_options_layout():
    assert option_dict([" dog ", "cat"]) == {"A": "dog", "B": "cat"}
    assert format_options(["dog ", " cat", "bird"]) == "A. dog\nB. cat\nC. bird"
    assert format_options({"A": "x", "C": "z"}) == "A. x\nC. z"


def test_mc_direct_matches_mmmu_layout():
    # evaluate_mmmu.py: question.strip() + "\n" + "A. ..\nB. .." + "\n" + prompt
    got = build_prompt("  Which animal barks? ", ["dog", "cat"])
    assert got == ("Which animal barks?\nA. dog\nB. cat\n"
                   "Answer with the option's letter from the given choices directly.")


def test_mc_cot_replaces_direct_sentence():
    got = build_prompt("Which animal barks?", ["dog", "cat"], mode="cot")
    assert got == "Which animal barks?\nA. dog\nB. cat\n" + FIG9_A
    assert MC_DIRECT_PROMPT not in got


def test_open_direct_and_cot_and_hint():
    assert build_prompt("How many cats?") == (
        "How many cats?\nAnswer the question using a single word or phrase.")
    assert build_prompt("How many cats?", mode="cot") == "How many cats?\n" + FIG9_B
    assert build_prompt("Q?", ["a", "b"], hint="Look left.") == (
        "Look left.\nQ?\nA. a\nB. b\n" + MC_DIRECT_PROMPT)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(question="Q", options=["a"], mode="greedy"), "mode"),
        (dict(question="Q", kind="mc"), "needs options"),
        (dict(question="Q", options=["a"], kind="open"), "no options"),
        (dict(question="Q", options=["x"] * 27), "at most 26"),
        (dict(question="Q", options={"a": "x"}), "capital letters"),
        (dict(question="Q", options=["a"], kind="yesno"), "kind"),
    ],
)
def test_build_prompt_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_prompt(**kwargs)


def test_grounding_prompt():
    assert build_grounding_prompt(" the dog on the left ").endswith("<ref>the dog on the left</ref>")
    with pytest.raises(ValueError):
        build_grounding_prompt("  ")
