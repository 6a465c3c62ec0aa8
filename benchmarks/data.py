"""Data benchmarks.

Generator part: samples per second of each synthetic task (train split), single process;
wall-clock and CPU time (the process's own, which a busy shared machine disturbs less).

    python benchmarks/data.py --scale cpu

A later section will add the dataset's ``__getitem__`` throughput (records -> model inputs).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from minivl.data.synthetic import TASKS, generate_task, split_size
from minivl.scale import get_scale


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def bench_generators(scale: str | None = "cpu", seed: int = 0, out: str | Path | None = None) -> list[dict]:
    """Time the generation of each task's train split; returns one row per task."""
    scale = get_scale(scale)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(out) if out is not None else Path(tmp)
        for task in TASKS:
            n = split_size(task, "train", scale)
            start, cpu_start = time.perf_counter(), time.process_time()
            records = generate_task(task, root, "train", n, seed)
            seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
            size = folder_bytes(root / "images" / "train" / task) + (root / "annotations/train" / f"{task}.jsonl").stat().st_size
            rows.append({"task": task, "samples": n, "records": len(records), "seconds": seconds, "cpu_seconds": cpu,
                         "samples_per_s": n / seconds, "samples_per_cpu_s": n / max(cpu, 1e-9), "mb": size / 1e6})
    return rows


def format_rows(rows: list[dict]) -> str:
    header = (f"{'task':<12}{'samples':>9}{'records':>9}{'wall s':>9}{'samples/s':>11}{'cpu s':>8}"
              f"{'per cpu s':>11}{'MB':>8}")
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r['task']:<12}{r['samples']:>9}{r['records']:>9}{r['seconds']:>9.2f}"
                     f"{r['samples_per_s']:>11.0f}{r['cpu_seconds']:>8.2f}{r['samples_per_cpu_s']:>11.0f}"
                     f"{r['mb']:>8.1f}")
    n, sec = sum(r["samples"] for r in rows), sum(r["seconds"] for r in rows)
    cpu = sum(r["cpu_seconds"] for r in rows)
    lines += ["-" * len(header),
              f"{'total':<12}{n:>9}{sum(r['records'] for r in rows):>9}{sec:>9.2f}{n / sec:>11.0f}"
              f"{cpu:>8.2f}{n / max(cpu, 1e-9):>11.0f}{sum(r['mb'] for r in rows):>8.1f}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", default="cpu", help="smoke | cpu | gpu (default cpu)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(f"synthetic generators, train split, scale={get_scale(args.scale)}, one process")
    print(format_rows(bench_generators(args.scale, args.seed)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
