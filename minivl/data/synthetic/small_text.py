"""``small_text``: a short word or number printed small on a large canvas.

The canvas is 448 x 448 and the text is 9 px DejaVu Sans in capitals and digits (glyphs about
7 px tall). Squeezed into **one** 112 px tile (a 4x downscale) the glyphs are under 2 px tall and
unreadable; with dynamic tiling at 112 px tiles and ``max_dynamic_patch=16`` the canvas becomes
a 4 x 4 grid of tiles at full resolution and the glyphs keep their 7 px. This is the task made
for comparing dynamic high resolution (chapter 1) with a single tile. At the quickstart's scale
the model reads neither way: a 2-layer ViT trained for a minute on tiles like these names 7 % of
the answers at 9 px and 68 % at 20 px (``scripts/text_reading_probe.py --words``), so it is the
eyes, not the tiling, that fail first.

Explained in chapter 6 (notebooks/06_data.ipynb).
"""

from __future__ import annotations

import random

from PIL import Image, ImageDraw

from minivl.data.synthetic.common import TaskContext, font, human_gpt

CANVAS_SIZE = (448, 448)
FONT_SIZE = 9
# Capital letters without descenders (no Q or J) and digits: the ink height is the cap height.
WORDS = (
    "CAT", "SUN", "RED", "BOX", "MAP", "KEY", "FOX", "OWL", "HAT", "CUP", "BEE", "ANT",
    "BUS", "PEN", "ZOO", "SKY", "TEA", "ICE", "WIN", "GO",
)
QUESTIONS = ("What is written in the image?", "What text appears in the image?", "Read the text in the image.")


def make_small_text(rng: random.Random, ctx: TaskContext, index: int) -> list[dict]:
    """One canvas with one small word or two-digit number. Explained in chapter 6 (notebooks/06_data.ipynb)."""
    width, height = CANVAS_SIZE
    text = rng.choice(WORDS) if rng.random() < 0.5 else str(rng.randint(10, 99))
    shade = rng.randint(235, 255)
    background = (shade, shade, shade)
    ink = rng.randint(0, 60)
    f = font(FONT_SIZE)
    image = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=f)
    x = rng.randint(8 - left, width - 8 - right)
    y = rng.randint(8 - top, height - 8 - bottom)
    draw.text((x, y), text, font=f, fill=(ink, ink, ink))
    ink_box = list(draw.textbbox((x, y), text, font=f))
    name = ctx.save(image, f"{index:06d}.png")
    return [
        {
            "id": ctx.record_id(index),
            "image": name,
            "width": width,
            "height": height,
            "conversations": human_gpt("<image>\n" + rng.choice(QUESTIONS), text),
            "meta": {
                "width": width,
                "height": height,
                "background": list(background),
                "ink": [ink, ink, ink],
                "text": text,
                "font_size": FONT_SIZE,
                "text_bbox": ink_box,
                "answer": text,
            },
        }
    ]
