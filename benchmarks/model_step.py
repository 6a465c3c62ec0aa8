"""Model speed: MiniVL vs transformers' InternVLForConditionalGeneration, same weights, same batch.

Builds the ``tiny`` preset (112 px ViT 128 x 4, Qwen2 256 x 4), saves it in the transformers
layout and loads it into transformers, checks the two give the same logits, then times in
the same process:

* a training step (forward + backward) on a batch of 4 samples with 2 tiles each;
* greedy generation of 32 new tokens for 1 sample (KV cache on both sides).

It prints medians over the rounds and the ratios (time ratio: minivl / transformers, goal
<= 1.0; generation speed ratio: minivl tok/s / transformers tok/s, goal >= 1.0).

Run from the repository root::

    python benchmarks/model_step.py              # 7 timed rounds (alternating) after warm-up
    python benchmarks/model_step.py --rounds 3 --threads 2

Explained in chapter 5 (notebooks/05_assembling_minivl.ipynb).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from minivl.config import MiniVLConfig
from minivl.model import MiniVL

IMG = 5


def build_pair(seed: int = 0):
    from transformers import InternVLForConditionalGeneration

    torch.manual_seed(seed)
    model = MiniVL(MiniVLConfig.tiny(vocab_size=2000, image_token_id=IMG))
    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d, format="hf")
        hf = InternVLForConditionalGeneration.from_pretrained(d, dtype=torch.float32)
    return model, hf


def make_batch(model: MiniVL, batch: int = 4, tiles: int = 2, text: int = 48, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    n_img = tiles * model.num_image_token
    rows = [torch.cat([torch.randint(16, 2000, (8,), generator=g), torch.full((n_img,), IMG),
                       torch.randint(16, 2000, (text,), generator=g)]) for _ in range(batch)]
    input_ids = torch.stack(rows)
    pixel_values = torch.randn(batch * tiles, 3, 112, 112, generator=g)
    return input_ids, pixel_values


def time_pair(fn_a, fn_b, rounds: int, warmup: int = 2) -> tuple[float, float]:
    """Median seconds of ``fn_a`` and ``fn_b``, alternating a, b, a, b ... so that load from other
    processes on a shared machine hits both alike."""
    for _ in range(warmup):
        fn_a()
        fn_b()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(rounds):
        for fn, out in ((fn_a, times[0]), (fn_b, times[1])):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--new-tokens", type=int, default=32)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model, hf = build_pair()
    input_ids, pixel_values = make_batch(model)
    labels = input_ids.masked_fill(input_ids == IMG, -100)
    with torch.no_grad():
        diff = (model(input_ids, pixel_values=pixel_values).logits - hf(input_ids=input_ids, pixel_values=pixel_values).logits)
    print(f"tiny preset: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, "
          f"batch {tuple(input_ids.shape)}, {pixel_values.shape[0]} tiles; max |logit diff| = {diff.abs().max():.2e}")

    def step(m, **inputs):
        def run():
            m.zero_grad(set_to_none=True)
            m(**inputs).loss.backward()
        return run

    model.train()
    hf.train()
    ours, ref = time_pair(step(model, input_ids=input_ids, pixel_values=pixel_values, labels=labels),
                          step(hf, input_ids=input_ids, pixel_values=pixel_values, labels=labels), args.rounds)
    print(f"forward+backward  minivl {ours * 1e3:8.1f} ms   transformers {ref * 1e3:8.1f} ms   "
          f"ratio {ours / ref:.2f} (goal <= 1.0)")

    model.eval()
    hf.eval()
    prompt_ids, prompt_pixels = input_ids[:1], pixel_values[:2]
    n = args.new_tokens
    gen = dict(max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        a = model.generate(pixel_values=prompt_pixels, input_ids=prompt_ids, **gen)
        b = hf.generate(input_ids=prompt_ids, pixel_values=prompt_pixels, **gen)[:, prompt_ids.shape[1]:]
    same = a.tolist() == b.tolist()
    with torch.no_grad():
        ours_g, ref_g = time_pair(lambda: model.generate(pixel_values=prompt_pixels, input_ids=prompt_ids, **gen),
                                  lambda: hf.generate(input_ids=prompt_ids, pixel_values=prompt_pixels, **gen),
                                  args.rounds, 1)
    print(f"greedy generate   minivl {n / ours_g:8.1f} tok/s transformers {n / ref_g:8.1f} tok/s "
          f"speed ratio {ref_g / ours_g:.2f} (goal >= 1.0); same tokens: {same}")
    print(f"torch threads: {torch.get_num_threads()}, rounds: {args.rounds} (medians)")


if __name__ == "__main__":
    main()
