"""``video``: short frame sequences of one moving shape, saved as a folder of PNG frames.

The record uses ``"video": "<folder>"`` and ``<video>`` in the first human turn; InternVL
expands it into ``Frame-1: <image>\\nFrame-2: <image>...`` with one tile per frame. Two
question types: the direction of motion (left / right / up / down), and how many times the
shape disappears for one frame (a count of events, which needs every frame).

Explained in chapter 6 (notebooks/06_data.ipynb).
"""

from __future__ import annotations

import random

from PIL import Image, ImageDraw

from minivl.data.synthetic.common import (
    BACKGROUNDS,
    COLOURS,
    SHAPES,
    Shape,
    TaskContext,
    draw_shape,
    human_gpt,
)

FRAME_SIZE = 112
FRAME_COUNTS = (4, 6, 8)
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}


def _blink_frames(rng: random.Random, n_frames: int) -> list[int]:
    """1-3 frames where the shape is hidden: never the first or last, never two in a row."""
    inner = list(range(1, n_frames - 1))
    max_blinks = min(3, (len(inner) + 1) // 2)
    k = rng.randint(1, max_blinks)
    while True:
        picked = sorted(rng.sample(inner, k))
        if all(b - a >= 2 for a, b in zip(picked, picked[1:])):
            return picked


def make_video(rng: random.Random, ctx: TaskContext, index: int) -> list[dict]:
    """One clip of 4, 6 or 8 frames and a direction or blink-count question.

    Explained in chapter 6 (notebooks/06_data.ipynb).
    """
    n = rng.choice(FRAME_COUNTS)
    size, shape_size = FRAME_SIZE, rng.randint(16, 26)
    colour, kind = rng.choice(COLOURS), rng.choice(SHAPES)
    direction = rng.choice(tuple(DIRECTIONS))
    dx, dy = DIRECTIONS[direction]
    max_step = (size - shape_size - 2) // (n - 1)
    step = rng.randint(min(6, max_step), max_step)
    travel = step * (n - 1)
    # Start so that the whole path stays inside the frame with a 1 px margin.
    along0 = 1 + rng.randint(0, size - 2 - shape_size - travel)
    if dx < 0 or dy < 0:
        along0 += travel
    across = rng.randint(1, size - 1 - shape_size)
    qtype = rng.choice(("direction", "blink"))
    hidden = _blink_frames(rng, n) if qtype == "blink" else []
    background = rng.choice(BACKGROUNDS)

    folder = f"{index:06d}"
    boxes: list[list[int] | None] = []
    for t in range(n):
        pos = along0 + (dx + dy) * step * t
        x0, y0 = (pos, across) if dx else (across, pos)
        frame = Image.new("RGB", (size, size), background)
        if t in hidden:
            boxes.append(None)
        else:
            shape = Shape(kind, colour, 4, (x0, y0, x0 + shape_size, y0 + shape_size))
            draw_shape(ImageDraw.Draw(frame), shape)
            boxes.append(list(shape.bbox))
        ctx.save(frame, f"{folder}/frame_{t:02d}.png")

    if qtype == "direction":
        question, answer = f"In which direction does the {colour} {kind} move?", direction
    else:
        question, answer = f"How many times does the {colour} {kind} disappear?", str(len(hidden))
    return [
        {
            "id": ctx.record_id(index),
            "video": folder,
            "conversations": human_gpt("<video>\n" + question, answer),
            "meta": {
                "question_type": qtype,
                "answer": answer,
                "num_frames": n,
                "width": size,
                "height": size,
                "background": list(background),
                "colour": colour,
                "kind": kind,
                "direction": direction,
                "hidden_frames": hidden,
                "boxes": boxes,
            },
        }
    ]
