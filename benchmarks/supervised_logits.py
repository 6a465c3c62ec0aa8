"""Logits on every position vs on the supervised positions only: activation memory and time.

One packed row of ``--tokens`` tokens, of which ``--supervised`` (a share) carry a label, goes
through a Qwen2 LLM with InternVL2.5-1B's vocabulary (151,674 tokens) inside :class:`MiniVL`,
forward and backward, two ways:

* ``all positions`` (the baseline, ratio 1.00): the LM head projects every position onto the
  vocabulary and the loss reads the supervised rows (what a plain causal-LM loss does);
* ``supervised only``: ``MiniVL.forward(..., supervised_logits_only=True)``, what minivl's
  trainer runs: transformers' ``logits_to_keep`` gets a boolean mask of the supervised
  positions and only those rows are projected.

Memory is the activation bytes autograd saves for the backward pass
(:func:`minivl.train.measure.saved_bytes`, parameters excluded), which is where the (L, V)
logits live during training; time is the fastest forward + backward of ``--reps``
interleaved rounds after a warm-up round (:func:`minivl.train.measure.fastest_times`), in the
same process. The two losses are printed too: they must agree. Run::

    MINIVL_SCALE=cpu python benchmarks/supervised_logits.py --threads 2

Explained in chapter 9 (notebooks/09_loss_reweighting.ipynb).
"""

from __future__ import annotations

import argparse

import torch

from minivl.scale import pick
from minivl.train.measure import (
    add_device_arguments,
    apply_device_arguments,
    fastest_times,
    saved_bytes,
    storage_keys,
)

VOCAB_1B = 151_674  # InternVL2.5-1B's LLM (Qwen2.5-0.5B-Instruct) vocabulary


def build_model(vocab: int, hidden: int, layers: int, device: str, dtype: torch.dtype):
    """A MiniVL whose LLM is a small Qwen2 with ``vocab`` tokens (the ViT is never called)."""
    from minivl.config import MiniVLConfig
    from minivl.model import MiniVL

    torch.manual_seed(0)
    config = MiniVLConfig.smoke(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
                                num_hidden_layers=layers)
    return MiniVL(config).to(device=device, dtype=dtype).train()


def run(tokens: int, supervised: float, vocab: int, hidden: int, layers: int, reps: int, device: str,
        dtype: torch.dtype) -> dict[str, dict[str, float]]:
    model = build_model(vocab, hidden, layers, device, dtype)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (1, tokens), generator=g).to(device)
    labels = ids.clone()
    labels[0, torch.rand(tokens, generator=g).to(device) >= supervised] = -100
    losses: dict[str, float] = {}

    def step(only: bool, name: str):
        def go():
            model.zero_grad(set_to_none=True)
            loss = model(input_ids=ids, labels=labels, supervised_logits_only=only).loss
            loss.backward()
            losses[name] = loss.item()
        return go

    steps = {"all positions": step(False, "all positions"), "supervised only": step(True, "supervised only")}
    params = storage_keys(model)  # weights are not activations
    memory = {name: saved_bytes(fn, exclude=params)[0] for name, fn in steps.items()}
    times = fastest_times(steps, reps, device)
    return {name: {"saved_bytes": memory[name], "seconds": times[name], "loss": losses[name]} for name in steps}


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=pick(smoke=256, cpu=2048, gpu=16384))
    parser.add_argument("--supervised", type=float, default=0.1, help="share of positions with a label")
    parser.add_argument("--vocab", type=int, default=pick(smoke=4096, cpu=VOCAB_1B, gpu=VOCAB_1B))
    parser.add_argument("--hidden", type=int, default=pick(smoke=64, cpu=128, gpu=896))
    parser.add_argument("--layers", type=int, default=pick(smoke=1, cpu=2, gpu=4))
    add_device_arguments(parser, reps=pick(smoke=1, cpu=3, gpu=5))
    args = parser.parse_args(argv)
    dtype = apply_device_arguments(args)
    rows = run(args.tokens, args.supervised, args.vocab, args.hidden, args.layers, args.reps, args.device, dtype)
    base = rows["all positions"]
    print(f"\n{args.tokens} tokens, {args.supervised:.0%} supervised, vocabulary {args.vocab:,}, "
          f"LLM {args.hidden} wide x {args.layers} layers, {dtype}")
    print(f"{'':<16}{'saved for backward':>22}{'forward+backward':>22}{'loss':>10}")
    for name, r in rows.items():
        print(f"{name:<16}{r['saved_bytes'] / 2**20:>10.1f} MiB ({r['saved_bytes'] / base['saved_bytes']:4.2f}x)"
              f"{r['seconds'] * 1e3:>11.1f} ms ({r['seconds'] / base['seconds']:4.2f}x){r['loss']:>10.4f}")
    return rows


if __name__ == "__main__":
    main()
