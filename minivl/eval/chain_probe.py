"""Which step of a chain of thought fails? Text-only probes of the LLM's part of ``reasoning``.

A CoT answer of the suite's ``reasoning`` task has three kinds of lines:

1. counts read off the image (``There are 2 red shapes.``): the eyes' work;
2. the arithmetic on them (``7 - 2 = 5.``);
3. the lookup of the result among the options (``The result 5 is option B.``) and the
   boxed letter.

Lines 2 and 3 need no image. :func:`chain_step_probe` gives the language model fresh
problems (text only, scenes drawn from their own seed) with the right lines up to a step
already written as the start of its answer, and scores the next line it writes greedily:

* ``arithmetic``: given the count lines, the arithmetic line is exactly right;
* ``lookup``: given the count and arithmetic lines, the lookup line is exactly right;
* ``letter``: in that same continuation, the letter read from the ``\\boxed{}`` (or the
  first rule of :func:`minivl.eval.extract.extract_choice` that finds one) is the right option.

A model whose counts were perfect would still score chance on ``reasoning`` if ``lookup``
were at chance. Explained in chapter 15 (notebooks/15_evaluation_and_test_time_scaling.ipynb).
"""

from __future__ import annotations

import random
from typing import Any

import torch

from minivl.data.synthetic.reasoning import COT_PROMPT, LETTERS, cot_rationale, option_lines, text_problem
from minivl.eval.extract import extract_choice
from minivl.text.template import get_template


def _greedy_line(llm, tokenizer, text: str, max_new_tokens: int, stop_ids: list[int]) -> str:
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    out = llm.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False,
                       eos_token_id=stop_ids, pad_token_id=stop_ids[0])
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=False)


@torch.no_grad()
def chain_step_probe(model, tokenizer, n: int = 200, seed: int = 0, template: str = "internvl2_5",
                     max_new_tokens: int = 32, num_examples: int = 3) -> dict[str, Any]:
    """Score the arithmetic and lookup steps of ``n`` fresh text-only ``reasoning`` problems.

    ``model`` is a causal LM or a :class:`minivl.model.MiniVL` (its language model is used).
    Returns ``{"n", "arithmetic", "lookup", "letter", "examples"}``: three accuracies in
    [0, 1] (see the module docstring) and up to ``num_examples`` dicts with the prompt's
    answer prefix, the model's continuation and the right one.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    llm = getattr(model, "language_model", model)
    was_training = llm.training
    llm.eval()
    tpl = get_template(template)
    stop_ids = [tokenizer.convert_tokens_to_ids(tpl.stop_token)]
    rng = random.Random(f"chain-step-probe/{seed}")
    hits = {"arithmetic": 0, "lookup": 0, "letter": 0}
    examples = []
    for i in range(n):
        question, steps, answer, options, correct = text_problem(rng)
        gold = cot_rationale(steps, answer, LETTERS[correct]).split("\n")  # counts, arithmetic, lookup, boxed
        prompt = tpl.render([("user", f"{question}\n{option_lines(options)}\n{COT_PROMPT}"), ("assistant", None)])
        counts = "\n".join(steps[:2]) + "\n"
        arithmetic = _greedy_line(llm, tokenizer, prompt + counts, max_new_tokens, stop_ids)
        hits["arithmetic"] += arithmetic.split("\n")[0].strip() == gold[2]
        rest = _greedy_line(llm, tokenizer, prompt + counts + gold[2] + "\n", max_new_tokens, stop_ids)
        hits["lookup"] += rest.split("\n")[0].strip() == gold[3]
        choice = extract_choice(rest.split(tpl.stop_token)[0], [str(v) for v in options]).answer
        hits["letter"] += choice == LETTERS[correct]
        if i < num_examples:
            examples.append({"given": counts, "arithmetic": arithmetic, "after_arithmetic": rest,
                             "gold": "\n".join(gold[2:])})
    llm.train(was_training)
    return {"n": n, **{k: v / n for k, v in hits.items()}, "examples": examples}
