"""``text_only``: instructions with no image, to keep the LLM's language skills (InternVL mixes
pure-text data into every stage-2 mixture).

Four kinds: arithmetic, copying, sorting a few words, and answering from a short passage.
One record in ten starts with a ``system`` turn, so readers see that part of the format.

Explained in chapter 6 (notebooks/06_data.ipynb).
"""

from __future__ import annotations

import random

from minivl.data.synthetic.common import COLOURS, TaskContext, human_gpt

WORDS = (
    "apple", "river", "stone", "cloud", "maple", "tiger", "piano", "lemon", "candle", "window",
    "garden", "rocket", "silver", "forest", "bridge", "pepper", "violet", "anchor", "marble", "falcon",
)
NAMES = ("Tom", "Ana", "Li", "Sara", "Omar", "Ines", "Ravi", "Mia")
OBJECTS = ("kite", "hat", "bike", "ball", "cup", "scarf")
PETS = ("cat", "dog", "fish", "bird", "rabbit")
SYSTEM_PROMPT = "You are a helpful assistant. Answer briefly."


def make_text_only(rng: random.Random, ctx: TaskContext, index: int) -> list[dict]:
    """One text instruction and its exact answer. Explained in chapter 6 (notebooks/06_data.ipynb)."""
    ttype = rng.choice(("arithmetic", "copy", "sort", "passage"))
    if ttype == "arithmetic":
        a, b = rng.randint(2, 99), rng.randint(2, 99)
        op = rng.choice("+-")
        if op == "-" and b > a:
            a, b = b, a
        question, answer = f"What is {a} {op} {b}?", str(a + b if op == "+" else a - b)
    elif ttype == "copy":
        words = rng.sample(WORDS, rng.randint(2, 5))
        question, answer = "Repeat exactly: " + " ".join(words), " ".join(words)
    elif ttype == "sort":
        words = rng.sample(WORDS, rng.randint(3, 5))
        question, answer = "Sort these words alphabetically: " + ", ".join(words), ", ".join(sorted(words))
    else:
        name, other = rng.sample(NAMES, 2)
        colour, obj, pet, n = rng.choice(COLOURS), rng.choice(OBJECTS), rng.choice(PETS), rng.randint(2, 9)
        passage = f"{name} has a {colour} {obj}. {other} has {n} {pet}s."
        ask = rng.choice(("colour", "count"))
        if ask == "colour":
            question, answer = f"{passage}\nWhat colour is {name}'s {obj}?", colour
        else:
            question, answer = f"{passage}\nHow many {pet}s does {other} have?", str(n)
    system = SYSTEM_PROMPT if rng.random() < 0.1 else None
    return [
        {
            "id": ctx.record_id(index),
            "conversations": human_gpt(question, answer, system=system),
            "meta": {"question_type": ttype, "answer": answer},
        }
    ]
