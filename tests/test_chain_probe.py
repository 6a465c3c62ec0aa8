"""The text-only reasoning drills and the chain-step probe (minivl.eval.chain_probe)."""

from __future__ import annotations

import re

import pytest
import torch

from minivl.data.synthetic.reasoning import COT_PROMPT, LETTERS, reasoning_drills
from minivl.eval.chain_probe import chain_step_probe

COUNT_LINE = re.compile(r"There (?:is|are) (\d+) ")


def solve(user: str, counts: list[int]) -> tuple[str, str]:
    """An independent solver: the arithmetic line and the lookup line from the question and
    the two counts (the question's wording decides the operation)."""
    question = user.split("\n")[0]
    options = dict(re.findall(r"^([A-D])\. (\d+)$", user, flags=re.M))
    a, b = counts
    if question.startswith("Add"):
        value, line = a + b, f"{a} + {b} = {a + b}."
    elif question.startswith("If every"):
        value, line = a - b, f"{a} - {b} = {a - b}."
    else:
        value, line = 2 * a + b, f"2 x {a} + {b} = {2 * a + b}."
    letter = next(k for k, v in options.items() if int(v) == value)
    return line, f"The result {value} is option {letter}."


def test_drills_are_text_only_reasoning_chains_with_consistent_arithmetic_and_lookup():
    drills = reasoning_drills(300, seed=3)
    assert len(drills) == 300
    assert drills == reasoning_drills(300, seed=3) and drills != reasoning_drills(300, seed=4)
    for conv in drills:
        assert [t["from"] for t in conv] == ["human", "gpt"]
        user, answer = conv[0]["value"], conv[1]["value"]
        assert "<image>" not in user and user.endswith(COT_PROMPT)
        lines = answer.split("\n")
        assert len(lines) == 5
        counts = [int(COUNT_LINE.match(line).group(1)) for line in lines[:2]]
        arithmetic, lookup = solve(user, counts)
        assert lines[2] == arithmetic and lines[3] == lookup
        assert lines[4] == f"Answer: \\boxed{{{lookup[-2]}}}" and lookup[-2] in LETTERS


class ScriptedLM(torch.nn.Module):
    """A stand-in language model whose greedy continuation is a function of the prompt text."""

    def __init__(self, tokenizer, respond):
        super().__init__()
        self.tokenizer, self.respond = tokenizer, respond

    def generate(self, input_ids, **_):
        text = self.tokenizer.decode(input_ids[0], skip_special_tokens=False)
        new = self.tokenizer(self.respond(text) + "<|im_end|>", add_special_tokens=False, return_tensors="pt")
        return torch.cat([input_ids, new["input_ids"]], dim=1)


def solving(text: str) -> str:
    """The right continuation of a probe prompt: the next lines of the chain."""
    user = text.split("<|im_start|>user\n")[1].split("<|im_end|>")[0]
    answer = text.split("<|im_start|>assistant\n")[1]
    counts = [int(m) for m in COUNT_LINE.findall(answer)]
    arithmetic, lookup = solve(user, counts)
    letter = lookup[-2]
    if answer.count("\n") == 2:  # the count lines only
        return f"{arithmetic}\n{lookup}\nAnswer: \\boxed{{{letter}}}"
    return f"{lookup}\nAnswer: \\boxed{{{letter}}}"


@pytest.fixture(scope="module")
def tokenizer():
    from minivl.text.tokenizer import train_tokenizer

    return train_tokenizer(vocab_size=300)


def test_probe_scores_a_solver_perfect_and_a_fixed_answer_near_chance(tokenizer):
    right = chain_step_probe(ScriptedLM(tokenizer, solving), tokenizer, n=40, seed=1)
    assert (right["arithmetic"], right["lookup"], right["letter"]) == (1.0, 1.0, 1.0)
    assert right["n"] == 40 and len(right["examples"]) == 3

    fixed = chain_step_probe(ScriptedLM(tokenizer, lambda _: "1 + 1 = 2.\nThe result 2 is option A.\n"
                                        "Answer: \\boxed{A}"), tokenizer, n=40, seed=1)
    assert fixed["arithmetic"] < 0.2 and fixed["lookup"] < 0.2
    assert 0.05 < fixed["letter"] < 0.5  # right only when the answer is option A


def test_probe_separates_the_steps(tokenizer):
    def bad_lookup(text):  # right arithmetic, then always the option after the right one
        lines = solving(text).split("\n")
        letter = LETTERS[(LETTERS.index(lines[-1][-2]) + 1) % 4]
        return "\n".join([*lines[:-2], f"The result is option {letter}.", f"Answer: \\boxed{{{letter}}}"])

    result = chain_step_probe(ScriptedLM(tokenizer, bad_lookup), tokenizer, n=30)
    assert (result["arithmetic"], result["lookup"], result["letter"]) == (1.0, 0.0, 0.0)


def test_probe_runs_a_real_model_and_refuses_an_empty_probe(tokenizer):
    from tests._tiny_model import tiny_model_and_tokenizer

    model, tok = tiny_model_and_tokenizer()
    model.train()
    result = chain_step_probe(model, tok, n=2, max_new_tokens=4)
    assert set(result) == {"n", "arithmetic", "lookup", "letter", "examples"}
    assert all(0.0 <= result[k] <= 1.0 for k in ("arithmetic", "lookup", "letter"))
    assert model.language_model.training  # restored
    with pytest.raises(ValueError, match="at least 1"):
        chain_step_probe(model, tok, n=0)
