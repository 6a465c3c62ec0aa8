"""Benchmarks as lists of :class:`EvalItem`: the synthetic suite's test split and four real sets.

Every loader returns plain :class:`EvalItem` objects, so the harness in
:mod:`minivl.eval.bench` scores the synthetic suite and MMMU with the same code. An item
holds the question **without** image placeholders and without the answer instruction; the
harness adds both (``<image>\\n``, ``Image-k: <image>`` lines or ``Frame-k: <image>`` lines in
front, the direct or CoT sentence of :mod:`minivl.eval.prompts` after).

| benchmark | loader | metric | tiles (``max_num``) |
|---|---|---|---|
| synthetic suite (test split) | :func:`load_synthetic_bench` | per task, below | the meta JSON's ``max_dynamic_patch`` |
| MMMU validation | :func:`load_mmmu` | multiple choice; open questions: ``open`` | 12, ``max(1, min(12, 64 // n))`` per image, first image upscaled 2x |
| ChartQA test | :func:`load_chartqa` | relaxed accuracy | 12 |
| DocVQA validation | :func:`load_docvqa` | ANLS | 18 |
| AI2D test | :func:`load_ai2d` | multiple choice | 6 |

The tile budgets are those of VLMEvalKit's InternVL wrapper, which produced the report's
numbers (``set_max_num``: 12 for MMMU and ChartQA, 18 for DocVQA, 6 otherwise).

Synthetic tasks and their metrics (the table of :data:`minivl.eval.suite.METRIC`):

| task | metric | why |
|---|---|---|
| ``shape_qa``, ``small_text``, ``multi_image``, ``video`` | ``exact`` | one short right answer |
| ``chart`` | ``relaxed`` | ChartQA's rule: numbers within 5 %, other answers exact |
| ``grounding`` | ``iou@0.5`` | RefCOCO's rule on the first box |
| ``reasoning`` | ``choice`` | one item per instance; the record pair gives the direct and CoT prompts |
| ``text_only`` (only when asked for) | ``exact`` | sorted word lists have one right answer |

``caption`` is never scored: a scene has many right descriptions and exact match would
measure wording, not perception. ``faulty`` holds deliberately broken records.

Synthetic items keep the prompts the model was trained with (``EvalItem.prompts``): the
question alone for open tasks, and the suite's own direct and CoT sentences for
``reasoning``. A mode without a stored prompt gets the report's prompt from
:func:`minivl.eval.prompts.build_prompt`.

Explained in chapter 15 (notebooks/15_evaluation_and_test_time_scaling.ipynb).
"""

from __future__ import annotations

import ast
import os
import string
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from minivl.data.records import Record, read_meta
from minivl.eval.suite import METRIC as SYNTHETIC_METRIC
from minivl.eval.suite import SCORED_TASKS as SYNTHETIC_TASKS

#: Metric names an item may carry (see :func:`minivl.eval.bench.score_answer`).
METRICS = ("choice", "exact", "relaxed", "anls", "iou@0.5", "open")

#: Tile budgets of VLMEvalKit's InternVL wrapper (``set_max_num``), used by the real benchmarks.
MAX_NUM = {"mmmu": 12, "chartqa": 12, "docvqa": 18, "ai2d": 6}

#: Direct-answer token budgets of InternVL's own scripts (``eval/*``): 10 for MMMU and
#: AI2D-like short answers, 100 for document and chart questions.
MAX_NEW_TOKENS = {"mmmu": 10, "chartqa": 100, "docvqa": 100, "ai2d": 10}

_FRAME_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass
class EvalItem:
    """One benchmark question, whatever its source.

    * ``id``, ``task``: a unique id and the task (benchmark) name results are grouped by;
    * ``question``: the question text without image placeholders or answer instruction;
    * ``answers``: the gold answers (multiple choice: the letter; grounding: the gold
      ``<box>[[x1, y1, x2, y2]]</box>`` text in 0-1000 coordinates; open: one or more strings);
    * ``metric``: one of :data:`METRICS`; ``kind``: ``"mc"``, ``"open"`` or ``"grounding"``;
    * ``images``: image paths or PIL images, in order (video: the frames);
      ``video``: the images are frames (one tile each, ``Frame-k`` lines);
    * ``options``: the option texts of a multiple-choice question (letters A, B, ...);
    * ``image_size``: ``(width, height)`` the boxes refer to (grounding);
    * ``max_num``: the tile budget; ``tiles_per_image``: an explicit budget per image (else
      :func:`minivl.vision.transforms.load_image_tiles`'s ``max(1, max_num // n)``);
      ``upscale_first``: enlarge the first image 2x (bilinear) before tiling (MMMU);
    * ``max_new_tokens``: the direct-answer budget; ``hint``: text put before the question;
    * ``prompts``: exact prompt bodies per mode (``{"direct": ..., "cot": ...}``) that replace
      :func:`~minivl.eval.prompts.build_prompt` for that mode;
    * ``extra``: anything else (subject, subset, source row).

    Explained in chapter 15 (notebooks/15_evaluation_and_test_time_scaling.ipynb).
    """

    id: str
    task: str
    question: str
    answers: list[str]
    metric: str
    kind: str = "open"
    images: list[Any] = field(default_factory=list)
    video: bool = False
    options: list[str] | None = None
    image_size: tuple[int, int] | None = None
    max_num: int = 6
    tiles_per_image: list[int] | None = None
    upscale_first: bool = False
    max_new_tokens: int = 64
    hint: str | None = None
    prompts: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        where = f"EvalItem {self.id!r}"
        if self.metric not in METRICS:
            raise ValueError(f"{where}: unknown metric {self.metric!r} (known: {', '.join(METRICS)})")
        if self.kind not in ("mc", "open", "grounding"):
            raise ValueError(f"{where}: kind must be 'mc', 'open' or 'grounding', got {self.kind!r}")
        if not self.answers:
            raise ValueError(f"{where}: no gold answer")
        if self.kind == "mc":
            if not self.options:
                raise ValueError(f"{where}: a multiple-choice item needs options")
            letters = string.ascii_uppercase[: len(self.options)]
            if self.answers[0] not in letters:
                raise ValueError(f"{where}: gold {self.answers[0]!r} is not one of the option letters {letters}")
        if self.metric == "iou@0.5" and self.image_size is None:
            raise ValueError(f"{where}: a grounding item needs image_size=(width, height)")
        if self.tiles_per_image is not None and len(self.tiles_per_image) != len(self.images):
            raise ValueError(f"{where}: {len(self.tiles_per_image)} tile budgets for {len(self.images)} images")

    @property
    def gold(self) -> str:
        """The first gold answer (the letter of a multiple-choice item)."""
        return self.answers[0]


# ---------------------------------------------------------------------------------------
# The synthetic suite


def _strip_placeholders(text: str, record: Record, where: str) -> str:
    """The question of a synthetic record without its ``<image>`` / ``Image-k`` / ``<video>`` prefix."""
    from minivl.text.prompt import multi_image_prefix

    if record.kind == "image":
        prefix = "<image>\n"
    elif record.kind == "multi_image":
        prefix = multi_image_prefix(record.num_images)
    elif record.kind == "video":
        prefix = "<video>\n"
    else:
        prefix = ""
    if not text.startswith(prefix) or "<image>" in text[len(prefix):] or "<video>" in text[len(prefix):]:
        raise ValueError(f"{where}: expected the question to start with {prefix!r} and hold no other placeholder, "
                         f"got {text[:80]!r}")
    return text[len(prefix):]


def _frames(folder: Path, where: str) -> list[Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"{where}: video folder {folder} not found")
    frames = sorted(p for p in folder.iterdir() if p.suffix.lower() in _FRAME_SUFFIXES)
    if not frames:
        raise FileNotFoundError(f"{where}: no frames (.png/.jpg) in {folder}")
    return frames


def _human_gold(record: Record, where: str) -> tuple[str, str]:
    turns = record.turns
    if len(turns) != 2 or turns[0]["from"] != "human" or turns[1]["from"] != "gpt":
        raise ValueError(f"{where}: expected one human turn and one gpt turn, got {[t['from'] for t in turns]}")
    return turns[0]["value"], turns[1]["value"]


def load_synthetic_bench(meta_path: str | os.PathLike, tasks: Sequence[str] | None = None,
                         per_task: int | None = None, max_num: int | None = None) -> list[EvalItem]:
    """The synthetic suite's split described by ``meta_path`` (e.g. ``data/synth/test.json``) as items.

    ``tasks`` defaults to every scored task present (:data:`minivl.eval.suite.SCORED_TASKS`);
    ``text_only`` may be asked for by name; ``caption`` and ``faulty`` raise ``ValueError``.
    ``per_task`` keeps the first items of each task; ``max_num`` overrides every task's tile
    budget (the meta JSON's ``max_dynamic_patch``, 6 when absent). The ``reasoning`` records
    come in pairs (``-cot`` and ``-direct`` of one instance): they become one item whose
    ``prompts`` hold both trained prompts. The metric of each task is in the module docstring.

    Explained in chapter 15 (notebooks/15_evaluation_and_test_time_scaling.ipynb).
    """
    metas = read_meta(meta_path)
    metric_of = dict(SYNTHETIC_METRIC, text_only="exact")
    if tasks is None:
        tasks = [t for t in SYNTHETIC_TASKS if t in metas]
    items: list[EvalItem] = []
    for task in tasks:
        if task in ("caption", "faulty"):
            raise ValueError(f"{meta_path}: task {task!r} is not scored (caption: many right answers; "
                             f"faulty: broken on purpose)")
        if task not in metric_of:
            raise ValueError(f"{meta_path}: unknown task {task!r} (scored: {', '.join(metric_of)})")
        if task not in metas:
            raise KeyError(f"{meta_path}: no entry {task!r} (entries: {', '.join(metas)})")
        meta = metas[task]
        budget = max_num or meta.max_dynamic_patch or 6
        records, _ = meta.read_records(strict=True)
        task_items = (_reasoning_items(records, meta, budget, str(meta_path)) if task == "reasoning"
                      else [_synthetic_item(task, r, meta, budget, metric_of[task], str(meta_path)) for r in records])
        items += task_items[:per_task] if per_task is not None else task_items
    return items


def _synthetic_item(task: str, record: Record, meta, budget: int, metric: str, meta_path: str) -> EvalItem:
    where = f"{meta_path} [{task}] record {record.id}"
    human, gold = _human_gold(record, where)
    question = _strip_placeholders(human, record, where)
    info = record.extra.get("meta", {})
    if record.kind == "video":
        images: list[Any] = _frames(meta.image_path(record.video), where)
    else:
        images = [meta.image_path(p) for p in record.images]
    image_size = None
    kind = "open"
    if metric == "iou@0.5":
        kind = "grounding"
        if "width" not in info or "height" not in info:
            raise KeyError(f"{where}: grounding needs meta.width and meta.height")
        image_size = (int(info["width"]), int(info["height"]))
    return EvalItem(
        id=str(record.id), task=task, question=question, answers=[gold], metric=metric, kind=kind,
        images=images, video=record.kind == "video", image_size=image_size, max_num=budget,
        max_new_tokens=48, prompts={"direct": question}, extra={"meta": info},
    )


def _reasoning_items(records: Sequence[Record], meta, budget: int, meta_path: str) -> list[EvalItem]:
    pairs: dict[str, dict[str, Record]] = {}
    for record in records:
        info = record.extra.get("meta", {})
        for key in ("instance", "variant", "options", "answer_letter"):
            if key not in info:
                raise KeyError(f"{meta_path} [reasoning] record {record.id}: meta has no {key!r}")
        pairs.setdefault(info["instance"], {})[info["variant"]] = record
    items = []
    for instance, variants in pairs.items():
        where = f"{meta_path} [reasoning] instance {instance}"
        first = variants.get("direct") or next(iter(variants.values()))
        info = first.extra["meta"]
        prompts = {}
        for variant, record in variants.items():
            prompts[variant] = _strip_placeholders(_human_gold(record, where)[0], record, where)
        # The question is the first lines of the prompt, before "A. <option 1>".
        body = next(iter(prompts.values()))
        question = body.split("\nA. ", 1)[0]
        items.append(EvalItem(
            id=str(instance), task="reasoning", question=question, answers=[info["answer_letter"]], metric="choice",
            kind="mc", images=[meta.image_path(p) for p in first.images], options=[str(o) for o in info["options"]],
            max_num=budget, max_new_tokens=16, prompts=prompts, extra={"meta": info},
        ))
    return items


# ---------------------------------------------------------------------------------------
# Real benchmarks through `datasets`


def _load_rows(path: str | os.PathLike, split: str):
    """A ``datasets.Dataset`` from a local folder / file (or a Hub id when online)."""
    from minivl.data.hub import load_hub_dataset

    return load_hub_dataset(path, split=split)


def _column(row: dict, names: Sequence[str], where: str) -> Any:
    for name in names:
        if name in row:
            return row[name]
    raise KeyError(f"{where}: none of the columns {list(names)} (columns: {sorted(row)})")


def _as_list(value: Any) -> list[str]:
    """A gold answer column as a list of strings (a list, a list literal, or one string)."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    text = str(value)
    if text.startswith("[") and text.endswith("]"):
        try:
            parsed = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return [text]
        if isinstance(parsed, (list, tuple)):
            return [str(v) for v in parsed]
    return [text]


def mmmu_tiles(n_images: int, max_num: int = 12) -> int:
    """VLMEvalKit's per-image tile budget for an ``n_images`` question: ``max(1, min(max_num, 64 // n))``.

    Explained in chapter 15 (notebooks/15_evaluation_and_test_time_scaling.ipynb).
    """
    if n_images < 1:
        raise ValueError(f"mmmu_tiles: n_images must be >= 1, got {n_images}")
    return max(1, min(max_num, 64 // n_images))


def load_mmmu(path: str | os.PathLike, split: str = "validation", max_num: int = MAX_NUM["mmmu"],
              limit: int | None = None) -> list[EvalItem]:
    """MMMU rows (``MMMU/MMMU`` schema) as items.

    Columns used: ``id``, ``question``, ``options`` (the string repr of a Python list, parsed
    with :func:`minivl.data.hub.parse_options`), ``answer``, ``question_type``
    (``"multiple-choice"`` or ``"open"``) and ``image_1`` .. ``image_7``. The Hub data set has
    one config per subject: concatenate the 30 validation subsets (``concatenate_datasets``)
    and ``save_to_disk`` them to score the 900 validation questions at once.

    Images, as in VLMEvalKit's InternVL wrapper (the report's numbers): the non-empty images
    in order become ``Image-1: <image>`` .. lines in front of the question, while the
    ``<image k>`` references inside the text stay literal; each image gets
    :func:`mmmu_tiles` tiles; the first image is upscaled 2x (bilinear) before tiling.
    Multiple-choice questions render their options as ``A. ...`` lines. Open questions
    (``question_type == "open"`` or no options) get the open-answer instruction, as InternVL's
    own ``evaluate_mmmu.py`` does, and the ``open`` metric (see
    :func:`minivl.eval.bench.open_match`); their ``answer`` may be a list literal of right answers.

    Explained in chapter 15 (notebooks/15_evaluation_and_test_time_scaling.ipynb).
    """
    from minivl.data.hub import parse_options

    rows = _load_rows(path, split)
    items = []
    for index, row in enumerate(rows):
        if limit is not None and len(items) >= limit:
            break
        rid = str(row.get("id") or f"mmmu-{index}")
        where = f"MMMU {path} row {index} ({rid})"
        question, answer = _column(row, ["question"], where), _column(row, ["answer"], where)
        images = [row[f"image_{k}"] for k in range(1, 8) if row.get(f"image_{k}") is not None]
        options = parse_options(row.get("options"), f"{where} options")
        is_open = row.get("question_type") == "open" or not options
        per_image = mmmu_tiles(len(images), max_num) if images else max_num
        common = dict(id=rid, task="mmmu", question=str(question), images=images, max_num=max_num,
                      tiles_per_image=[per_image] * len(images) or None, upscale_first=bool(images),
                      max_new_tokens=MAX_NEW_TOKENS["mmmu"],
                      extra={"subject": "_".join(rid.split("_")[1:-1]),
                             "question_type": row.get("question_type")})
        if is_open:
            golds = _as_list(answer)
            if not golds:
                raise ValueError(f"{where}: empty answer")
            items.append(EvalItem(answers=golds, metric="open", kind="open", **common))
        else:
            letter = str(answer).strip()
            items.append(EvalItem(answers=[letter], metric="choice", kind="mc", options=options, **common))
    return items


def load_chartqa(path: str | os.PathLike, split: str = "test", max_num: int = MAX_NUM["chartqa"],
                 limit: int | None = None) -> list[EvalItem]:
    """ChartQA rows as items scored by relaxed accuracy.

    Schema of ``HuggingFaceM4/ChartQA``: ``image``, ``query``, ``label`` (a list with the
    answer), ``human_or_machine`` (0 = human-written, 1 = augmented). The ``lmms-lab/ChartQA``
    names ``question`` / ``answer`` / ``type`` are accepted too. The subset goes to
    ``extra["subset"]``; the report's number is the mean over the human and augmented test
    sets, which hold 1250 questions each, so it equals the mean over all questions.

    Explained in chapter 15 (notebooks/15_evaluation_and_test_time_scaling.ipynb).
    """
    rows = _load_rows(path, split)
    items = []
    for index, row in enumerate(rows):
        if limit is not None and len(items) >= limit:
            break
        where = f"ChartQA {path} row {index}"
        golds = _as_list(_column(row, ["label", "answer"], where))
        if not golds:
            raise ValueError(f"{where}: empty answer")
        subset = row.get("human_or_machine", row.get("type"))
        if subset in (0, 1):
            subset = ("human", "augmented")[subset]
        items.append(EvalItem(
            id=f"chartqa-{index}", task="chartqa", question=str(_column(row, ["query", "question"], where)),
            answers=golds, metric="relaxed", images=[_column(row, ["image"], where)], max_num=max_num,
            max_new_tokens=MAX_NEW_TOKENS["chartqa"], extra={"subset": subset},
        ))
    return items


def load_docvqa(path: str | os.PathLike, split: str = "validation", max_num: int = MAX_NUM["docvqa"],
                limit: int | None = None) -> list[EvalItem]:
    """DocVQA rows (``lmms-lab/DocVQA``, config ``DocVQA``) as items scored by ANLS.

    Columns used: ``questionId``, ``question``, ``answers`` (a list) and ``image``. The test
    split's answers are hidden (scored by the DocVQA server), so rows without answers raise.

    Explained in chapter 15 (notebooks/15_evaluation_and_test_time_scaling.ipynb).
    """
    rows = _load_rows(path, split)
    items = []
    for index, row in enumerate(rows):
        if limit is not None and len(items) >= limit:
            break
        where = f"DocVQA {path} row {index}"
        golds = _as_list(_column(row, ["answers", "answer"], where))
        if not golds:
            raise ValueError(f"{where}: no answers (the test split's answers are hidden; score the validation split)")
        qid = row.get("questionId", index)
        items.append(EvalItem(
            id=f"docvqa-{qid}", task="docvqa", question=str(_column(row, ["question"], where)), answers=golds,
            metric="anls", images=[_column(row, ["image"], where)], max_num=max_num,
            max_new_tokens=MAX_NEW_TOKENS["docvqa"], extra={"question_types": row.get("question_types")},
        ))
    return items


def load_ai2d(path: str | os.PathLike, split: str = "test", max_num: int = MAX_NUM["ai2d"],
              limit: int | None = None) -> list[EvalItem]:
    """AI2D rows (``lmms-lab/ai2d`` schema: ``question``, ``options`` list, ``answer``, ``image``) as
    multiple-choice items.

    ``answer`` is the option's index as a string (``"0"`` .. ``"3"``), as in ``lmms-lab/ai2d``;
    a letter ``A``.. is accepted too. This is the usual test set with the diagram's letters
    masked ("w/ mask" in the report's table).

    Explained in chapter 15 (notebooks/15_evaluation_and_test_time_scaling.ipynb).
    """
    from minivl.data.hub import parse_options

    rows = _load_rows(path, split)
    items = []
    for index, row in enumerate(rows):
        if limit is not None and len(items) >= limit:
            break
        where = f"AI2D {path} row {index}"
        options = parse_options(_column(row, ["options"], where), f"{where} options")
        answer = str(_column(row, ["answer"], where)).strip()
        if answer.isdigit():
            if not 0 <= int(answer) < len(options):
                raise ValueError(f"{where}: answer index {answer} outside the {len(options)} options")
            answer = string.ascii_uppercase[int(answer)]
        items.append(EvalItem(
            id=f"ai2d-{index}", task="ai2d", question=str(_column(row, ["question"], where)), answers=[answer],
            metric="choice", kind="mc", options=options, images=[_column(row, ["image"], where)],
            max_num=max_num, max_new_tokens=MAX_NEW_TOKENS["ai2d"],
        ))
    return items


#: The loaders :func:`load_benchmark` knows, by name.
LOADERS = {"mmmu": load_mmmu, "chartqa": load_chartqa, "docvqa": load_docvqa, "ai2d": load_ai2d}


def load_benchmark(name: str, path: str | os.PathLike, split: str | None = None, limit: int | None = None,
                   max_num: int | None = None, tasks: Sequence[str] | None = None) -> list[EvalItem]:
    """Items of benchmark ``name``: ``"synthetic"`` (``path`` = a meta JSON), or one of
    :data:`LOADERS` (``path`` = a saved data set folder or file; ``split`` defaults to the
    loader's own). ``limit`` keeps the first items (per task for the synthetic suite).

    Explained in chapter 15 (notebooks/15_evaluation_and_test_time_scaling.ipynb).
    """
    if name == "synthetic":
        return load_synthetic_bench(path, tasks=tasks, per_task=limit, max_num=max_num)
    if name not in LOADERS:
        raise ValueError(f"unknown benchmark {name!r} (known: synthetic, {', '.join(LOADERS)})")
    kwargs: dict[str, Any] = {"limit": limit}
    if split is not None:
        kwargs["split"] = split
    if max_num is not None:
        kwargs["max_num"] = max_num
    return LOADERS[name](path, **kwargs)
