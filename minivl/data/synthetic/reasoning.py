"""``reasoning``: multi-step multiple-choice questions about a shape scene.

Each instance gives **two** records built from the same image and question:

* ``cot``: the answer is a step-by-step rationale whose last line is ``Answer: \\boxed{X}``
  (the format of InternVL 2.5's chain-of-thought prompt);
* ``direct``: the answer is the option letter alone.

``meta`` stores the options, the correct letter, the numeric answer and the variant, so the
evaluation chapter can score both and run majority voting on the CoT variant.

Explained in chapter 6 (notebooks/06_data.ipynb).
"""

from __future__ import annotations

import random
from collections import Counter

from minivl.data.synthetic.common import (
    BACKGROUNDS,
    COLOURS,
    SCENE_SIZES,
    SHAPES,
    TaskContext,
    human_gpt,
    plural,
    random_scene,
    render_scene,
    scene_meta,
)

LETTERS = "ABCD"
DIRECT_PROMPT = "Answer with the option's letter from the given choices directly."
COT_PROMPT = "Think step by step, then give the final answer on the last line as 'Answer: \\boxed{LETTER}'."


def _count_phrase(n: int, noun: str) -> str:
    return f"There {'is' if n == 1 else 'are'} {n} {plural(noun, n)}."


def reasoning_problem(rng: random.Random, shapes) -> tuple[str, str, list[str], int]:
    """Pick a problem: returns ``(problem_type, question, steps, answer)``.

    * ``sum``: the number of A-shapes plus the number of B-shapes;
    * ``remove``: the shapes left after removing every shape of one colour;
    * ``double``: twice the number of one colour plus the number of one kind.
    """
    kinds = Counter(s.kind for s in shapes)
    colours = Counter(s.colour for s in shapes)
    ptype = rng.choice(("sum", "remove", "double"))
    if ptype == "sum":
        a, b = rng.sample(SHAPES, 2)
        question = f"Add the number of {a}s to the number of {b}s. What is the result?"
        ans = kinds[a] + kinds[b]
        steps = [_count_phrase(kinds[a], a), _count_phrase(kinds[b], b), f"{kinds[a]} + {kinds[b]} = {ans}."]
    elif ptype == "remove":
        c = rng.choice(COLOURS)
        question = f"If every {c} shape is removed, how many shapes are left?"
        ans = len(shapes) - colours[c]
        steps = [
            _count_phrase(len(shapes), "shape")[:-1] + " in total.",
            _count_phrase(colours[c], f"{c} shape"),
            f"{len(shapes)} - {colours[c]} = {ans}.",
        ]
    else:
        c, k = rng.choice(COLOURS), rng.choice(SHAPES)
        question = f"Multiply the number of {c} shapes by 2, then add the number of {k}s. What is the result?"
        ans = 2 * colours[c] + kinds[k]
        steps = [
            _count_phrase(colours[c], f"{c} shape"),
            _count_phrase(kinds[k], k),
            f"2 x {colours[c]} + {kinds[k]} = {ans}.",
        ]
    return ptype, question, steps, ans


def make_options(rng: random.Random, answer: int) -> tuple[list[int], int]:
    """Four distinct non-negative integers near ``answer``; returns ``(options, correct_index)``."""
    candidates = [v for v in range(answer - 3, answer + 4) if v >= 0 and v != answer]
    options = rng.sample(candidates, 3) + [answer]
    rng.shuffle(options)
    return options, options.index(answer)


def option_lines(options: list[int]) -> str:
    """``A. 3\nB. 5\n...``: the options as they follow the question."""
    return "\n".join(f"{LETTERS[i]}. {v}" for i, v in enumerate(options))


def cot_rationale(steps: list[str], answer: int, letter: str) -> str:
    """The CoT answer: the counting and arithmetic ``steps``, the option lookup, the boxed letter."""
    return "\n".join([*steps, f"The result {answer} is option {letter}.", f"Answer: \\boxed{{{letter}}}"])


def reasoning_drills(n: int, seed: int = 0) -> list[list[dict[str, str]]]:
    """``n`` text-only CoT conversations in the ``reasoning`` format, without images.

    Each is drawn like a ``reasoning`` instance (a random scene, a problem, four options) but
    only its text is kept: the question with its options and the CoT prompt, then the
    rationale. Text alone cannot tell the counts in the rationale's first lines, but it fixes
    everything after them: the arithmetic and which option holds the result. A pretrained LLM
    brings those skills; pass these drills to :func:`minivl.train.warmstart.warm_start_llm`
    with the suite's conversations to give them to a small warm-started one. Chapter 15
    measures what they buy with :func:`minivl.eval.chain_probe.chain_step_probe`: at cpu scale
    (6000 drills, 450 steps) the arithmetic (6 -> 88.5-90.5 % on two machines), not the lookup (8 -> 25 %, chance).
    Scenes come from their own seed, never from the suite. Explained in chapter 15
    (notebooks/15_evaluation_and_test_time_scaling.ipynb).
    """
    rng = random.Random(f"reasoning-drills/{seed}")
    out = []
    for _ in range(n):
        question, steps, answer, options, correct = text_problem(rng)
        out.append(human_gpt(f"{question}\n{option_lines(options)}\n{COT_PROMPT}",
                             cot_rationale(steps, answer, LETTERS[correct])))
    return out


def text_problem(rng: random.Random) -> tuple[str, list[str], int, list[int], int]:
    """A problem drawn as an instance is, without its image: ``(question, steps, answer,
    options, correct_index)``."""
    width, height = rng.choice(SCENE_SIZES)
    shapes = random_scene(rng, width, height, rng.randint(2, 7))
    _, question, steps, answer = reasoning_problem(rng, shapes)
    options, correct = make_options(rng, answer)
    return question, steps, answer, options, correct


def make_reasoning(rng: random.Random, ctx: TaskContext, index: int) -> list[dict]:
    """One instance -> a ``cot`` record and a ``direct`` record (ids ``...-cot`` / ``...-direct``).

    Explained in chapter 6 (notebooks/06_data.ipynb).
    """
    width, height = rng.choice(SCENE_SIZES)
    background = rng.choice(BACKGROUNDS)
    shapes = random_scene(rng, width, height, rng.randint(2, 7))
    ptype, question, steps, answer = reasoning_problem(rng, shapes)
    options, correct = make_options(rng, answer)
    letter = LETTERS[correct]
    rationale = cot_rationale(steps, answer, letter)
    image = render_scene(width, height, shapes, background)
    name = ctx.save(image, f"{index:06d}.png")
    base = scene_meta(width, height, background, shapes) | {
        "problem_type": ptype,
        "instance": ctx.record_id(index),
        "options": [str(v) for v in options],
        "answer_letter": letter,
        "answer_value": answer,
    }
    records = []
    for variant, prompt, gpt in (("cot", COT_PROMPT, rationale), ("direct", DIRECT_PROMPT, letter)):
        records.append(
            {
                "id": ctx.record_id(index, f"-{variant}"),
                "image": name,
                "width": width,
                "height": height,
                "conversations": human_gpt(f"<image>\n{question}\n{option_lines(options)}\n{prompt}", gpt),
                "meta": base | {"variant": variant},
            }
        )
    return records
