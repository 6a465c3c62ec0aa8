"""Packed rows vs a padded batch: forward + backward time of a tiny LLM, per attention backend.

The same samples (random lengths) are run two ways:

* ``padded``: a batch of rows, each sample right-padded to the longest one, with
  transformers' own SDPA attention and a 2-D padding mask (the baseline, ratio 1.00);
* ``packed``: one row holding all the samples back to back, positions restarting at 0,
  with minivl's packed attention on each backend that runs here (``minivl.train.attention``).
  ``hf-sdpa-packed`` is transformers' own SDPA on the same row with ``use_cache=False``
  (it then builds its block-causal mask from the positions).

Each entry is the fastest wall time (of ``--reps`` interleaved rounds) of one forward + backward (cross-entropy on every token);
the ratio is that time over the padded baseline's, measured in the same process. Run::

    MINIVL_SCALE=cpu python benchmarks/attention.py              # or --lengths 256 512 1024

Explained in chapter 8 (notebooks/08_packing.ipynb).
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from minivl.scale import pick
from minivl.train.attention import (
    available_backends,
    cu_seqlens_from_lengths,
    packed_attention,
    position_ids_from_cu_seqlens,
)
from minivl.train.measure import add_device_arguments, apply_device_arguments, fastest_times


def tiny_llm(device: str, dtype: torch.dtype):
    """A small Qwen2 (GQA) whose attention is a visible share of the time at these lengths."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=512,
        hidden_size=pick(smoke=64, cpu=128, gpu=1024),
        intermediate_size=pick(smoke=128, cpu=256, gpu=2816),
        num_hidden_layers=pick(smoke=2, cpu=4, gpu=8),
        num_attention_heads=pick(smoke=4, cpu=8, gpu=16),
        num_key_value_heads=pick(smoke=2, cpu=2, gpu=4),
        max_position_embeddings=32768,
    )
    return Qwen2ForCausalLM(config).to(device=device, dtype=dtype).train()


def sample_lengths(total: int, generator: torch.Generator) -> list[int]:
    """Random sample lengths in [total/16, total/2] that fill exactly ``total`` tokens."""
    lengths: list[int] = []
    low, high = max(2, total // 16), max(3, total // 2)
    while sum(lengths) < total:
        n = int(torch.randint(low, high + 1, (1,), generator=generator))
        lengths.append(min(n, total - sum(lengths)))
    return lengths


def run(lengths: list[int], reps: int, device: str, dtype: torch.dtype) -> list[dict]:
    model = tiny_llm(device, dtype)
    vocab = model.config.vocab_size
    generator = torch.Generator().manual_seed(0)
    rows = []
    for total in lengths:
        sizes = sample_lengths(total, generator)
        samples = [torch.randint(0, vocab, (n,), generator=generator).to(device) for n in sizes]
        longest = max(sizes)
        # padded batch (B, longest) with its 2-D mask; labels -100 on padding
        ids = torch.zeros(len(sizes), longest, dtype=torch.long, device=device)
        mask = torch.zeros_like(ids)
        labels = torch.full_like(ids, -100)
        for i, s in enumerate(samples):
            ids[i, : len(s)], mask[i, : len(s)], labels[i, : len(s)] = s, 1, s
        # packed row (1, total)
        cu = cu_seqlens_from_lengths(sizes, device=device)
        row = torch.cat(samples)[None]  # (total,) -> (1, total)
        positions = position_ids_from_cu_seqlens(cu)
        row_labels = row.clone()
        row_labels[0, cu[:-1].long()] = -100  # no target crosses a sample boundary (shifted below)

        padded_step = _train_step(model, labels, input_ids=ids, attention_mask=mask, use_cache=False)
        hf_packed_step = _train_step(
            model, row_labels, input_ids=row, position_ids=positions, use_cache=False
        )
        packed_step = _train_step(model, row_labels, input_ids=row, position_ids=positions, cu_seqlens=cu)
        steps = {"padded-sdpa": padded_step, "hf-sdpa-packed": hf_packed_step}
        for backend in available_backends(device, dtype):
            if backend == "flex" and device == "cpu":
                continue  # flex has no backward on CPU
            steps[f"packed-{backend}"] = _with_backend(model, backend, packed_step)
        result = {"tokens": total, "samples": len(sizes), "padding": 1 - total / ids.numel()}
        result.update(fastest_times(steps, reps, device))
        rows.append(result)
    return rows


def _train_step(model, targets: torch.Tensor, **inputs):
    """One forward + backward of next-token cross-entropy over the real tokens (-100 ignored)."""

    def step():
        model.zero_grad(set_to_none=True)
        logits = model(**inputs).logits
        # predict token t+1 from token t: (B, L-1, V) against (B, L-1)
        loss = F.cross_entropy(
            logits[:, :-1].flatten(0, 1).float(), targets[:, 1:].flatten(), ignore_index=-100
        )
        loss.backward()

    return step


def _with_backend(model, backend: str, step):
    def run_packed():
        with packed_attention(model, backend=backend):
            step()

    return run_packed


def print_table(rows: list[dict]) -> None:
    columns = [k for k in rows[0] if k not in ("tokens", "samples", "padding")]
    print(f"{'tokens':>7} {'samples':>7} {'padding':>7}  " + "  ".join(f"{c:>22}" for c in columns))
    for r in rows:
        cells = [f"{r[c] * 1e3:8.1f} ms ({r[c] / r['padded-sdpa']:4.2f}x)" for c in columns]
        print(
            f"{r['tokens']:>7} {r['samples']:>7} {r['padding']:>7.0%}  "
            + "  ".join(f"{c:>22}" for c in cells)
        )


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--lengths",
        type=int,
        nargs="+",
        default=pick(smoke=[64, 128], cpu=[256, 512, 1024], gpu=[2048, 4096, 8192]),
    )
    add_device_arguments(parser, reps=pick(smoke=1, cpu=5, gpu=10))
    args = parser.parse_args(argv)
    dtype = apply_device_arguments(args)
    print(f"backends here: {', '.join(available_backends(args.device, dtype))}\n")
    rows = run(args.lengths, args.reps, args.device, dtype)
    print_table(rows)
    return rows


if __name__ == "__main__":
    main()
