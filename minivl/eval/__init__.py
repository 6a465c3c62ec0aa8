"""Evaluation: prompts, answer extraction, metrics and majority voting.

* :mod:`minivl.eval.prompts`: direct, chain-of-thought and grounding prompts;
* :mod:`minivl.eval.extract`: reading answers out of responses, recording the rule used;
* :mod:`minivl.eval.metrics`: accuracy, relaxed accuracy, ANLS, IoU@0.5, result tables;
* :mod:`minivl.eval.vote`: majority voting over sampled chains and its token cost;
* :mod:`minivl.eval.chain_probe`: which step of a chain of thought (arithmetic, option lookup) fails.

Explained in chapter 15 (``notebooks/15_evaluation_and_test_time_scaling.ipynb``).
"""

from __future__ import annotations

from minivl.eval.extract import Extraction, extract_answer, extract_choice, extract_open, normalize_answer
from minivl.eval.metrics import (
    anls,
    box_iou,
    exact_match,
    grounding_accuracy,
    mc_accuracy,
    parse_box,
    relaxed_correctness,
    summarize,
    write_results,
)
from minivl.eval.prompts import (
    GROUNDING_PROMPT,
    MC_COT_PROMPT,
    MC_DIRECT_PROMPT,
    OPEN_COT_PROMPT,
    OPEN_DIRECT_PROMPT,
    build_grounding_prompt,
    build_prompt,
)
from minivl.eval.vote import Vote, accuracy_vs_k, majority_vote, token_cost

__all__ = [
    "GROUNDING_PROMPT",
    "MC_COT_PROMPT",
    "MC_DIRECT_PROMPT",
    "OPEN_COT_PROMPT",
    "OPEN_DIRECT_PROMPT",
    "Extraction",
    "Vote",
    "accuracy_vs_k",
    "anls",
    "box_iou",
    "build_grounding_prompt",
    "build_prompt",
    "exact_match",
    "extract_answer",
    "extract_choice",
    "extract_open",
    "grounding_accuracy",
    "majority_vote",
    "mc_accuracy",
    "normalize_answer",
    "parse_box",
    "relaxed_correctness",
    "summarize",
    "token_cost",
    "write_results",
]
