"""``chart``: bar charts, line charts and simple forms, drawn with PIL, with questions about values.

Charts are drawn directly with PIL (not matplotlib): fast, aliased, and pixel-exact, so a test
can read every value back from the image. A value ``v`` is a bar of exactly ``v * UNIT`` pixels
above the baseline (or a marker centred ``v * UNIT`` pixels above it). Forms are tables of
``key | value`` rows under a title, with questions about one field (OCR-like reading).

Explained in chapter 6 (notebooks/06_data.ipynb).
"""

from __future__ import annotations

import random

from PIL import Image, ImageDraw

from minivl.data.synthetic.common import COLOURS, PALETTE, TaskContext, font, human_gpt

CHART_SIZE = (224, 168)
FORM_SIZE = (224, 224)
# Plot geometry (pixels): values 0..MAX_VALUE over MAX_VALUE * UNIT pixels above BASELINE.
LEFT, RIGHT, BASELINE, UNIT, MAX_VALUE = 26, 216, 146, 12, 10
GRID = (215, 215, 215)
AXIS = (0, 0, 0)
MARKER = 5  # marker side in pixels (odd, so it has a centre pixel)
FORM_TOP, FORM_ROW, FORM_MID, FORM_FONT = 40, 32, 100, 12  # table top, row height, column split, font size

FORM_TITLES = ("FORM", "RECEIPT", "PROFILE", "TICKET")
FORM_FIELDS = {
    "Name": ("Alice", "Bruno", "Chen", "Dana", "Emil", "Farah", "Gus", "Hana"),
    "City": ("Paris", "Rome", "Oslo", "Lima", "Cairo", "Kyoto", "Quito", "Delhi"),
    "Colour": COLOURS,
    "Age": tuple(str(v) for v in range(18, 80)),
    "Room": tuple(str(v) for v in range(100, 500)),
    "Price": tuple(str(v) for v in range(5, 100)),
    "Code": ("AX", "BK", "CT", "DM", "EV", "FR", "GH", "HW"),
}


def _axes(draw: ImageDraw.ImageDraw) -> None:
    f = font(8)
    for v in range(0, MAX_VALUE + 1, 2):
        y = BASELINE - v * UNIT
        if v:
            draw.line((LEFT, y, RIGHT, y), fill=GRID)
        draw.text((LEFT - 3, y), str(v), font=f, fill=AXIS, anchor="rm")
    draw.line((LEFT, BASELINE, RIGHT, BASELINE), fill=AXIS)
    draw.line((LEFT, BASELINE - MAX_VALUE * UNIT, LEFT, BASELINE), fill=AXIS)


def slot_centres(n: int) -> list[int]:
    """x of the centre of each of ``n`` category slots between the axis and the right edge."""
    slot = (RIGHT - LEFT) / n
    return [int(LEFT + slot * (i + 0.5)) for i in range(n)]


def draw_bar_chart(values: list[int], colour: str, labels: list[str]) -> tuple[Image.Image, list[list[int]]]:
    """A bar chart; returns the image and each bar's pixel box ``(x0, y0, x1, y1)``."""
    image = Image.new("RGB", CHART_SIZE, (255, 255, 255))
    draw = ImageDraw.Draw(image)
    _axes(draw)
    half = int((RIGHT - LEFT) / len(values) * 0.3)
    boxes = []
    for x, v, label in zip(slot_centres(len(values)), values, labels):
        # The bar covers rows BASELINE - v*UNIT .. BASELINE-1: exactly v*UNIT pixels tall.
        box = [x - half, BASELINE - v * UNIT, x + half + 1, BASELINE]
        draw.rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill=PALETTE[colour])
        draw.text((x, BASELINE + 4), label, font=font(9), fill=AXIS, anchor="mt")
        boxes.append(box)
    return image, boxes


def draw_line_chart(values: list[int], colour: str, marker: str, labels: list[str]) -> tuple[Image.Image, list[list[int]]]:
    """A line chart with square markers; returns the image and each marker's centre ``(x, y)``."""
    image = Image.new("RGB", CHART_SIZE, (255, 255, 255))
    draw = ImageDraw.Draw(image)
    _axes(draw)
    points = [[x, BASELINE - v * UNIT] for x, v in zip(slot_centres(len(values)), values)]
    draw.line([tuple(p) for p in points], fill=PALETTE[colour], width=2)
    r = MARKER // 2
    for (x, y), label in zip(points, labels):
        draw.rectangle((x - r, y - r, x + r, y + r), fill=PALETTE[marker])
        draw.text((x, BASELINE + 4), label, font=font(9), fill=AXIS, anchor="mt")
    return image, points


def draw_form(title: str, rows: list[tuple[str, str]]) -> tuple[Image.Image, list[list[int]]]:
    """A two-column table under a title; returns the image and each row's pixel box."""
    width, height = FORM_SIZE
    image = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    draw.text((width // 2, 12), title, font=font(14), fill=AXIS, anchor="mt")
    top, row_h, mid = FORM_TOP, FORM_ROW, FORM_MID
    boxes = []
    for i, (key, value) in enumerate(rows):
        y0 = top + i * row_h
        draw.rectangle((12, y0, width - 13, y0 + row_h), outline=AXIS)
        draw.line((mid, y0, mid, y0 + row_h), fill=AXIS)
        draw.text((18, y0 + row_h // 2), key, font=font(FORM_FONT), fill=AXIS, anchor="lm")
        draw.text((mid + 6, y0 + row_h // 2), value, font=font(FORM_FONT), fill=AXIS, anchor="lm")
        boxes.append([12, y0, width - 12, y0 + row_h + 1])
    return image, boxes


def make_chart(rng: random.Random, ctx: TaskContext, index: int) -> list[dict]:
    """One bar chart, line chart or form with one question about a value.

    Bar / line: "What is the value of B?" -> a number, or "Which bar is the tallest?" /
    "Which point is the highest?" -> a letter (only when the maximum is unique).
    Form: "What is the City in the form?" -> the field's value.

    Explained in chapter 6 (notebooks/06_data.ipynb).
    """
    kind = rng.choice(("bar", "line", "form"))
    meta: dict = {"chart_type": kind}
    if kind == "form":
        title = rng.choice(FORM_TITLES)
        keys = rng.sample(sorted(FORM_FIELDS), rng.randint(3, 5))
        rows = [(k, rng.choice(FORM_FIELDS[k])) for k in keys]
        image, boxes = draw_form(title, rows)
        key, answer = rng.choice(rows)
        question = f"What is the {key} in the {title.lower()}?"
        meta |= {"title": title, "rows": [list(r) for r in rows], "row_boxes": boxes, "key": key}
    else:
        n = rng.randint(3, 5)
        labels = [chr(ord("A") + i) for i in range(n)]
        values = [rng.randint(1, MAX_VALUE) for _ in range(n)]
        colour = rng.choice(COLOURS)
        if kind == "bar":
            image, boxes = draw_bar_chart(values, colour, labels)
            meta |= {"colour": colour, "bar_boxes": boxes}
            top_q = "Which bar is the tallest?"
        else:
            marker = rng.choice([c for c in COLOURS if c != colour])
            image, points = draw_line_chart(values, colour, marker, labels)
            meta |= {"colour": colour, "marker_colour": marker, "points": points}
            top_q = "Which point is the highest?"
        unique_max = values.count(max(values)) == 1
        if unique_max and rng.random() < 0.3:
            question, answer = top_q, labels[values.index(max(values))]
        else:
            i = rng.randrange(n)
            question, answer = f"What is the value of {labels[i]}?", str(values[i])
        meta |= {"labels": labels, "values": values, "baseline": BASELINE, "unit": UNIT}
    name = ctx.save(image, f"{index:06d}.png")
    meta |= {"width": image.width, "height": image.height, "answer": answer}
    return [
        {
            "id": ctx.record_id(index),
            "image": name,
            "width": image.width,
            "height": image.height,
            "conversations": human_gpt("<image>\n" + question, answer),
            "meta": meta,
        }
    ]
