"""Scoring a model on the synthetic suite's held-out split, one metric per task.

| task | metric |
|---|---|
| ``shape_qa``, ``small_text``, ``multi_image``, ``video`` | exact match (normalised) |
| ``chart`` | ChartQA relaxed accuracy (numbers within 5 %) |
| ``grounding`` | IoU >= 0.5 of the first ``[[x1, y1, x2, y2]]`` (0-1000) with the gold box |
| ``reasoning`` | multiple-choice accuracy after answer extraction (``\\boxed{}``, ``Answer:``, letter) |

``caption`` (many right answers), ``text_only`` and ``faulty`` are not scored. Unparseable
answers (no box, no option letter) count as wrong and are reported per task.

Explained in chapter 15 (notebooks/15_evaluation_and_test_time_scaling.ipynb).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from minivl.data.records import Record, read_meta
from minivl.eval.extract import extract_choice
from minivl.eval.metrics import box_iou, exact_match, parse_box, relaxed_correctness

SCORED_TASKS = ("shape_qa", "small_text", "chart", "grounding", "multi_image", "video", "reasoning")
METRIC = {"shape_qa": "exact", "small_text": "exact", "multi_image": "exact", "video": "exact",
          "chart": "relaxed", "grounding": "iou@0.5", "reasoning": "choice"}
_FRAME_SUFFIXES = (".png", ".jpg", ".jpeg")
OPTION_LETTERS = "ABCDEFGH"  # the letters of a multiple-choice record's options, in order


@dataclass
class TaskScore:
    """One task's result: mean score, counts and a few (prediction, answer) examples."""

    task: str
    metric: str
    score: float
    n: int
    unparseable: int = 0
    examples: list[tuple[str, str]] = field(default_factory=list)
    # records whose meta names a ``question_type`` (shape_qa: count / colour / position):
    # type -> (mean score, number of records)
    by_type: dict[str, tuple[float, int]] = field(default_factory=dict)
    # with ``evaluate_suite(group_by=...)``: group -> (mean score, number of records), records
    # the function maps to None left out
    by_group: dict[Hashable, tuple[float, int]] = field(default_factory=dict)


def scene_question_group(record: Record) -> tuple[str, int] | None:
    """``(question type, number of shapes)`` of a shape-scene question (``shape_qa``), else None:
    a ``group_by`` for :func:`evaluate_suite` that shows whether errors grow with the shapes in
    the image (chapter 15: a model that sees one shape but cannot yet bind colour to kind
    among several)."""
    meta = record.extra.get("meta", {})
    if "question_type" not in meta or "shapes" not in meta:
        return None
    return meta["question_type"], len(meta["shapes"])


def colour_binding_group(record: Record) -> tuple[int, str] | None:
    """``(number of shapes, "shared" | "unique")`` of a ``shape_qa`` colour question, else None:
    whether another shape in the image has the colour of the shape the question names.

    A ``group_by`` for :func:`evaluate_suite` that tells binding from guessing. A model that
    reads the colour of the named shape scores the same in both groups; one that answers with
    the image's commonest colour is right when another shape shares the answer ("shared") and
    falls below chance, as shapes are added, when none does ("unique"). Chapter 15."""
    meta = record.extra.get("meta", {})
    if meta.get("question_type") != "colour" or "shapes" not in meta:
        return None
    question = _question(record, 0).lower()
    named = [s for s in meta["shapes"] if f"the {s['kind']}?" in question]
    if len(named) != 1:  # colour questions name a shape whose kind is unique in the image
        return None
    others = [s["colour"] for s in meta["shapes"] if s is not named[0]]
    return len(meta["shapes"]), "shared" if named[0]["colour"] in others else "unique"


def count_question_group(record: Record) -> tuple[str, int] | None:
    """``(what is counted, the right count)`` of a ``shape_qa`` count question, else None;
    what is counted is ``"all"`` (How many shapes are there?), ``"colour"`` (How many red
    shapes are there?) or ``"kind"`` (How many squares are there?).

    A ``group_by`` for :func:`evaluate_suite`. Counting every shape needs no word of the
    question; counting the shapes of a named colour or kind needs the model to pick, among
    the image tokens, those the question names. A model that cannot do that can still be
    right when the answer is 0 or 1, and fails when two or more shapes match. Chapter 15."""
    meta = record.extra.get("meta", {})
    if meta.get("question_type") != "count" or "shapes" not in meta:
        return None
    words = _question(record, 0).replace("<image>", " ").lower().rstrip("?").split()
    if words[:2] != ["how", "many"]:
        return None
    from minivl.data.synthetic.common import COLOURS

    counted = words[2:words.index("are")] if "are" in words else []
    if counted == ["shapes"]:
        what = "all"
    elif len(counted) == 2 and counted[1] == "shapes" and counted[0] in COLOURS:
        what = "colour"
    elif len(counted) == 1:
        what = "kind"
    else:
        return None
    return what, int(meta["answer"])


def commonest_colour_rule(meta: str | Path, task: str = "shape_qa") -> tuple[float, int]:
    """``(accuracy, questions)`` of a rule that answers every colour question of ``meta``'s
    ``task`` with the colour most shapes in the image have (a tie split evenly among
    the tied colours): what a model scores that sees the image's colours but not which shape
    the question names. Questions are read from each record's scene (``meta``), every turn of a
    multi-turn record (:func:`single_turns`); records without one are left out. Chapter 15."""
    from collections import Counter

    records = read_meta(meta)[task].read_records(strict=False)[0]
    total, right = 0, 0.0
    for record in (t for r in records for t in single_turns(r)):
        scene = record.extra.get("meta", {})
        if scene.get("question_type") != "colour" or not scene.get("shapes"):
            continue
        colours = Counter(s["colour"] for s in scene["shapes"])
        top = max(colours.values())
        tied = [c for c, n in colours.items() if n == top]
        right += (scene["answer"] in tied) / len(tied)
        total += 1
    if total == 0:
        raise ValueError(f"commonest_colour_rule: no colour question with a scene in {task!r} of {meta}")
    return right / total, total


def option_rank_rule(meta: str | Path, rank: int = 1, task: str = "reasoning") -> tuple[float, int]:
    """``(accuracy, records)`` of a rule that picks, in every multiple-choice record of
    ``meta``'s ``task``, the option whose value is the ``rank``-th smallest (0: the smallest),
    never looking at the image or reading the question.

    A blind baseline for the ``reasoning`` task: its three wrong options are drawn from the
    integers within 3 of the answer, so the answer tends to sit in the middle of the four
    values, and "the second smallest" (``rank=1``) is right about half the time instead of
    the quarter a guess gets. Records without numeric ``options`` and an ``answer_letter`` in
    their meta are left out. Chapter 15.
    """
    if rank < 0:
        raise ValueError(f"option_rank_rule: rank must be >= 0, got {rank}")
    total, right = 0, 0
    for values, letter in _numeric_choices(meta, task):
        if rank >= len(values):
            continue
        chosen = sorted(range(len(values)), key=values.__getitem__)[rank]
        right += OPTION_LETTERS[chosen] == letter
        total += 1
    if total == 0:
        raise ValueError(f"option_rank_rule: no record of {task!r} in {meta} has numeric options "
                         f"(at least {rank + 1}) and an answer letter")
    return right / total, total


def _numeric_choices(meta: str | Path, task: str) -> list[tuple[list[float], str]]:
    """``(option values, right letter)`` of every multiple-choice record of ``meta``'s ``task``
    whose meta has numeric ``options`` and an ``answer_letter``."""
    out = []
    for record in read_meta(meta)[task].read_records(strict=False)[0]:
        info = record.extra.get("meta", {})
        options, letter = info.get("options"), info.get("answer_letter")
        if not options or letter is None:
            continue
        try:
            out.append(([float(v) for v in options], letter))
        except (TypeError, ValueError):
            continue
    return out


def option_set_rule(train_meta: str | Path, eval_meta: str | Path, task: str = "reasoning",
                    fallback_rank: int = 1) -> tuple[float, int]:
    """``(accuracy, records)`` on ``eval_meta`` of the best blind rule a training split teaches:
    for each *set* of option values seen in ``train_meta``, pick the value that was most often
    the right one there (ties: the value seen right first); for a set never seen, the
    ``fallback_rank``-th smallest option (:func:`option_rank_rule`).

    It never looks at the image or reads the question, only at the numbers offered, so whatever
    it scores above a guess is a leak of the option values. Chapter 15.
    """
    from collections import Counter

    right_values: dict[tuple[float, ...], Counter] = {}
    for values, letter in _numeric_choices(train_meta, task):
        right_values.setdefault(tuple(sorted(values)), Counter())[values[OPTION_LETTERS.index(letter)]] += 1
    records = _numeric_choices(eval_meta, task)
    if not records:
        raise ValueError(f"option_set_rule: no record of {task!r} in {eval_meta} has numeric options and an answer letter")
    right = 0
    for values, letter in records:
        seen = right_values.get(tuple(sorted(values)))
        if seen:
            chosen = values.index(seen.most_common(1)[0][0])
        else:
            chosen = sorted(range(len(values)), key=values.__getitem__)[min(fallback_rank, len(values) - 1)]
        right += OPTION_LETTERS[chosen] == letter
    return right / len(records), len(records)


def format_grouped(by_group: dict[Hashable, tuple[float, int]], rows: Sequence[tuple[Any, str]],
                   columns: Sequence[Any], title: str,
                   key: Callable[[Any, Any], Hashable] = lambda row, column: (row, column)) -> str:
    """A ``TaskScore.by_group`` as a table: one line per ``(row, label)`` of ``rows``, one
    column per entry of ``columns``, each cell ``score (records)`` of ``by_group[key(row,
    column)]`` or ``-`` where no record fell. ``title`` heads the label column. Chapter 15."""
    width = max([len(title)] + [len(label) for _, label in rows]) + 2
    lines = [f"{title:<{width}}" + "".join(f"{c:>11}" for c in columns)]  # as wide as a cell, "   50% (12)"
    for row, label in rows:
        cells = [by_group.get(key(row, column)) for column in columns]
        lines.append(f"{label:<{width}}" + "".join(f"{'-':>11}" if c is None else f"{c[0]:>6.0%} ({c[1]:>2})"
                                                     for c in cells))
    return "\n".join(lines)


def single_turns(record: Record) -> list[Record]:
    """A record's questions, each as a single-turn record, the way the held-out splits ask them.

    A multi-turn record (the suite's training ``shape_qa`` asks three questions about one image)
    becomes one record per human / gpt pair: question ``j`` gets the first question's image
    placeholders in front (``<image>\\n``; they sit in the first turn only) and no history, its
    answer is turn ``j``'s, and the scene ``meta`` takes turn ``j``'s entry of ``meta["turns"]``
    (its ``question_type``, ``question`` and ``answer``) where the record has one per turn. A
    single-turn record is returned as it is. Ids get ``#j`` appended (``#0`` for the first).
    """
    turns = record.turns
    if len(turns) <= 2:
        return [record]
    if len(turns) % 2:
        raise ValueError(f"single_turns: record {record.id!r} ends with a human turn ({len(turns)} turns)")
    placeholder = "<video>" if record.kind == "video" else "<image>"
    prefix = f"{placeholder}\n" * turns[0]["value"].count(placeholder)
    meta = record.extra.get("meta", {})
    per_turn = meta.get("turns") if isinstance(meta.get("turns"), list) else None
    if per_turn is not None and len(per_turn) != len(turns) // 2:
        per_turn = None
    out = []
    for j in range(len(turns) // 2):
        question, answer = turns[2 * j]["value"], turns[2 * j + 1]["value"]
        if j and placeholder not in question:
            question = prefix + question
        extra = dict(record.extra)
        if per_turn is not None:
            extra["meta"] = {**meta, **per_turn[j]}
        system = [] if record.system is None else [record.conversations[0]]
        out.append(replace(record, conversations=[*system, {"from": "human", "value": question},
                                                  {"from": "gpt", "value": answer}],
                           id=f"{record.id}#{j}" if record.id is not None else None, extra=extra))
    return out


def score_answer(task: str, response: str, record: Record) -> tuple[float, bool]:
    """(score in [0, 1], parseable) of one response to one record of ``task``."""
    gold = record.conversations[-1]["value"]
    meta = record.extra.get("meta", {})
    if METRIC[task] == "exact":
        return exact_match(response, gold), True
    if METRIC[task] == "relaxed":
        return relaxed_correctness(response, gold), True
    if METRIC[task] == "iou@0.5":
        width, height = meta["width"], meta["height"]
        box = parse_box(response, width, height)
        gold_box = parse_box(gold, width, height)
        return (float(box_iou(box, gold_box) >= 0.5) if box is not None else 0.0), box is not None
    letters = OPTION_LETTERS[: len(meta["options"])]
    choice = extract_choice(response, dict(zip(letters, meta["options"]))).answer
    return float(choice == meta["answer_letter"]), choice is not None


def _question(record: Record, num_frames: int) -> str:
    from minivl.text.prompt import video_frame_prefix

    question = record.conversations[0]["value"] if record.system is None else record.conversations[1]["value"]
    if record.kind == "video":
        question = question.replace("<video>", video_frame_prefix(num_frames), 1)
    return question


def _pixels(record: Record, meta, image_size: int, max_num: int | None):
    from minivl.vision.tiling import get_frame_indices
    from minivl.vision.transforms import load_image_tiles, load_video_tiles

    budget = max_num or meta.max_dynamic_patch or 6
    if record.kind == "video":
        folder = meta.image_path(record.video)
        frames = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in _FRAME_SUFFIXES)
        frames = [frames[i] for i in get_frame_indices(len(frames), len(frames), sample="middle")]
        return load_video_tiles(frames, image_size=image_size)
    paths = [meta.image_path(p) for p in record.images]
    return load_image_tiles(paths if record.kind == "multi_image" else paths[0], image_size=image_size, max_num=budget)


def evaluate_suite(model, tokenizer, meta: str | Path, tasks: Sequence[str] | None = None,
                   per_task: int | None = None, max_num: int | None = None, batch_size: int = 16,
                   max_new_tokens: int = 96, progress: bool = False, details: bool = False,
                   group_by: Callable[[Record], Hashable | None] | None = None) -> dict[str, Any]:
    """Greedy answers of ``model`` on the first ``per_task`` questions of each task of ``meta``.

    Every question of a multi-turn record is asked on its own (:func:`single_turns`), so a
    training split can be scored the way the held-out splits are.

    ``max_num`` overrides every task's tile budget (e.g. 1 to see what dynamic tiling buys).
    Returns ``{task: score, ..., "all": mean}``, or with ``details`` the :class:`TaskScore` of
    each task under ``"tasks"`` as well. ``group_by`` (a record -> a key, or None to leave the
    record out, e.g. :func:`scene_question_group`) fills each ``TaskScore.by_group``.
    """
    import torch
    from tqdm.auto import tqdm

    metas = read_meta(meta)
    tasks = list(tasks or [t for t in SCORED_TASKS if t in metas])
    unknown = [t for t in tasks if t not in METRIC or t not in metas]
    if unknown:
        raise KeyError(f"cannot score tasks {unknown}; scored tasks present: {[t for t in SCORED_TASKS if t in metas]}")
    was_training = model.training
    model.eval()
    image_size = model.config.vision.image_size
    results: dict[str, TaskScore] = {}
    for task in tasks:
        m = metas[task]
        records = [t for r in m.read_records(strict=False)[0] for t in single_turns(r)][: per_task or None]
        total, unparseable, examples = 0.0, 0, []
        type_sums: dict[str, list[float]] = defaultdict(list)
        group_sums: dict[Hashable, list[float]] = defaultdict(list)
        for start in tqdm(range(0, len(records), batch_size), desc=f"eval {task}", disable=not progress):
            chunk = records[start:start + batch_size]
            pixels, patches, counts, questions = [], [], [], []
            for r in chunk:
                pv, n = _pixels(r, m, image_size, max_num)
                pixels.append(pv)
                patches += n
                counts.append(len(n))
                questions.append(_question(r, pv.shape[0]))
            with torch.no_grad():
                answers = model.batch_chat(tokenizer, torch.cat(pixels), questions,
                                           {"max_new_tokens": max_new_tokens, "do_sample": False},
                                           num_patches_list=patches, image_counts=counts)
            for r, a in zip(chunk, answers):
                s, ok = score_answer(task, a, r)
                total += s
                unparseable += not ok
                qtype = r.extra.get("meta", {}).get("question_type")
                if qtype is not None:
                    type_sums[qtype].append(s)
                key = group_by(r) if group_by is not None else None
                if key is not None:
                    group_sums[key].append(s)
                if len(examples) < 3:
                    examples.append((a, r.conversations[-1]["value"]))
        by_type = {t: (sum(v) / len(v), len(v)) for t, v in sorted(type_sums.items())}
        try:
            grouped = sorted(group_sums.items())
        except TypeError:  # keys that do not compare (mixed types): first-seen order
            grouped = list(group_sums.items())
        by_group = {g: (sum(v) / len(v), len(v)) for g, v in grouped}
        results[task] = TaskScore(task, METRIC[task], total / max(1, len(records)), len(records), unparseable, examples,
                                  by_type, by_group)
    model.train(was_training)
    out: dict[str, Any] = {t: r.score for t, r in results.items()}
    out["all"] = sum(r.score for r in results.values()) / len(results)
    if details:
        out["tasks"] = results
    return out


def majority_baseline(meta: str | Path, tasks: Sequence[str] | None = None,
                      eval_meta: str | Path | None = None) -> dict[str, float]:
    """The score of always giving each task's most common answer in ``meta`` (exact-match tasks).

    Every answer of a multi-turn record counts. Scored on ``eval_meta`` when given (pass the
    training split as ``meta`` and the held-out split as ``eval_meta`` for "the most common
    training answer", a baseline a model could learn), else on ``meta`` itself (the share of its
    most common answer: on a held-out split, what a constant answer scores at best).
    """
    from collections import Counter

    metas = read_meta(meta)
    targets = read_meta(eval_meta) if eval_meta is not None else metas
    out = {}
    for task in tasks or [t for t in SCORED_TASKS if t in metas and METRIC[t] == "exact"]:
        answers = Counter(t["value"] for r in metas[task].read_records(strict=False)[0]
                          for t in r.turns if t["from"] == "gpt")
        if not answers:
            raise ValueError(f"majority_baseline: no answers of {task!r} in {meta}")
        top = answers.most_common(1)[0][0]
        if eval_meta is None:
            out[task] = answers[top] / sum(answers.values())
            continue
        if task not in targets:
            raise KeyError(f"majority_baseline: {task!r} is not in {eval_meta}")
        gold = [t["value"] for r in targets[task].read_records(strict=False)[0] for t in r.turns if t["from"] == "gpt"]
        if not gold:
            raise ValueError(f"majority_baseline: no answers of {task!r} in {eval_meta}")
        out[task] = sum(exact_match(top, g) for g in gold) / len(gold)
    return out


def by_task(records: Sequence[Record]) -> dict[str, list[Record]]:
    """Records grouped by the task prefix of their id (``shape_qa-test-000001`` -> ``shape_qa``)."""
    groups: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        groups[str(r.id).split("-")[0]].append(r)
    return dict(groups)
