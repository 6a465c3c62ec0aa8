"""Browse a generated suite: a grid of samples with their question and answer.

Explained in chapter 6 (notebooks/06_data.ipynb).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

from PIL import Image

from minivl.data.records import Record, read_meta, read_records


def sample_picture(record: Record, root: Path) -> Image.Image | None:
    """One picture for a record: its image, its images side by side, or its frames in a strip."""
    if record.kind == "text":
        return None
    if record.kind == "video":
        paths = sorted((root / record.video).iterdir())
    else:
        paths = [root / p for p in record.images]
    images = [Image.open(p).convert("RGB") for p in paths]
    if len(images) == 1:
        return images[0]
    height = max(im.height for im in images)
    gap = 4
    strip = Image.new("RGB", (sum(im.width for im in images) + gap * (len(images) - 1), height), (90, 90, 90))
    x = 0
    for im in images:
        strip.paste(im, (x, 0))
        x += im.width + gap
    return strip


def _caption(record: Record, width: int = 38, max_lines: int = 4) -> str:
    """Question (first lines) and answer (last lines: a rationale's final answer) for a title."""
    question = record.turns[-2]["value"].replace("<image>\n", "").replace("<video>\n", "")
    answer = record.turns[-1]["value"]

    def wrap(text: str) -> list[str]:
        return [w for line in text.splitlines() for w in (textwrap.wrap(line, width) or [""])]

    q_lines, a_lines = wrap("Q: " + question), wrap("A: " + answer)
    if len(q_lines) > max_lines:
        q_lines = q_lines[: max_lines - 1] + ["..."]
    if len(a_lines) > max_lines:
        a_lines = ["A: ..."] + a_lines[-(max_lines - 1):]
    fault = record.extra.get("fault")
    return "\n".join(q_lines + a_lines + ([f"[fault: {fault}]"] if fault else []))


def show_samples(suite_dir: str | Path, task: str, split: str = "train", n: int = 6, cols: int = 3):
    """A matplotlib figure with the first ``n`` records of ``task``: picture, question, answer.

    Reads ``suite_dir/{split}.json`` (or ``{split}_faulty.json`` for the ``faulty`` task);
    malformed records (placeholder faults) are skipped. One axis per shown record.

    Explained in chapter 6 (notebooks/06_data.ipynb).
    """
    import matplotlib.pyplot as plt

    suite_dir = Path(suite_dir)
    meta_path = suite_dir / (f"{split}_faulty.json" if task == "faulty" else f"{split}.json")
    metas = read_meta(meta_path)
    if task not in metas:
        raise KeyError(f"{meta_path}: no task {task!r} (has: {', '.join(metas)})")
    meta = metas[task]
    records, _ = read_records(meta.annotation_path, strict=False)
    records = records[:n]
    if not records:
        raise ValueError(f"{meta.annotation_path}: no valid records to show")
    cols = min(cols, len(records))
    rows = -(-len(records) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 3.9 * rows), squeeze=False)
    for ax in axes.flat[len(records):]:
        fig.delaxes(ax)
    for ax, record in zip(axes.flat, records):
        picture = sample_picture(record, meta.root_path)
        if picture is None:
            ax.text(0.5, 0.5, "(text only)", ha="center", va="center", fontsize=10, color="0.5")
        else:
            ax.imshow(picture)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(_caption(record), fontsize=7, loc="left")
    fig.tight_layout()
    return fig
