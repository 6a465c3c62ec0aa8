"""Single-image shape scenes: ``caption``, ``shape_qa`` and ``grounding``.

* ``caption``: 1-5 shapes, a templated caption listing them in reading order (stage 1 data);
* ``shape_qa``: count / colour / position questions with one-word answers (instruction data);
  a training image carries :data:`TRAIN_TURNS` questions as a multi-turn conversation, as
  InternVL's instruction data often does (held-out images: one question each);
* ``grounding``: InternVL's referring-expression format, boxes in 0-1000 integer coordinates::

      Please provide the bounding box coordinate of the region this sentence describes: <ref>the blue circle</ref>
      <ref>the blue circle</ref><box>[[x1, y1, x2, y2]]</box>

Explained in chapter 6 (notebooks/06_data.ipynb).
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

from minivl.data.synthetic.common import (
    BACKGROUNDS,
    COLOURS,
    SCENE_SIZES,
    SHAPES,
    Shape,
    TaskContext,
    box_to_1000,
    human_gpt,
    plural,
    position_phrase,
    random_scene,
    render_scene,
    scene_meta,
)

TRAIN_TURNS = 3
"""Questions per ``shape_qa`` training image: the image and the prompt are paid for once."""

CAPTION_PROMPTS = ("Describe the image.", "What is in this picture?", "Give a short description of the image.")
GROUNDING_PROMPT = "Please provide the bounding box coordinate of the region this sentence describes: <ref>{}</ref>"


def caption_text(shapes: list[Shape]) -> str:
    """``There are 2 shapes: a red circle at the top-left and a blue square in the center.``"""
    n = len(shapes)
    parts = [f"a {s.name} {position_phrase(s.position)}" for s in shapes]
    listing = parts[0] if n == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    verb = "is" if n == 1 else "are"
    return f"There {verb} {n} {plural('shape', n)}: {listing}."


def _scene(rng: random.Random, n_min: int, n_max: int) -> tuple[int, int, tuple[int, int, int], list[Shape]]:
    width, height = rng.choice(SCENE_SIZES)
    background = rng.choice(BACKGROUNDS)
    shapes = random_scene(rng, width, height, rng.randint(n_min, n_max))
    return width, height, background, shapes


def _image_record(ctx: TaskContext, index: int, image, human: str, gpt: str, meta: dict[str, Any]) -> dict:
    name = ctx.save(image, f"{index:06d}.png")
    return {
        "id": ctx.record_id(index),
        "image": name,
        "width": image.width,
        "height": image.height,
        "conversations": human_gpt("<image>\n" + human, gpt),
        "meta": meta,
    }


def make_caption(rng: random.Random, ctx: TaskContext, index: int) -> list[dict]:
    """One captioned scene of 1-5 shapes. Explained in chapter 6 (notebooks/06_data.ipynb)."""
    width, height, background, shapes = _scene(rng, 1, 5)
    image = render_scene(width, height, shapes, background)
    meta = scene_meta(width, height, background, shapes)
    return [_image_record(ctx, index, image, rng.choice(CAPTION_PROMPTS), caption_text(shapes), meta)]


def unique_reference(shapes: list[Shape], shape: Shape) -> str | None:
    """The shortest phrase that picks ``shape`` alone: ``the triangle`` or ``the red triangle``."""
    kinds = Counter(s.kind for s in shapes)
    names = Counter(s.name for s in shapes)
    if kinds[shape.kind] == 1:
        return f"the {shape.kind}"
    if names[shape.name] == 1:
        return f"the {shape.name}"
    return None


def shape_question(rng: random.Random, shapes: list[Shape]) -> tuple[str, str, str]:
    """Pick a question about ``shapes``: returns ``(question_type, question, answer)``.

    Types: ``count`` (all / one colour / one kind), ``colour`` (of a shape whose kind is
    unique) and ``position`` (of a shape that a phrase picks alone). The type is drawn first,
    uniformly among those the scene allows, then the count variant: drawing among the five
    variants at once would make three questions in five counting ones, and the binding
    questions (colour, position), the ones a model learns last, would get a fifth each.
    """
    kinds = Counter(s.kind for s in shapes)
    unique_kind = [s for s in shapes if kinds[s.kind] == 1]
    referable = [(s, unique_reference(shapes, s)) for s in shapes]
    referable = [(s, ref) for s, ref in referable if ref is not None]
    qtype = rng.choice(["count"] + ["colour"] * bool(unique_kind) + ["position"] * bool(referable))
    if qtype == "count":
        variant = rng.choice(["all", "colour", "kind"])
        if variant == "all":
            return "count", "How many shapes are there?", str(len(shapes))
        if variant == "colour":
            colour = rng.choice(COLOURS)
            return "count", f"How many {colour} shapes are there?", str(sum(s.colour == colour for s in shapes))
        kind = rng.choice(SHAPES)
        return "count", f"How many {kind}s are there?", str(kinds[kind])
    if qtype == "colour":
        shape = rng.choice(unique_kind)
        return "colour", f"What colour is the {shape.kind}?", shape.colour
    shape, ref = rng.choice(referable)
    return "position", f"Where is {ref}?", shape.position


def make_shape_qa(rng: random.Random, ctx: TaskContext, index: int) -> list[dict]:
    """Count / colour / position questions about one scene: one on held-out splits,
    :data:`TRAIN_TURNS` different ones in the train split (a multi-turn conversation).
    ``meta`` keeps the first question's type and answer and every turn under ``turns``.

    Explained in chapter 6 (notebooks/06_data.ipynb)."""
    width, height, background, shapes = _scene(rng, 1, 5)
    turns = [shape_question(rng, shapes)]
    for _ in range(8 * (TRAIN_TURNS - 1) if ctx.split == "train" else 0):  # a few tries to find new questions
        if len(turns) == TRAIN_TURNS:
            break
        turn = shape_question(rng, shapes)
        if all(turn[1] != t[1] for t in turns):
            turns.append(turn)
    image = render_scene(width, height, shapes, background)
    (qtype, question, answer) = turns[0]
    meta = scene_meta(width, height, background, shapes) | {
        "question_type": qtype, "answer": answer,
        "turns": [{"question_type": t, "question": q, "answer": a} for t, q, a in turns]}
    record = _image_record(ctx, index, image, question, answer, meta)
    for _, q, a in turns[1:]:
        record["conversations"] += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
    return [record]


def grounding_answer(ref: str, boxes: list[list[int]]) -> str:
    """``<ref>the red circle</ref><box>[[x1, y1, x2, y2], ...]</box>`` (InternVL's format)."""
    inner = ", ".join("[" + ", ".join(str(v) for v in box) + "]" for box in boxes)
    return f"<ref>{ref}</ref><box>[{inner}]</box>"


def make_grounding(rng: random.Random, ctx: TaskContext, index: int) -> list[dict]:
    """One referring expression and its box(es) in 0-1000 coordinates.

    A quarter of the time, when a colour has two or more shapes, the phrase is ``the red
    shapes`` and the answer lists every box under one ``<ref>``, in reading order.

    Explained in chapter 6 (notebooks/06_data.ipynb).
    """
    while True:
        width, height, background, shapes = _scene(rng, 1, 5)
        referable = [(s, unique_reference(shapes, s)) for s in shapes]
        referable = [(s, ref) for s, ref in referable if ref is not None]
        if referable:
            break
    colours = Counter(s.colour for s in shapes)
    multi = [c for c in COLOURS if colours[c] >= 2]
    if multi and rng.random() < 0.25:
        colour = rng.choice(multi)
        targets = [s for s in shapes if s.colour == colour]
        ref = f"the {colour} shapes"
    else:
        target, ref = rng.choice(referable)
        targets = [target]
    boxes = [box_to_1000(s.bbox, width, height) for s in targets]
    image = render_scene(width, height, shapes, background)
    meta = scene_meta(width, height, background, shapes) | {
        "ref": ref,
        "targets": [shapes.index(s) for s in targets],
        "boxes": boxes,
    }
    return [_image_record(ctx, index, image, GROUNDING_PROMPT.format(ref), grounding_answer(ref, boxes), meta)]
