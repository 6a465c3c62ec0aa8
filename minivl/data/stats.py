"""Looking at a training mixture before training on it: samples, tokens, tiles, prompts.

InternVL 2.5 balances its data by hand: each meta entry's ``repeat_time`` scales how often its
records are seen, and each entry's ``max_dynamic_patch`` sets how many tiles (so how many
image tokens) its images cost. This module answers the questions one asks of such a mixture:

* :func:`mixture_table`: records per data set, samples after ``repeat_time``, share of the
  mixture in samples and (given token statistics) in tokens;
* :func:`planned_tiles` / :func:`tile_count_table`: how many tiles each record will give,
  computed from the image sizes alone (no pixels decoded), as the data set will tile it;
* :func:`token_length_stats`: tokens, image tokens and supervised tokens per sample, from
  the samples the data set really builds;
* :func:`abbreviate_prompt` / :func:`supervised_spans`: a sample's ``input_ids`` as readable
  text with each ``<IMG_CONTEXT>`` run shortened, and the pieces the loss is computed on.

Explained in chapter 6 (notebooks/06_data.ipynb).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from minivl.data.dataset import DataConfig, SupervisedDataset
from minivl.data.records import DatasetMeta, Record, apply_repeat_time, read_meta, read_records
from minivl.text.prompt import IGNORE_TOKEN_ID
from minivl.text.tokenizer import IMG_CONTEXT_TOKEN, image_token_id
from minivl.vision.tiling import num_tiles, tiles_per_image

_FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif")


# --------------------------------------------------------------------------------------------
# the mixture
# --------------------------------------------------------------------------------------------


def mixture_table(
    meta: str | os.PathLike | Mapping[str, DatasetMeta],
    token_stats: Mapping[str, Mapping[str, float]] | None = None,
) -> list[dict[str, Any]]:
    """One row per meta entry: what ``repeat_time`` does to it and its share of the mixture.

    Columns: ``name``, ``records`` (valid lines of its JSONL), ``bad_lines`` (malformed lines,
    dropped and counted), ``repeat_time``, ``samples`` (records after ``repeat_time``:
    ``int(records * r)`` for ``r < 1``, ``records * r`` otherwise), ``share`` (samples / all
    samples), ``data_augment`` and ``max_dynamic_patch``. With ``token_stats`` (``{name:
    {"tokens_mean": ...}}``, e.g. from :func:`token_length_stats`), also ``tokens`` (samples x
    mean tokens per sample) and ``token_share``.

    Explained in chapter 6 (notebooks/06_data.ipynb).
    """
    metas = read_meta(meta) if isinstance(meta, (str, os.PathLike)) else dict(meta)
    rows = []
    for name, m in metas.items():
        records, bad = read_records(m.annotation_path, strict=False)
        samples = len(apply_repeat_time(range(len(records)), m.repeat_time, where=f"meta entry {name!r}"))
        rows.append({
            "name": name, "records": len(records), "bad_lines": sum(bad.values()), "repeat_time": m.repeat_time,
            "samples": samples, "data_augment": m.data_augment, "max_dynamic_patch": m.max_dynamic_patch,
        })
    total = sum(r["samples"] for r in rows)
    for r in rows:
        r["share"] = r["samples"] / total if total else 0.0
    if token_stats is not None:
        missing = [r["name"] for r in rows if r["name"] not in token_stats]
        if missing:
            raise KeyError(f"mixture_table: token_stats has no entry for {missing}; it has {sorted(token_stats)}")
        for r in rows:
            r["tokens"] = r["samples"] * float(token_stats[r["name"]]["tokens_mean"])
        total_tokens = sum(r["tokens"] for r in rows)
        for r in rows:
            r["token_share"] = r["tokens"] / total_tokens if total_tokens else 0.0
    return rows


# --------------------------------------------------------------------------------------------
# tiles
# --------------------------------------------------------------------------------------------


def _image_size(record: Record, meta: DatasetMeta, k: int) -> tuple[int, int]:
    """``(width, height)`` of the record's k-th image: from the record when it says, else the file header."""
    if record.width_list is not None and record.height_list is not None:
        return record.width_list[k], record.height_list[k]
    from PIL import Image

    path = meta.image_path(record.images[k])
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    with Image.open(path) as im:  # reads the header only
        return im.size


def planned_tiles(record: Record, meta: DatasetMeta, config: DataConfig, *, train: bool = False) -> list[int]:
    """Tiles per image that :class:`~minivl.data.dataset.SupervisedDataset` will give ``record``.

    Computed from the image sizes alone (the record's ``width``/``height`` lists, else the
    image file's header), with the same budgets as the data set: a single image gets the
    entry's ``max_dynamic_patch`` (else ``config.max_dynamic_patch``), each of ``n`` images
    ``max(1, max_num // n)``, each with its own thumbnail when it has more than one tile; a
    video one tile per sampled frame. Text records give ``[]`` (the data set adds one dummy
    tile with ``image_flags`` 0).

    Video frame counts: with ``train=False``, ``min(max_num_frame, frames in the folder)``
    (interval midpoints); with ``train=True`` the count is drawn per epoch from
    ``[min_num_frame, max_num_frame]``, so this raises ``ValueError`` unless the two are equal.

    Explained in chapter 6 (notebooks/06_data.ipynb).
    """
    max_num = meta.max_dynamic_patch or config.max_dynamic_patch
    kw = dict(min_num=config.min_dynamic_patch, image_size=config.image_size, use_thumbnail=config.use_thumbnail)
    if record.kind == "image":
        w, h = _image_size(record, meta, 0)
        return [num_tiles(w, h, max_num=max_num, **kw)]
    if record.kind == "multi_image":
        per = tiles_per_image(record.num_images, max_num)
        return [num_tiles(*_image_size(record, meta, k), max_num=per, **kw) for k in range(record.num_images)]
    if record.kind == "video":
        if train:
            if config.min_num_frame != config.max_num_frame:
                raise ValueError(f"planned_tiles: {meta.name} id={record.id}: in training the frame count is drawn "
                                 f"from [{config.min_num_frame}, {config.max_num_frame}] per epoch; "
                                 "use train=False or equal min_num_frame and max_num_frame")
            return [1] * config.max_num_frame
        folder = meta.image_path(record.video)
        if not folder.is_dir():
            raise FileNotFoundError(f"no video folder: {folder}")
        n = sum(1 for p in folder.iterdir() if p.suffix.lower() in _FRAME_SUFFIXES)
        return [1] * min(config.max_num_frame, n)
    return []


def tile_count_table(
    datasets: Sequence[SupervisedDataset], limit: int | None = None, *, train: bool = False
) -> list[dict[str, Any]]:
    """Per data set, the distribution of tiles per sample (:func:`planned_tiles`, no pixels read).

    Looks at the first ``limit`` records of each data set (all when ``None``). Columns:
    ``name``, ``records``, ``histogram`` (``Counter``: tiles per sample -> records; a text
    record counts as its one dummy tile), ``mean``, ``min``, ``max``, ``images_per_record``
    (mean) and ``unreadable`` (records whose image files are missing, not counted elsewhere).

    Explained in chapter 6 (notebooks/06_data.ipynb).
    """
    rows = []
    for d in datasets:
        records = d.records if limit is None else d.records[:limit]
        hist: Counter[int] = Counter()
        images, unreadable = 0, 0
        for record in records:
            try:
                tiles = planned_tiles(record, d.meta, d.config, train=train)
            except (FileNotFoundError, OSError):
                unreadable += 1
                continue
            total = sum(tiles) if tiles else (1 if d.config.dummy_tile_for_text else 0)
            hist[total] += 1
            images += len(tiles)
        n = sum(hist.values())
        rows.append({
            "name": d.meta.name, "records": n, "histogram": hist,
            "mean": sum(k * v for k, v in hist.items()) / n if n else 0.0,
            "min": min(hist) if hist else 0, "max": max(hist) if hist else 0,
            "images_per_record": images / n if n else 0.0, "unreadable": unreadable,
        })
    return rows


# --------------------------------------------------------------------------------------------
# tokens
# --------------------------------------------------------------------------------------------


def token_length_stats(dataset: SupervisedDataset, limit: int | None = None) -> dict[str, Any]:
    """Build the first ``limit`` samples of ``dataset`` (all when ``None``) and summarise them.

    Returns ``name``, ``samples`` (built), ``skipped``, ``tokens_mean`` / ``tokens_min`` /
    ``tokens_max`` (length of ``input_ids``), ``image_tokens_mean`` (``<IMG_CONTEXT>``
    tokens), ``supervised_mean`` (labels != -100), ``tiles_mean`` (rows of ``pixel_values``,
    the dummy tile of text samples included) and ``lengths`` (every built sample's length, in
    order). Skips are counted by the data set as usual (``dataset.skips``).

    Explained in chapter 6 (notebooks/06_data.ipynb).
    """
    context = image_token_id(dataset.tokenizer)
    n = len(dataset) if limit is None else min(limit, len(dataset))
    lengths, image_tokens, supervised, tiles = [], [], [], []
    skipped = 0
    for i in range(n):
        sample = dataset[i]
        if sample is None:
            skipped += 1
            continue
        lengths.append(int(sample["input_ids"].numel()))
        image_tokens.append(int((sample["input_ids"] == context).sum()))
        supervised.append(int((sample["labels"] != IGNORE_TOKEN_ID).sum()))
        tiles.append(int(sample["pixel_values"].shape[0]))
    built = len(lengths)

    def mean(values: list[int]) -> float:
        return sum(values) / built if built else 0.0

    return {
        "name": dataset.meta.name, "samples": built, "skipped": skipped,
        "tokens_mean": mean(lengths), "tokens_min": min(lengths, default=0), "tokens_max": max(lengths, default=0),
        "image_tokens_mean": mean(image_tokens), "supervised_mean": mean(supervised), "tiles_mean": mean(tiles),
        "lengths": lengths,
    }


def abbreviate_prompt(input_ids: Any, tokenizer: Any) -> str:
    """Decode ``input_ids`` with every run of ``<IMG_CONTEXT>`` written once, as ``<IMG_CONTEXT>×n``.

    Explained in chapter 6 (notebooks/06_data.ipynb).
    """
    ids = [int(t) for t in (input_ids.tolist() if hasattr(input_ids, "tolist") else input_ids)]
    context = image_token_id(tokenizer)
    out, chunk, k = [], [], 0
    while k < len(ids):
        if ids[k] != context:
            chunk.append(ids[k])
            k += 1
            continue
        run = k
        while k < len(ids) and ids[k] == context:
            k += 1
        if chunk:
            out.append(tokenizer.decode(chunk))
            chunk = []
        out.append(f"{IMG_CONTEXT_TOKEN}×{k - run}")
    if chunk:
        out.append(tokenizer.decode(chunk))
    return "".join(out)


def supervised_spans(input_ids: Any, labels: Any, tokenizer: Any) -> list[str]:
    """The decoded runs of consecutive supervised tokens (labels != -100), in order.

    In InternVL 2.5's format each assistant answer is one run: its text and ``<|im_end|>``.
    Raises ``ValueError`` when a supervised label differs from its input token (labels are
    aligned with ``input_ids``; the one-token shift happens inside the loss).

    Explained in chapter 6 (notebooks/06_data.ipynb).
    """
    ids = [int(t) for t in (input_ids.tolist() if hasattr(input_ids, "tolist") else input_ids)]
    labs = [int(t) for t in (labels.tolist() if hasattr(labels, "tolist") else labels)]
    if len(ids) != len(labs):
        raise ValueError(f"supervised_spans: {len(ids)} input_ids but {len(labs)} labels")
    spans, run = [], []
    for pos, (tid, lab) in enumerate(zip(ids, labs)):
        if lab == IGNORE_TOKEN_ID:
            if run:
                spans.append(tokenizer.decode(run))
                run = []
            continue
        if lab != tid:
            raise ValueError(f"supervised_spans: label {lab} at position {pos} differs from input id {tid}")
        run.append(tid)
    if run:
        spans.append(tokenizer.decode(run))
    return spans


# --------------------------------------------------------------------------------------------
# printing
# --------------------------------------------------------------------------------------------


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """Rows of dicts as an aligned plain-text table (floats with 2 decimals, shares as %).

    ``columns`` picks and orders the keys (default: the first row's keys, minus lists,
    Counters and dicts). A column whose name ends in ``share`` prints as a percentage.

    Explained in chapter 6 (notebooks/06_data.ipynb).
    """
    if not rows:
        return "(no rows)"
    if columns is None:
        columns = [k for k, v in rows[0].items() if not isinstance(v, (list, dict, Counter))]

    def cell(key: str, value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, bool):
            return "yes" if value else "no"
        if isinstance(value, float):
            if key.endswith("share"):
                return f"{100 * value:.1f}%"
            return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.2f}"
        if isinstance(value, int):
            return f"{value:,}"
        return str(value)

    table = [[cell(c, r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(t[i]) for t in table)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(columns, widths)))]
    lines.append("  ".join("-" * w for w in widths))
    for t in table:
        lines.append("  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(t, widths))))
    return "\n".join(lines)

