"""Data benchmarks: is the data pipeline ever the bottleneck?

1. Generators: samples per second of each synthetic task (train split), single process;
   wall-clock and CPU time (the process's own, which a busy shared machine disturbs less).
2. Data set: ``SupervisedDataset.__getitem__`` samples per second per task (records -> tiles,
   tokens, labels; JPEG augmentation on where the meta says, as in training), one process,
   and the rate over the whole mixture (each task weighted by its share of the samples).
3. Training: one forward + backward step of the ``tiny`` MiniVL (112 px ViT 128 x 4, Qwen2
   256 x 4) on a right-padded batch of 8 mixture samples (``padded_collate_fn``), timed over
   several different batches; training samples/s = 8 / mean step time.

It ends with "data pipeline samples/s vs training samples/s" and their ratio: a ratio above 1
means one loader process keeps up with the model on this machine (each extra DataLoader
worker adds about one more process's rate).

    python benchmarks/data.py --scale cpu                # all three parts
    python benchmarks/data.py --scale cpu --skip-generators --per-task 100 --steps 6

Explained in chapter 6 (notebooks/06_data.ipynb).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from minivl.data.synthetic import TASKS, generate_task, split_size
from minivl.scale import get_scale, pick


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


def data_config(num_image_token: int = 16, image_size: int = 112):
    """The data settings of the cpu-scale model (tile size, budget and frame range as in ``minivl quickstart``)."""
    from minivl.data.dataset import DataConfig

    return DataConfig(image_size=image_size, num_image_token=num_image_token, max_dynamic_patch=6,
                      max_length=2048, min_num_frame=4, max_num_frame=8)


def build_suite(root: Path, scale: str, seed: int = 0):
    """Generate the train split of the suite (``faulty`` excluded) and train a tokenizer on it."""
    from minivl.data.dataset import conversation_texts
    from minivl.data.synthetic import generate_suite
    from minivl.text.tokenizer import train_chat_tokenizer

    result = generate_suite(root, scale=scale, seed=seed, splits=("train",),
                            tasks=[t for t in TASKS if t != "faulty"])
    meta = Path(result["meta"]["train"])
    return meta, train_chat_tokenizer(conversation_texts(meta), vocab_size=1000)


def bench_getitem(datasets, per_task: int) -> list[dict]:
    """Time ``__getitem__`` on the first ``per_task`` samples of each data set (after one warm-up call).

    Runs with one torch thread, as in a DataLoader worker (PyTorch sets 1 thread in each
    worker). In the main process with several threads, small tensor fills are split across
    threads, which on a busy machine costs milliseconds of thread wake-up per call.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _time_getitem(datasets, per_task)
    finally:
        torch.set_num_threads(threads)


def _time_getitem(datasets, per_task: int) -> list[dict]:
    rows = []
    for d in datasets:
        n = min(per_task, len(d))
        d[0]  # warm-up: first-call costs (imports, font caches) are not the steady state
        tiles = tokens = built = 0
        start, cpu_start = time.perf_counter(), time.process_time()
        for i in range(n):
            sample = d[i]
            if sample is not None:
                built += 1
                tiles += sample["pixel_values"].shape[0]
                tokens += sample["input_ids"].numel()
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        rows.append({"task": d.meta.name, "samples": n, "built": built, "seconds": seconds, "cpu_seconds": cpu,
                     "samples_per_s": n / seconds, "samples_per_cpu_s": n / max(cpu, 1e-9),
                     "tiles": tiles / max(built, 1), "tokens": tokens / max(built, 1), "augment": d.meta.data_augment})
    return rows


def mixture_rate(rows: list[dict], shares: dict[str, float]) -> float:
    """Samples/s over the mixture: 1 / (sum over tasks of share x seconds per sample)."""
    return 1.0 / sum(shares[r["task"]] / r["samples_per_s"] for r in rows)


def format_getitem(rows: list[dict], shares: dict[str, float]) -> str:
    header = (f"{'task':<12}{'share':>7}{'aug':>5}{'samples':>9}{'tiles':>7}{'tokens':>8}{'wall s':>8}"
              f"{'samples/s':>11}{'per cpu s':>11}")
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r['task']:<12}{100 * shares[r['task']]:>6.1f}%{'yes' if r['augment'] else 'no':>5}"
                     f"{r['samples']:>9}{r['tiles']:>7.1f}{r['tokens']:>8.0f}{r['seconds']:>8.2f}"
                     f"{r['samples_per_s']:>11.0f}{r['samples_per_cpu_s']:>11.0f}")
    lines += ["-" * len(header), f"{'mixture':<12}{'100.0%':>7}{'':>5}{'':>9}{'':>7}{'':>8}{'':>8}"
              f"{mixture_rate(rows, shares):>11.0f}"]
    return "\n".join(lines)


def bench_train_step(datasets, tokenizer, batch_size: int = 8, steps: int = 6, seed: int = 0) -> dict:
    """Forward + backward of the tiny MiniVL on ``steps`` different padded batches of mixture samples."""
    import torch

    from minivl.config import MiniVLConfig
    from minivl.data.dataset import MixtureDataset
    from minivl.data.packing import padded_collate_fn
    from minivl.model import MiniVL
    from minivl.text.tokenizer import image_token_id

    torch.manual_seed(seed)
    model = MiniVL(MiniVLConfig.tiny(vocab_size=len(tokenizer), image_token_id=image_token_id(tokenizer)))
    model.train()
    mixture = MixtureDataset(datasets)
    rng = random.Random(seed)
    batches = []
    while len(batches) < steps + 1:  # one warm-up batch
        samples = [mixture[i] for i in rng.sample(range(len(mixture)), batch_size)]
        samples = [s for s in samples if s is not None]
        if len(samples) == batch_size:
            batches.append(padded_collate_fn(samples, pad_token_id=tokenizer.pad_token_id))
    keys = ("input_ids", "pixel_values", "attention_mask", "position_ids", "image_flags", "labels", "loss_weight")
    times = []
    for k, batch in enumerate(batches):
        start = time.perf_counter()
        out = model(**{key: batch[key] for key in keys})
        out.loss.backward()
        model.zero_grad(set_to_none=True)
        if k:  # batch 0 warms up
            times.append(time.perf_counter() - start)
    timed = batches[1:]
    return {"batch_size": batch_size, "steps": steps, "mean_s": statistics.fmean(times),
            "median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
            "samples_per_s": batch_size / statistics.fmean(times),
            "tokens": statistics.fmean(b["input_ids"].numel() for b in timed),
            "tiles": statistics.fmean(b["pixel_values"].shape[0] for b in timed),
            "parameters": sum(p.numel() for p in model.parameters())}


def compare(data_rate: float, train: dict) -> str:
    ratio = data_rate / train["samples_per_s"]
    verdict = "the data pipeline keeps up" if ratio >= 1 else "the data pipeline is the bottleneck"
    return (f"data pipeline samples/s vs training samples/s: {data_rate:.0f} vs {train['samples_per_s']:.1f} "
            f"(ratio {ratio:.1f}x, one loader process; {verdict})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", default="cpu", help="smoke | cpu | gpu (default cpu)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per-task", type=int, default=None, help="samples timed per task (default by scale)")
    parser.add_argument("--steps", type=int, default=None, help="timed training steps (default by scale)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--skip-generators", action="store_true", help="skip part 1")
    args = parser.parse_args(argv)
    scale = get_scale(args.scale)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if not args.skip_generators:
        print(f"1. synthetic generators, train split, scale={scale}, one process")
        print(format_rows(bench_generators(scale, args.seed)))
        print()
    from minivl.data.dataset import build_datasets

    with tempfile.TemporaryDirectory() as tmp:
        meta, tok = build_suite(Path(tmp), scale, args.seed)
        datasets = build_datasets(meta, tok, data_config(), train=True, seed=args.seed)
        total = sum(len(d) for d in datasets)
        shares = {d.meta.name: len(d) / total for d in datasets}
        per_task = args.per_task or pick(smoke=4, cpu=100, gpu=400, scale=scale)
        print(f"2. SupervisedDataset.__getitem__, first {per_task} samples per task, one process with one torch "
              "thread (as a DataLoader worker), 112 px tiles, 16 tokens per tile")
        rows = bench_getitem(datasets, per_task)
        print(format_getitem(rows, shares))
        skips = sum(sum(d.skips.values()) for d in datasets)
        print(f"skipped while timing: {skips}")
        print()
        steps = args.steps or pick(smoke=2, cpu=6, gpu=20, scale=scale)
        train = bench_train_step(datasets, tok, args.batch_size, steps, args.seed)
        print(f"3. training step of the tiny MiniVL ({train['parameters'] / 1e6:.1f}M parameters), forward + backward, "
              f"padded batch of {train['batch_size']}, {train['steps']} batches after a warm-up")
        print(f"mean batch: {train['tokens']:.0f} token slots, {train['tiles']:.1f} tiles; step time mean "
              f"{train['mean_s']:.3f} s (median {train['median_s']:.3f}, min {train['min_s']:.3f}, "
              f"max {train['max_s']:.3f})")
        print()
        print(compare(mixture_rate(rows, shares), train))
    return 0


if __name__ == "__main__":
    sys.exit(main())
