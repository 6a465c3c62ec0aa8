"""Packing benchmark: training tokens/s and token utilisation, packed vs padded batches.

Same tiny MiniVL (112 px ViT 128 x 4, Qwen2 256 x 4), same samples (the first
``--fraction`` of every task of the synthetic suite's train split, built once), three ways
to batch them:

* ``packed``: InternVL's ``PackedDataset`` (T tokens, K tiles per row, batch size 1),
  ``packed_collate_fn``, block-diagonal causal attention through ``cu_seqlens``;
* ``naive``: random batches of B samples, right-padded (``padded_collate_fn``);
* ``grouped``: batches of B samples of similar length (``length_grouped_batches``), padded.

Utilisation = real tokens / (real + padding) over every batch of each method (all samples).
Throughput counts **real** (non-padding) tokens per second of forward + backward + AdamW
step. Each round takes a new slice of ``--per-round`` samples and trains every method on
exactly those samples (same tokens, same tiles), the methods taking turns batch by batch so
that load from other processes on a shared machine hits all alike; the table shows the
median over rounds of the rate and of the per-round ratio to naive padding.

On CPU the packed row's attention runs SDPA with a dense (T, T) mask: its cost grows as T^2
whatever the samples' own lengths, while padded rows only pay (longest sample)^2. A T much
larger than a few samples therefore buys nothing on CPU (on a GPU with FlashAttention's
varlen kernel the cost is sum n_i^2 and T can be as large as memory allows). The default
T = 1024 holds about eight mixture samples.

Run from the repository root::

    python benchmarks/packing.py                      # cpu-scale suite, T=1024, K=48, B=8
    python benchmarks/packing.py --rounds 3 --per-round 128 --max-tokens 2048 --batch-size 16

Explained in chapter 8 (notebooks/08_packing.ipynb).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any

import numpy as np
import torch

from minivl.config import MiniVLConfig
from minivl.data.dataset import DataConfig, build_datasets, conversation_texts
from minivl.data.packing import PackedDataset, length_grouped_batches, packed_collate_fn, padded_collate_fn
from minivl.data.packing_viz import occupancy, padding_utilisation
from minivl.data.synthetic import generate_suite
from minivl.model import MiniVL
from minivl.scale import cache_dir, get_scale
from minivl.text.tokenizer import image_token_id, token_id, train_chat_tokenizer
from minivl.train.attention import enable_packed_attention

_NON_MODEL = {"labels", "loss_weight", "statistics", "data_index"}


def load_samples(scale: str, fraction: float, seed: int = 0) -> tuple[Any, MiniVLConfig, list[str], list[list[dict]]]:
    """Tokenizer, model config, task names and the built samples (first ``fraction`` of each task)."""
    suite = cache_dir("data", scale)
    if not (suite / "train.json").exists():
        generate_suite(suite, scale=scale, seed=seed)
    meta = suite / "train.json"
    tok = train_chat_tokenizer(conversation_texts(meta), vocab_size=1000)
    config = MiniVLConfig.tiny(vocab_size=len(tok), image_token_id=image_token_id(tok))
    data_config = DataConfig(image_size=config.vision.image_size, num_image_token=config.num_image_token,
                             max_dynamic_patch=6, max_length=2048, min_num_frame=4, max_num_frame=8)
    datasets = build_datasets(meta, tok, data_config, train=True, seed=seed)
    sources = []
    for d in datasets:
        n = max(1, int(len(d) * fraction))
        sources.append([s for s in (d[i] for i in range(n)) if s is not None])
    return tok, config, [d.meta.name for d in datasets], sources


def batch_methods(samples: list[dict], sources_of: list[int], tok: Any, max_tokens: int, max_tiles: int,
                  batch_size: int, seed: int = 0) -> tuple[dict[str, list[dict]], dict[str, dict[str, Any]]]:
    """The three methods' collated batches over the same ``samples`` and their utilisation.

    ``sources_of[i]`` is the task of sample i (the packed dataset draws tasks by their size).
    """
    lengths = [int(s["input_ids"].numel()) for s in samples]
    by_source: dict[int, list[dict]] = {}
    for s, src in zip(samples, sources_of):
        by_source.setdefault(src, []).append(s)
    packed_ds = PackedDataset(list(by_source.values()), max_packed_tokens=max_tokens, num_images_expected=max_tiles,
                              seed=seed, img_start_token_id=token_id(tok, "<img>"),
                              img_end_token_id=token_id(tok, "</img>"))
    packs = list(packed_ds)
    occ = occupancy(packs, max_tokens, max_tiles)
    order = np.random.default_rng(seed).permutation(len(samples)).tolist()
    naive = [order[i: i + batch_size] for i in range(0, len(order), batch_size)]
    grouped = length_grouped_batches(lengths, batch_size, seed=seed)
    skipped = sum(n for reason, n in packed_ds.skip_counts.items() if reason != "split")
    # a packed row has no padding (strict_mode off): utilisation 1 by construction; "fill" is real tokens / T
    stats: dict[str, dict[str, Any]] = {
        "packed": {"utilisation": 1.0, "fill": occ["token_fill"], "batches": len(packs), "skipped": skipped,
                   "real": int(occ["tokens"].sum())},
        "naive": {**padding_utilisation(lengths, naive), "batches": len(naive)},
        "grouped": {**padding_utilisation(lengths, grouped), "batches": len(grouped)},
    }
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    batches = {
        "naive": [padded_collate_fn([samples[i] for i in b], pad_token_id=pad) for b in naive],
        "grouped": [padded_collate_fn([samples[i] for i in b], pad_token_id=pad) for b in grouped],
        "packed": [packed_collate_fn([p], loss_reduction="square") for p in packs],
    }
    return batches, stats


def train_step(model: MiniVL, optimizer: torch.optim.Optimizer, batch: dict) -> int:
    """One forward + backward + AdamW step; returns the batch's real (non-padding) tokens."""
    inputs = {k: v for k, v in batch.items() if k not in _NON_MODEL}
    loss = model(**inputs, labels=batch["labels"], loss_weight=batch["loss_weight"]).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return int(batch["statistics"]["num_tokens"])


def bench_round(model: MiniVL, optimizer: torch.optim.Optimizer, batches: dict[str, list[dict]]) -> dict[str, float]:
    """Real tokens/s of every method over all its batches (the same samples for every method).

    The methods take turns batch by batch (round robin), so a change in the machine's load
    hits them alike.
    """
    seconds = {name: 0.0 for name in batches}
    tokens = {name: 0 for name in batches}
    for i in range(max(len(b) for b in batches.values())):
        for name, bs in batches.items():
            if i < len(bs):
                start = time.perf_counter()
                tokens[name] += train_step(model, optimizer, bs[i])
                seconds[name] += time.perf_counter() - start
    return {name: tokens[name] / seconds[name] for name in batches}


def format_table(stats: dict[str, dict], rates: dict[str, list[float]], ratios: dict[str, list[float]],
                 labels: dict[str, str]) -> str:
    lines = [f"{'method':<34} {'utilisation':>11} {'real tok/s (median)':>19} {'min-max':>11} "
             f"{'vs naive (median)':>17}", "-" * 97]
    for name, label in labels.items():
        r = rates[name]
        lines.append(f"{label:<34} {stats[name]['utilisation']:>10.1%} {statistics.median(r):>19.0f} "
                     f"{min(r):>5.0f}-{max(r):<5.0f} {statistics.median(ratios[name]):>16.2f}x")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", default="cpu", help="suite scale: smoke | cpu | gpu (default cpu)")
    parser.add_argument("--fraction", type=float, default=0.1, help="share of each task's samples used (0.1)")
    parser.add_argument("--max-tokens", type=int, default=1024, help="T, tokens per pack (1024)")
    parser.add_argument("--max-tiles", type=int, default=48, help="K, tiles per pack (48)")
    parser.add_argument("--batch-size", type=int, default=8, help="B, samples per padded batch (8)")
    parser.add_argument("--rounds", type=int, default=4, help="timed rounds, each on a new slice of samples (4)")
    parser.add_argument("--per-round", type=int, default=64, help="samples per round, the same for every method (64)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    scale = get_scale(args.scale)
    start = time.perf_counter()
    tok, config, names, sources = load_samples(scale, args.fraction, args.seed)
    samples = [s for src in sources for s in src]
    source_of = [k for k, src in enumerate(sources) for _ in src]
    print(f"{len(samples)} samples ({args.fraction:.0%} of each of {len(names)} tasks, {scale} suite, train split), "
          f"built in {time.perf_counter() - start:.0f} s; torch threads {torch.get_num_threads()}")
    _, stats = batch_methods(samples, source_of, tok, args.max_tokens, args.max_tiles, args.batch_size, args.seed)
    p = stats["packed"]
    print(f"all samples: packed into {p['batches']} rows ({p['fill']:.1%} of T filled on average, {p['skipped']} "
          f"skipped); naive {stats['naive']['utilisation']:.1%} and grouped {stats['grouped']['utilisation']:.1%} "
          f"utilisation in {stats['naive']['batches']} batches")
    torch.manual_seed(args.seed)
    model = MiniVL(config)
    enable_packed_attention(model.language_model, backend="sdpa")  # padded batches keep plain causal attention
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    order = np.random.default_rng(args.seed).permutation(len(samples)).tolist()
    rounds = min(args.rounds, len(samples) // args.per_round)
    print(f"model: {sum(q.numel() for q in model.parameters()) / 1e6:.1f}M parameters; {rounds} rounds of "
          f"{args.per_round} samples, every method on the same samples, batches interleaved")
    rates: dict[str, list[float]] = {"naive": [], "grouped": [], "packed": []}
    ratios: dict[str, list[float]] = {"naive": [], "grouped": [], "packed": []}
    for r in range(-1, rounds):  # round -1 is a warm-up on the last slice
        chosen = order[-args.per_round:] if r < 0 else order[r * args.per_round: (r + 1) * args.per_round]
        batches, _ = batch_methods([samples[i] for i in chosen], [source_of[i] for i in chosen], tok,
                                   args.max_tokens, args.max_tiles, args.batch_size, args.seed + r + 1)
        if r < 0:
            batches = {name: bs[:1] for name, bs in batches.items()}
        got = bench_round(model, optimizer, batches)
        if r < 0:
            continue
        print(f"round {r}: " + ", ".join(f"{name} {v:.0f} tok/s" for name, v in got.items()), flush=True)
        for name in rates:
            rates[name].append(got[name])
            ratios[name].append(got[name] / got["naive"])
    labels = {
        "naive": f"naive padding (B={args.batch_size}, random)",
        "grouped": f"length-grouped padding (B={args.batch_size})",
        "packed": f"InternVL packing (T={args.max_tokens}, K={args.max_tiles})",
    }
    print()
    print(format_table(stats, rates, ratios, labels))
    return 0


if __name__ == "__main__":
    sys.exit(main())
