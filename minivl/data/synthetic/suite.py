"""Generate the whole synthetic suite: images, one JSONL per task and split, meta JSON files.

Layout of a generated suite (paths in the meta files are relative to the suite folder)::

    OUT/
      train.json  val.json  test.json                 meta of every task but ``faulty``
      train_faulty.json  val_faulty.json  test_faulty.json   meta of the ``faulty`` task
      annotations/{split}/{task}.jsonl
      images/{split}/{task}/000000.png                (video: images/{split}/video/000000/frame_00.png)

The ``faulty`` task has its own meta because part of it (wrong placeholder counts) does not
pass the record validator; train on it only through a filter (chapter 7).

Explained in chapter 6 (notebooks/06_data.ipynb).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from minivl.data.records import DatasetMeta, RecordError, parse_record, write_meta
from minivl.data.synthetic.charts import make_chart
from minivl.data.synthetic.common import TaskContext, sample_rng
from minivl.data.synthetic.faulty import CONTENT_FAULTS, FAULT_RATE, applicable_faults, corrupt, make_faulty
from minivl.data.synthetic.multi_image import make_multi_image
from minivl.data.synthetic.reasoning import make_reasoning
from minivl.data.synthetic.scenes import make_caption, make_grounding, make_shape_qa
from minivl.data.synthetic.small_text import make_small_text
from minivl.data.synthetic.text_only import make_text_only
from minivl.data.synthetic.video import make_video
from minivl.scale import get_scale, pick

SPLITS = ("train", "val", "test")

SUITE_VERSION = 2
"""Bumped whenever a generator changes what it writes (2: ``shape_qa`` draws the question type
first). A full suite records it in ``suite.json``; :func:`ensure_suite` (used by
:func:`minivl.quickstart.prepare` and chapters 6 and 8) regenerates a cached suite whose stamp
differs, so an old suite is never trained on by mistake."""


@dataclass(frozen=True)
class TaskSpec:
    """How one task is generated and described in the meta JSON.

    ``train`` is the number of generated samples (instances: a reasoning instance gives two
    records) of the train split at each scale; val and test get a tenth of it (at least 2).
    """

    make: Callable
    train: tuple[int, int, int]  # (smoke, cpu, gpu)
    data_augment: bool
    max_dynamic_patch: int | None
    repeat_time: float = 1


# The plain table of tasks, in the order they appear in the meta files. Shape scenes
# (caption, shape_qa, grounding) are read as one tile: their shapes are 17-60 px, large
# enough at 112 px, and one tile instead of 3-5 makes them several times cheaper to train
# on. small_text is where tiles matter (budget 16).
TASKS: dict[str, TaskSpec] = {
    "caption": TaskSpec(make_caption, (4, 1000, 10000), True, 1),
    "shape_qa": TaskSpec(make_shape_qa, (4, 4000, 40000), True, 1),
    "small_text": TaskSpec(make_small_text, (4, 600, 6000), True, 16),
    "chart": TaskSpec(make_chart, (4, 800, 8000), True, 6),
    "grounding": TaskSpec(make_grounding, (4, 800, 8000), True, 1),
    "multi_image": TaskSpec(make_multi_image, (4, 500, 5000), True, 8),
    "video": TaskSpec(make_video, (4, 400, 4000), False, 1),
    "reasoning": TaskSpec(make_reasoning, (4, 400, 4000), True, 6),
    "text_only": TaskSpec(make_text_only, (4, 800, 8000), False, None),
    "faulty": TaskSpec(make_faulty, (4, 400, 4000), True, 6),
}


def split_size(task: str, split: str, scale: str | None = None) -> int:
    """Number of samples of ``task`` in ``split`` at ``scale``."""
    spec = TASKS[task]
    n_train = pick(smoke=spec.train[0], cpu=spec.train[1], gpu=spec.train[2], scale=scale)
    return n_train if split == "train" else max(2, n_train // 10)


def check_record(record: dict, where: str) -> None:
    """Fail loudly when a generated record does not validate (or a placeholder fault does)."""
    try:
        parse_record(record, file=where)
    except RecordError as err:
        if record.get("fault") == "placeholder" and err.reason == "placeholder_count":
            return
        raise RuntimeError(f"generator bug: {record.get('id')}: {err}") from err
    if record.get("fault") == "placeholder":
        raise RuntimeError(f"generator bug: {record.get('id')}: a placeholder fault passed validation")


def generate_task(
    task: str, out_dir: str | Path, split: str, n: int, seed: int = 0, *, mix_faults: bool | None = None
) -> list[dict]:
    """Generate ``n`` samples of one task and split into ``out_dir``; returns the records.

    Clears the task's previous images and annotation first. ``mix_faults`` (default: on for
    the train split of every task but ``faulty``) replaces a :data:`FAULT_RATE` share of the
    records by labelled content faults.

    Explained in chapter 6 (notebooks/06_data.ipynb).
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r} (known: {', '.join(TASKS)})")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r} (known: {', '.join(SPLITS)})")
    out_dir = Path(out_dir)
    ctx = TaskContext(out_dir, split, task)
    shutil.rmtree(out_dir / ctx.root, ignore_errors=True)
    if mix_faults is None:
        mix_faults = split == "train" and task != "faulty"
    make = TASKS[task].make
    records: list[dict] = []
    for i in range(n):
        new = make(sample_rng(seed, split, task, i), ctx, i)
        if mix_faults:
            frng = sample_rng(seed, split, task + "/fault", i)
            new = [
                corrupt(r, frng.choice(applicable_faults(r, CONTENT_FAULTS)), frng) if frng.random() < FAULT_RATE else r
                for r in new
            ]
        records.extend(new)
    path = out_dir / "annotations" / split / f"{task}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for lineno, record in enumerate(records, 1):
            check_record(record, f"{path.name}:{lineno}")
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
    return records


def generate_suite(
    out_dir: str | Path,
    scale: str | None = "cpu",
    seed: int = 0,
    splits: Sequence[str] = SPLITS,
    tasks: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Generate the synthetic suite under ``out_dir``.

    Returns ``{"out_dir", "meta": {split: path}, "faulty_meta": {split: path},
    "counts": {split: {task: records}}, "faults": {split: {fault: records}},
    "seconds": {split: {task: seconds}}}``. The same ``seed`` gives byte-identical files;
    each split's samples come from seeds derived from ``(seed, split, task, index)``.

    Explained in chapter 6 (notebooks/06_data.ipynb).
    """
    scale = get_scale(scale)
    out_dir = Path(out_dir)
    tasks = list(TASKS) if tasks is None else list(tasks)
    result: dict[str, Any] = {"out_dir": str(out_dir), "meta": {}, "faulty_meta": {}, "counts": {}, "faults": {},
                              "seconds": {}}
    for split in splits:
        metas, faulty_metas = [], []
        counts, seconds, faults = {}, {}, Counter()
        for task in tasks:
            start = time.perf_counter()
            records = generate_task(task, out_dir, split, split_size(task, split, scale), seed)
            seconds[task] = time.perf_counter() - start
            counts[task] = len(records)
            faults.update(r["fault"] for r in records if r.get("fault"))
            spec = TASKS[task]
            meta = DatasetMeta(
                name=task,
                root=TaskContext(out_dir, split, task).root,
                annotation=f"annotations/{split}/{task}.jsonl",
                data_augment=spec.data_augment and split == "train",
                max_dynamic_patch=spec.max_dynamic_patch,
                repeat_time=spec.repeat_time,
                length=len(records),
            )
            (faulty_metas if task == "faulty" else metas).append(meta)
        if metas:
            result["meta"][split] = str(write_meta(out_dir / f"{split}.json", metas))
        if faulty_metas:
            result["faulty_meta"][split] = str(write_meta(out_dir / f"{split}_faulty.json", faulty_metas))
        result["counts"][split] = counts
        result["seconds"][split] = seconds
        result["faults"][split] = dict(sorted(faults.items()))
    if list(splits) == list(SPLITS) and tasks == list(TASKS):  # a whole suite: stamp it
        (out_dir / "suite.json").write_text(json.dumps(suite_stamp_for(scale, seed)) + "\n")
    return result


def suite_stamp_for(scale: str, seed: int) -> dict[str, Any]:
    """What ``suite.json`` says of a whole suite generated now at ``scale`` with ``seed``."""
    return {"version": SUITE_VERSION, "scale": scale, "seed": seed}


def ensure_suite(out_dir: str | Path, scale: str | None = None, seed: int = 0) -> dict[str, Any] | None:
    """The whole suite in ``out_dir``, generated unless one with the same stamp (generator
    version, scale, seed) is already there; a suite of another version, or an unstamped one, is
    generated over (every file the suite consists of is rewritten). Returns
    :func:`generate_suite`'s result, or ``None`` when the suite in ``out_dir`` is reused.

    Explained in chapter 6 (notebooks/06_data.ipynb).
    """
    scale = get_scale(scale)
    if read_suite_stamp(out_dir) == suite_stamp_for(scale, seed):
        return None
    return generate_suite(out_dir, scale=scale, seed=seed)


def read_suite_stamp(out_dir: str | Path) -> dict[str, Any] | None:
    """The ``suite.json`` stamp of the suite in ``out_dir`` (None if there is none or it is unreadable)."""
    try:
        return json.loads((Path(out_dir) / "suite.json").read_text())
    except (OSError, ValueError):
        return None


def format_summary(result: dict[str, Any]) -> str:
    """The table :func:`synth_command` prints: records per task and split, and samples/s."""
    splits = list(result["counts"])
    tasks = list(next(iter(result["counts"].values()))) if splits else []
    header = f"{'task':<12}" + "".join(f"{s:>8}" for s in splits) + f"{'seconds':>9}{'records/s':>11}"
    lines = [header, "-" * len(header)]
    for task in tasks:
        n = sum(result["counts"][s][task] for s in splits)
        sec = sum(result["seconds"][s][task] for s in splits)
        row = f"{task:<12}" + "".join(f"{result['counts'][s][task]:>8}" for s in splits)
        lines.append(row + f"{sec:>9.2f}{n / max(sec, 1e-9):>11.0f}")
    total = sum(sum(c.values()) for c in result["counts"].values())
    total_s = sum(sum(s.values()) for s in result["seconds"].values())
    lines.append("-" * len(header))
    lines.append(f"{'total':<12}" + "".join(f"{sum(result['counts'][s].values()):>8}" for s in splits)
                 + f"{total_s:>9.2f}{total / max(total_s, 1e-9):>11.0f}")
    for split in splits:
        if result["faults"].get(split):
            lines.append(f"labelled faults in {split}: " + ", ".join(f"{k} {v}" for k, v in result["faults"][split].items()))
    return "\n".join(lines)


def synth_command(out: str | Path, scale: str | None = None, seed: int = 0) -> dict[str, Any]:
    """``minivl data synth --out DIR --scale smoke|cpu|gpu --seed N``: generate and print a summary.

    Explained in chapter 6 (notebooks/06_data.ipynb).
    """
    result = generate_suite(out, scale=scale, seed=seed)
    print(format_summary(result))
    for split, path in result["meta"].items():
        print(f"meta {split}: {path}")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry: ``python -m minivl.data.synthetic --out DIR [--scale S] [--seed N]``."""
    parser = argparse.ArgumentParser(prog="minivl data synth", description="generate the synthetic suite")
    parser.add_argument("--out", default="data/synth", help="output folder (default: data/synth)")
    parser.add_argument("--scale", default=None, help="smoke | cpu | gpu (default: $MINIVL_SCALE or cpu)")
    parser.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    args = parser.parse_args(argv)
    synth_command(args.out, args.scale, args.seed)
    return 0
