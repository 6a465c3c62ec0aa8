"""Shared pieces of the synthetic suite: seeded randomness, fonts, shape scenes, image files.

Every sample draws from its own ``random.Random`` seeded by a hash of
``(seed, split, task, index)``: splits never share a seed, and sample ``i`` is the same
whatever the number of samples generated (a smoke suite is a prefix of a cpu suite).

Shape scenes are laid out on a 3 x 3 grid of cells, one shape per cell, so shapes never
overlap, every shape has a clean position name (``top-left`` ... ``bottom-right``) and its
pixels can be recounted from the image. Shapes are drawn without anti-aliasing, in exact
palette colours, so a test can find each of them by colour.

Explained in chapter 6 (notebooks/06_data.ipynb).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

# Exact RGB values: no shape colour is close to a background grey or to another colour.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 190, 20),
}
COLOURS = tuple(PALETTE)
SHAPES = ("circle", "square", "triangle", "diamond")
BACKGROUNDS = ((255, 255, 255), (242, 242, 242), (230, 230, 230))
# The 3 x 3 grid of cells, row-major; a shape's position is the name of its cell.
CELL_NAMES = ("top-left", "top", "top-right", "left", "center", "right", "bottom-left", "bottom", "bottom-right")
# Scene image sizes (width, height): 112 px tiles, so one to two tiles per image.
SCENE_SIZES = ((112, 112), (112, 112), (168, 168), (224, 112), (112, 224))


def sample_rng(seed: int, split: str, task: str, index: int) -> random.Random:
    """The random generator of one sample: a hash of ``(seed, split, task, index)``.

    Explained in chapter 6 (notebooks/06_data.ipynb).
    """
    digest = hashlib.sha256(f"minivl-synth/{seed}/{split}/{task}/{index}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def font_path() -> Path | None:
    """matplotlib's DejaVu Sans, which ships inside the matplotlib wheel (None if absent)."""
    try:
        import matplotlib
    except ImportError:
        return None
    path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    return path if path.is_file() else None


@cache
def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """DejaVu Sans at ``size`` pixels, else Pillow's scalable default font."""
    path = font_path()
    if path is not None:
        return ImageFont.truetype(str(path), size)
    return ImageFont.load_default(size=size)


def plural(word: str, n: int) -> str:
    """``circle`` -> ``circles`` unless ``n == 1``."""
    return word if n == 1 else word + "s"


def position_phrase(cell: str) -> str:
    """``center`` -> ``in the center``; others -> ``at the top-left``."""
    return "in the center" if cell == "center" else f"at the {cell}"


@dataclass
class Shape:
    """One shape of a scene. ``bbox`` = ``(x0, y0, x1, y1)`` in pixel edges: the shape's pixels
    are columns ``x0 .. x1-1`` and rows ``y0 .. y1-1``."""

    kind: str
    colour: str
    cell: int
    bbox: tuple[int, int, int, int]

    @property
    def name(self) -> str:
        return f"{self.colour} {self.kind}"

    @property
    def position(self) -> str:
        return CELL_NAMES[self.cell]

    def to_meta(self) -> dict[str, Any]:
        return {"kind": self.kind, "colour": self.colour, "position": self.position, "bbox": list(self.bbox)}


def cell_bounds(cell: int, width: int, height: int) -> tuple[int, int, int, int]:
    """Pixel edges ``(x0, y0, x1, y1)`` of a grid cell (row-major, 3 x 3)."""
    row, col = divmod(cell, 3)
    return col * width // 3, row * height // 3, (col + 1) * width // 3, (row + 1) * height // 3


def random_scene(
    rng: random.Random,
    width: int,
    height: int,
    n: int,
    *,
    kinds: tuple[str, ...] = SHAPES,
    colours: tuple[str, ...] = COLOURS,
    cells: list[int] | None = None,
) -> list[Shape]:
    """``n`` shapes in distinct cells (``n <= 9``), sorted in reading order (row-major).

    Each shape is a square bounding box of side 45-80 % of the cell's short side, placed at a
    random offset with a 1 px gap to the cell edges.
    """
    if not 0 <= n <= 9:
        raise ValueError(f"a scene holds 0-9 shapes, got {n}")
    chosen = sorted(cells if cells is not None else rng.sample(range(9), n))
    shapes = []
    for cell in chosen:
        cx0, cy0, cx1, cy1 = cell_bounds(cell, width, height)
        short = min(cx1 - cx0, cy1 - cy0)
        size = rng.randint(int(0.45 * short), int(0.8 * short))
        x0 = rng.randint(cx0 + 1, cx1 - 1 - size)
        y0 = rng.randint(cy0 + 1, cy1 - 1 - size)
        shapes.append(Shape(rng.choice(kinds), rng.choice(colours), cell, (x0, y0, x0 + size, y0 + size)))
    return shapes


def draw_shape(draw: ImageDraw.ImageDraw, shape: Shape, fill: tuple[int, int, int] | None = None) -> None:
    """Draw one shape inside its bbox, aliased, in its palette colour (or ``fill``)."""
    x0, y0, x1, y1 = shape.bbox
    # PIL's coordinates are inclusive: the last pixel column is x1 - 1.
    xe, ye = x1 - 1, y1 - 1
    colour = fill if fill is not None else PALETTE[shape.colour]
    if shape.kind == "circle":
        draw.ellipse((x0, y0, xe, ye), fill=colour)
    elif shape.kind == "square":
        draw.rectangle((x0, y0, xe, ye), fill=colour)
    elif shape.kind == "triangle":
        draw.polygon(((x0 + xe) / 2, y0, xe, ye, x0, ye), fill=colour)
    elif shape.kind == "diamond":
        mx, my = (x0 + xe) / 2, (y0 + ye) / 2
        draw.polygon((mx, y0, xe, my, mx, ye, x0, my), fill=colour)
    else:
        raise ValueError(f"unknown shape kind {shape.kind!r} (known: {SHAPES})")


def render_scene(width: int, height: int, shapes: list[Shape], background: tuple[int, int, int]) -> Image.Image:
    """An RGB image with ``shapes`` drawn on a flat ``background``."""
    image = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(image)
    for shape in shapes:
        draw_shape(draw, shape)
    return image


def scene_meta(width: int, height: int, background: tuple[int, int, int], shapes: list[Shape]) -> dict[str, Any]:
    """The scene description stored in a record's ``meta`` (enough to re-derive every answer)."""
    return {"width": width, "height": height, "background": list(background), "shapes": [s.to_meta() for s in shapes]}


def box_to_1000(bbox: tuple[int, int, int, int] | list[int], width: int, height: int) -> list[int]:
    """Pixel box -> InternVL's 0-1000 integer box: ``round(x / W * 1000)``, ``round(y / H * 1000)``.

    Explained in chapter 6 (notebooks/06_data.ipynb).
    """
    x0, y0, x1, y1 = bbox
    return [round(x0 / width * 1000), round(y0 / height * 1000), round(x1 / width * 1000), round(y1 / height * 1000)]


def human_gpt(human: str, gpt: str, system: str | None = None) -> list[dict[str, str]]:
    """A one-turn conversation in InternVL's ``from``/``value`` layout."""
    conv = [{"from": "system", "value": system}] if system is not None else []
    return conv + [{"from": "human", "value": human}, {"from": "gpt", "value": gpt}]


@dataclass
class TaskContext:
    """Where one task of one split writes: images under ``out_dir / root``."""

    out_dir: Path
    split: str
    task: str

    @property
    def root(self) -> str:
        """The meta entry's ``root``, relative to the suite folder."""
        return f"images/{self.split}/{self.task}"

    def record_id(self, index: int, suffix: str = "") -> str:
        return f"{self.task}-{self.split}-{index:06d}{suffix}"

    def save(self, image: Image.Image, name: str) -> str:
        """Save a PNG under the task root and return its path relative to the root.

        Pillow writes no timestamp into PNGs, so the same pixels give the same bytes.
        """
        path = self.out_dir / self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, format="PNG")
        return name
