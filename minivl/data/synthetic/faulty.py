"""``faulty``: labelled bad samples, so that data filters can be scored (chapter 7).

InternVL 2.5's report blames repetitive, looping answers on a small share of bad training data
and filters it out (LLM scoring, repetition detection, heuristic rules). This module makes the
failure cases on purpose, always labelled with a top-level ``"fault"`` key (clean records have
no such key):

* ``repetition``: the answer is one 10-word sequence repeated 3-6 times. InternVL's n-gram
  check (10-grams, ratio of distinct repeated 10-grams to all 10-grams above 0.4) flags only
  the 3-copy loops (10/21); longer loops score 10/(10k-9) and slip through, which chapter 7
  measures;
* ``truncated``: a multi-word answer cut in the middle of a word;
* ``garbage``: random characters instead of the answer;
* ``empty``: an empty answer;
* ``placeholder``: a wrong number of ``<image>``/``<video>`` placeholders for the media (the
  record validator, :func:`minivl.data.records.parse_record`, rejects these).

The ``faulty`` task holds about half clean and half faulty records, built on samples of other
tasks. In addition, each train-split record of the other tasks is replaced, with probability
:data:`FAULT_RATE`, by a labelled copy with a *content* fault (the first four kinds, which
still parse as valid records): that is the noise a filter should remove before training.

Explained in chapter 6 (notebooks/06_data.ipynb); filtering in chapter 7.
"""

from __future__ import annotations

import copy
import random
import string

from minivl.data.synthetic.charts import make_chart
from minivl.data.synthetic.common import TaskContext
from minivl.data.synthetic.multi_image import make_multi_image
from minivl.data.synthetic.reasoning import make_reasoning
from minivl.data.synthetic.scenes import make_caption, make_shape_qa
from minivl.data.synthetic.text_only import make_text_only
from minivl.data.synthetic.video import make_video

FAULT_TYPES = ("repetition", "truncated", "garbage", "empty", "placeholder")
CONTENT_FAULTS = ("repetition", "truncated", "garbage", "empty")
FAULT_RATE = 0.02  # share of train records of the other tasks replaced by a labelled faulty copy
FAULTY_SHARE = 0.5  # share of faulty records inside the ``faulty`` task
NGRAM = 10
FILLER = "the image shows some shapes and the answer is here".split()

# Bases of the faulty task: tasks with long answers weigh more, so truncation has material.
BASES = (
    ("caption", make_caption),
    ("caption", make_caption),
    ("reasoning", make_reasoning),
    ("shape_qa", make_shape_qa),
    ("chart", make_chart),
    ("multi_image", make_multi_image),
    ("video", make_video),
    ("text_only", make_text_only),
)


def _last_answer(record: dict) -> str:
    return record["conversations"][-1]["value"]


def applicable_faults(record: dict, faults: tuple[str, ...] = FAULT_TYPES) -> list[str]:
    """The faults that make sense for ``record`` (truncation needs an answer of 3+ words)."""
    return [f for f in faults if f != "truncated" or len(_last_answer(record).split()) >= 3]


def repetition_text(rng: random.Random, record: dict) -> str:
    """A 10-word sequence (the answer's and question's words, padded) repeated 3-6 times."""
    question = record["conversations"][-2]["value"].replace("<image>", "").replace("<video>", "")
    words = _last_answer(record).split() + question.split()
    words = (words + FILLER)[:NGRAM]
    return " ".join(words * rng.randint(3, 6))


def corrupt(record: dict, fault: str, rng: random.Random) -> dict:
    """A copy of ``record`` with ``fault`` applied and ``"fault": fault`` set.

    Explained in chapter 6 (notebooks/06_data.ipynb).
    """
    if fault not in FAULT_TYPES:
        raise ValueError(f"unknown fault {fault!r} (known: {FAULT_TYPES})")
    out = copy.deepcopy(record)
    conv = out["conversations"]
    if fault == "repetition":
        conv[-1]["value"] = repetition_text(rng, record)
    elif fault == "truncated":
        answer = _last_answer(record)
        cut = rng.randint(int(0.3 * len(answer)), int(0.7 * len(answer)))
        # Cut inside a word: move to the middle of the next word if the cut lands on a space.
        while cut < len(answer) - 1 and (answer[cut] == " " or answer[cut - 1] == " "):
            cut += 1
        conv[-1]["value"] = answer[:cut]
    elif fault == "garbage":
        alphabet = string.ascii_letters + string.digits + "#@%&*$~^|"
        conv[-1]["value"] = "".join(rng.choice(alphabet) for _ in range(rng.randint(20, 60)))
    elif fault == "empty":
        conv[-1]["value"] = ""
    else:  # placeholder
        first = next(t for t in conv if t["from"] == "human")
        if "video" in out:
            first["value"] = first["value"].replace("<video>\n", "", 1)
        elif isinstance(out.get("image"), list):
            n = len(out["image"])
            first["value"] = first["value"].replace(f"Image-{n}: <image>\n", "", 1)
        else:
            # Single image: one placeholder too many. Text only: one where there is no image.
            first["value"] = "<image>\n" + first["value"]
    out["fault"] = fault
    return out


def make_faulty(rng: random.Random, ctx: TaskContext, index: int) -> list[dict]:
    """One record of another task (``meta.base_task``), faulty with probability 1/2.

    Explained in chapter 6 (notebooks/06_data.ipynb).
    """
    base_task, make = rng.choice(BASES)
    records = make(rng, ctx, index)
    record = records[rng.randrange(len(records))]
    record["id"] = ctx.record_id(index)
    record["meta"]["base_task"] = base_task
    if rng.random() < FAULTY_SHARE:
        record = corrupt(record, rng.choice(applicable_faults(record)), rng)
    return [record]
