"""``multi_image``: 2-4 small scenes and a question that compares them.

The human turn numbers the images the way InternVL's data and evaluation do::

    Image-1: <image>
    Image-2: <image>
    Which image has the most shapes?

and the record lists ``image: [paths]`` with ``width_list`` / ``height_list``.

Explained in chapter 6 (notebooks/06_data.ipynb).
"""

from __future__ import annotations

import random

from minivl.data.synthetic.common import (
    BACKGROUNDS,
    COLOURS,
    SHAPES,
    Shape,
    TaskContext,
    human_gpt,
    random_scene,
    render_scene,
    scene_meta,
)

IMAGE_SIZE = 112


def _has(shapes: list[Shape], colour: str, kind: str) -> bool:
    return any(s.colour == colour and s.kind == kind for s in shapes)


def make_multi_image(rng: random.Random, ctx: TaskContext, index: int) -> list[dict]:
    """One multi-image comparison question. Question types:

    * ``most``: "Which image has the most shapes?" -> ``Image-k`` (the maximum is unique);
    * ``contains``: "Which image contains a red square?" -> ``Image-k`` (only that image has one);
    * ``total``: "How many shapes are there in all the images together?" -> a number.

    Explained in chapter 6 (notebooks/06_data.ipynb).
    """
    n_images = rng.randint(2, 4)
    qtype = rng.choice(("most", "contains", "total"))
    size = IMAGE_SIZE
    if qtype == "most":
        counts = rng.sample(range(1, 6), n_images)  # distinct counts: the maximum is unique
        scenes = [random_scene(rng, size, size, c) for c in counts]
        answer_k = counts.index(max(counts))
        question, answer = "Which image has the most shapes?", f"Image-{answer_k + 1}"
        extra = {}
    elif qtype == "contains":
        colour, kind = rng.choice(COLOURS), rng.choice(SHAPES)
        answer_k = rng.randrange(n_images)
        scenes = []
        for k in range(n_images):
            while True:
                shapes = random_scene(rng, size, size, rng.randint(1, 4))
                if k == answer_k and not _has(shapes, colour, kind):
                    # Paint one shape as the target so exactly this image has it.
                    target = rng.choice(shapes)
                    target.colour, target.kind = colour, kind
                if _has(shapes, colour, kind) == (k == answer_k):
                    break
            scenes.append(shapes)
        question, answer = f"Which image contains a {colour} {kind}?", f"Image-{answer_k + 1}"
        extra = {"target": {"colour": colour, "kind": kind}}
    else:
        scenes = [random_scene(rng, size, size, rng.randint(1, 4)) for _ in range(n_images)]
        question, answer = "How many shapes are there in all the images together?", str(sum(map(len, scenes)))
        extra = {}

    names, metas = [], []
    for k, shapes in enumerate(scenes):
        background = rng.choice(BACKGROUNDS)
        image = render_scene(size, size, shapes, background)
        names.append(ctx.save(image, f"{index:06d}_{k + 1}.png"))
        metas.append(scene_meta(size, size, background, shapes))
    prefix = "".join(f"Image-{k + 1}: <image>\n" for k in range(n_images))
    return [
        {
            "id": ctx.record_id(index),
            "image": names,
            "width_list": [size] * n_images,
            "height_list": [size] * n_images,
            "conversations": human_gpt(prefix + question, answer),
            "meta": {"question_type": qtype, "answer": answer, "images": metas} | extra,
        }
    ]
