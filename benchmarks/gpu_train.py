"""GPU training throughput: InternVL2.5-1B-shaped model, packed bf16 steps, tokens/s, memory, MFU.

Builds ``MiniVLConfig.internvl2_5_1b()`` (InternViT-300M + Qwen2.5-0.5B shapes) with random
weights on the GPU and trains it for ``--steps`` steps (30 by default, the first
``--warmup`` untimed) on synthetic packed rows shaped like InternVL 2.5's stage 2: 16,384
tokens and 48 tiles of 448 px per row (``--pack-tokens``, ``--tiles``), ``--samples`` samples
per row attending only to themselves (``cu_seqlens``, :mod:`minivl.train.attention`, best
backend of the machine), gradient checkpointing in both towers, bf16 weights and gradients
with fp32 master weights and fp32 AdamW (the DeepSpeed bf16 layout the planner assumes).

It prints a table and, when ``$OUT`` is set, writes ``$OUT/gpu_train.json``:

* tokens/s: LLM tokens (text + image) per second of a timed step;
* peak memory: ``torch.cuda.max_memory_allocated``, next to the planner's estimate;
* MFU: model FLOPs per step / step time / peak. The FLOPs are the planner's
  (:func:`minivl.train.planner.flops_per_sample`): ``2 x matmul weights x tokens`` forward
  and 2x that backward for every tower (all train in stage 2), plus attention
  ``4 x n x span x width`` per layer (x3 with backward), where the span is the ViT's 1,025
  tokens per tile and, in the LLM, the sample length (each sample attends to itself only;
  the full square, PaLM convention). Gradient-checkpointing recompute is not model FLOPs
  (reported as hardware FLOPs beside it). The peak is 989 TFLOP/s (H100 SXM dense bf16;
  ``--peak-tflops`` for another card).

Run from the repository root::

    python benchmarks/gpu_train.py                 # on a CUDA machine, about 1-2 minutes
    python benchmarks/gpu_train.py --dry-run       # anywhere: meta-device model, the plan, and a
                                                   # 2-step CPU rehearsal of the same loop (smoke model)

Without CUDA (and without ``--dry-run``) it exits with code 2.

Explained in chapter 13 (notebooks/13_scaling_up.ipynb).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from minivl.config import MiniVLConfig
from minivl.model import MiniVL
from minivl.train.attention import (
    cu_seqlens_from_lengths,
    enable_packed_attention,
    position_ids_from_cu_seqlens,
    select_backend,
)
from minivl.train.planner import GB, custom, flops_per_sample, param_counts, plan
from minivl.train.stages import stage2

H100_BF16_PEAK_TFLOPS = 989.0
IGNORE = -100


# ----------------------------------------------------------------------------------------
# synthetic packed rows
# ----------------------------------------------------------------------------------------


def sample_lengths(pack_tokens: int, tiles: int, samples: int, num_image_token: int) -> list[tuple[int, int]]:
    """(tokens, tiles) of each sample of one packed row: tiles spread as evenly as possible, the
    text tokens fill the row to exactly ``pack_tokens``."""
    if samples < 1 or tiles < samples:
        raise ValueError(f"need 1 <= samples <= tiles, got samples={samples}, tiles={tiles}")
    tiles_each = [tiles // samples + (1 if i < tiles % samples else 0) for i in range(samples)]
    text_total = pack_tokens - tiles * (num_image_token + 2)  # + <img> and </img> per tile block
    if text_total < 4 * samples:
        raise ValueError(f"{tiles} tiles x {num_image_token} tokens do not leave room for text in a "
                         f"{pack_tokens}-token row; use --pack-tokens larger or --tiles smaller")
    text_each = [text_total // samples + (1 if i < text_total % samples else 0) for i in range(samples)]
    return [(k * (num_image_token + 2) + t, k) for k, t in zip(tiles_each, text_each)]


def make_packed_row(cfg: MiniVLConfig, pack_tokens: int, tiles: int, samples: int, img_start: int, img_end: int,
                    seed: int = 0, pixel_device: str | torch.device = "cpu",
                    dtype: torch.dtype = torch.bfloat16) -> dict[str, torch.Tensor]:
    """One packed row: ``input_ids``/``labels``/``position_ids`` (1, L), ``cu_seqlens`` and
    ``pixel_values`` (tiles, 3, H, W). Each sample is a prompt of ``<img>`` + ``IMG_CONTEXT`` x 256
    + ``</img>`` per tile and random text, with the second half of its text supervised."""
    g = torch.Generator().manual_seed(seed)
    vocab, img = cfg.vocab_size, cfg.image_token_id
    if img is None:
        raise ValueError("the model config needs image_token_id")
    specials = {img, img_start, img_end}
    ids, labels = [], []
    lengths = sample_lengths(pack_tokens, tiles, samples, cfg.num_image_token)
    for n_tokens, n_tiles in lengths:
        n_text = n_tokens - n_tiles * (cfg.num_image_token + 2)
        text = torch.randint(0, vocab, (n_text,), generator=g)
        text[torch.isin(text, torch.tensor(sorted(specials)))] = 0  # random text never forms image markers
        block = torch.cat([torch.tensor([img_start]), torch.full((cfg.num_image_token,), img), torch.tensor([img_end])])
        prompt, answer = text[: n_text // 2], text[n_text // 2:]
        sample = torch.cat([prompt[:2], block.repeat(n_tiles), prompt[2:], answer])
        label = torch.full_like(sample, IGNORE)
        label[-len(answer):] = answer
        ids.append(sample)
        labels.append(label)
    cu = cu_seqlens_from_lengths([n for n, _ in lengths])
    size = cfg.vision.image_size
    if torch.device(pixel_device).type == "meta":  # shapes only
        pixel_values = torch.empty(tiles, 3, size, size, device="meta", dtype=dtype)
    else:
        pixel_values = torch.randn(tiles, 3, size, size, generator=g).to(device=pixel_device, dtype=dtype)
    return {"input_ids": torch.cat(ids)[None], "labels": torch.cat(labels)[None],  # (L,) -> (1, L)
            "position_ids": position_ids_from_cu_seqlens(cu), "cu_seqlens": cu, "pixel_values": pixel_values}


# ----------------------------------------------------------------------------------------
# the training step: bf16 model, fp32 master weights and AdamW
# ----------------------------------------------------------------------------------------


class MasterAdamW:
    """AdamW on fp32 master copies of bf16 parameters (mixed precision as DeepSpeed's bf16 mode):
    bf16 gradients are copied to fp32, the step runs in fp32, the result is copied back."""

    def __init__(self, params: list[torch.nn.Parameter], lr: float, weight_decay: float, fused: bool) -> None:
        self.params = params
        self.masters = [p.detach().float() for p in params]
        kwargs = {"fused": True} if fused else {}
        self.opt = torch.optim.AdamW(self.masters, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=weight_decay,
                                     **kwargs)

    def step(self, max_grad_norm: float = 1.0) -> float:
        grads = [p.grad for p in self.params]
        norm = torch.nn.utils.clip_grad_norm_(self.params, max_grad_norm)
        for master, grad in zip(self.masters, grads):
            master.grad = grad.float()
        self.opt.step()
        with torch.no_grad():
            torch._foreach_copy_([p.data for p in self.params], self.masters)
        for p, master in zip(self.params, self.masters):
            p.grad = None
            master.grad = None
        return float(norm)


def train_steps(model: MiniVL, batch: dict[str, torch.Tensor], steps: int, warmup: int, optimizer: MasterAdamW,
                sync) -> tuple[list[float], list[float]]:
    """Run ``steps`` steps on the same packed row; return (seconds of each timed step, losses)."""
    times, losses = [], []
    model.train()
    for step in range(steps):
        sync()
        start = time.perf_counter()
        out = model(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"], labels=batch["labels"],
                    position_ids=batch["position_ids"], cu_seqlens=batch["cu_seqlens"])
        loss = out.loss
        del out  # free the logits before the backward pass
        loss.backward()
        optimizer.step()
        loss = float(loss.detach())  # syncs
        sync()
        if step >= warmup:
            times.append(time.perf_counter() - start)
        losses.append(loss)
    return times, losses


def build_model(cfg: MiniVLConfig, device: str, dtype: torch.dtype, backend: str) -> MiniVL:
    with torch.device(device):
        model = MiniVL(cfg)
    model.to(dtype)
    model.gradient_checkpointing_enable(vision=True, llm=True)
    enable_packed_attention(model.language_model, backend)
    return model


# ----------------------------------------------------------------------------------------
# reporting
# ----------------------------------------------------------------------------------------


def model_flops(cfg: MiniVLConfig, tiles: int, pack_tokens: int, samples: int) -> dict[str, float]:
    """The planner's stage-2 FLOPs of one packed row, the LLM attention span being the sample length."""
    span = pack_tokens // samples
    return flops_per_sample(cfg, stage2("1b"), tiles, pack_tokens, attention_span=span)


def print_table(rows: list[tuple[str, str]]) -> None:
    width = max(len(k) for k, _ in rows)
    print("-" * (width + 30))
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    print("-" * (width + 30))


def write_json(result: dict[str, Any], name: str = "gpu_train.json") -> Path | None:
    out = os.environ.get("OUT")
    if not out:
        return None
    path = Path(out) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    return path


def dry_run(args: argparse.Namespace) -> dict[str, Any]:
    """Everything that does not need CUDA: the real model on the meta device, the plan, the packed
    row's layout, and a 2-step rehearsal of the training loop on the smoke model (CPU, bf16)."""
    cfg = MiniVLConfig.internvl2_5_1b()
    with torch.device("meta"):
        meta_model = MiniVL(cfg)
    n_meta = sum(p.numel() for p in meta_model.parameters())
    n_plan = param_counts(cfg)["all"]["total"]
    if n_meta != n_plan:
        raise AssertionError(f"planner counts {n_plan} parameters, the meta-device model has {n_meta}")
    stage = stage2("1b")
    gpu = custom(80, args.peak_tflops, "H100-80GB")
    p = plan("internvl2_5_1b", stage, 1, gpu, tiles_per_sample=args.tiles, tokens_per_sample=args.pack_tokens,
             attention_span=args.pack_tokens // args.samples)
    print(p)
    batch = make_packed_row(cfg, args.pack_tokens, args.tiles, args.samples, 151665, 151666, pixel_device="meta")
    n_img = int((batch["input_ids"] == cfg.image_token_id).sum())
    if n_img != args.tiles * cfg.num_image_token or batch["input_ids"].shape[1] != args.pack_tokens:
        raise AssertionError(f"packed row: {n_img} image tokens, {batch['input_ids'].shape[1]} tokens")
    print(f"packed row: {args.pack_tokens} tokens, {args.tiles} tiles ({n_img} image tokens), "
          f"{args.samples} samples, cu_seqlens {batch['cu_seqlens'].tolist()}")

    # the same loop on the smoke model, on the CPU
    torch.manual_seed(args.seed)
    small = MiniVLConfig.smoke(vocab_size=512, image_token_id=5)
    model = build_model(small, "cpu", torch.bfloat16, "sdpa")
    row = make_packed_row(small, 256, 8, 4, 6, 7, seed=args.seed)
    opt = MasterAdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.01, fused=False)
    times, losses = train_steps(model, row, steps=2, warmup=0, optimizer=opt, sync=lambda: None)
    print(f"CPU rehearsal (smoke model, bf16, packed attention 'sdpa'): losses {[round(x, 3) for x in losses]}")
    return {"dry_run": True, "params": n_plan, "plan": p.to_dict(), "rehearsal_losses": losses}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5, help="untimed first steps (compilation, allocator)")
    parser.add_argument("--pack-tokens", type=int, default=16384)
    parser.add_argument("--tiles", type=int, default=48)
    parser.add_argument("--samples", type=int, default=8, help="samples per packed row")
    parser.add_argument("--backend", default="auto",
                        help="packed attention backend (auto, flash_attn, torch_varlen, sdpa)")
    parser.add_argument("--peak-tflops", type=float, default=H100_BF16_PEAK_TFLOPS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dry-run", action="store_true", help="no GPU: meta-device model, plan, CPU rehearsal")
    args = parser.parse_args(argv)
    if args.steps <= args.warmup:
        parser.error("--steps must be larger than --warmup")

    if args.dry_run:
        result = dry_run(args)
        path = write_json(result, "gpu_train_dry_run.json")
        if path:
            print(f"wrote {path}")
        return 0
    if not torch.cuda.is_available():
        print("gpu_train.py needs a CUDA GPU (torch.cuda.is_available() is False); "
              "use --dry-run to check the script without one", file=sys.stderr)
        return 2

    torch.manual_seed(args.seed)
    device, dtype = "cuda", torch.bfloat16
    backend = select_backend(device, dtype, None if args.backend == "auto" else args.backend)
    cfg = MiniVLConfig.internvl2_5_1b()
    cfg = cfg.replace(vision=dataclasses.replace(cfg.vision, drop_path_rate=0.1))  # stage 2's drop path
    model = build_model(cfg, device, dtype, backend)
    batch = make_packed_row(cfg, args.pack_tokens, args.tiles, args.samples, 151665, 151666, seed=args.seed,
                            pixel_device=device)
    batch = {k: v.to(device) for k, v in batch.items()}
    opt = MasterAdamW([p for p in model.parameters() if p.requires_grad], lr=4e-5, weight_decay=0.01, fused=True)
    torch.cuda.reset_peak_memory_stats()
    try:
        times, losses = train_steps(model, batch, args.steps, args.warmup, opt, torch.cuda.synchronize)
    except torch.cuda.OutOfMemoryError as err:
        print(f"out of GPU memory with {args.pack_tokens} tokens and {args.tiles} tiles per row: {err}\n"
              "retry with a smaller pack, e.g. --pack-tokens 8192 --tiles 24", file=sys.stderr)
        return 3
    peak = torch.cuda.max_memory_allocated()

    step = sorted(times)[len(times) // 2]  # median
    flops = model_flops(cfg, args.tiles, args.pack_tokens, args.samples)
    tflops = flops["total"] / step / 1e12
    mfu = tflops / args.peak_tflops
    p = plan("internvl2_5_1b", stage2("1b"), 1, custom(80, args.peak_tflops, "H100-80GB"),
             tiles_per_sample=args.tiles, tokens_per_sample=args.pack_tokens,
             attention_span=args.pack_tokens // args.samples)
    planned = p.memory["total"] - p.memory["margin"] - p.memory["cuda_context"]
    result = {
        "device": torch.cuda.get_device_name(0), "torch": torch.__version__, "attention_backend": backend,
        "params": param_counts(cfg)["all"]["total"], "pack_tokens": args.pack_tokens, "tiles": args.tiles,
        "samples_per_row": args.samples, "steps": args.steps, "timed_steps": len(times),
        "step_seconds_median": step, "step_seconds": times, "tokens_per_second": args.pack_tokens / step,
        "tiles_per_second": args.tiles / step, "model_flops_per_step": flops["total"],
        "recompute_flops_per_step": flops["recompute"], "achieved_tflops": tflops,
        "peak_tflops": args.peak_tflops, "mfu": mfu,
        "hardware_mfu": (flops["total"] + flops["recompute"]) / step / 1e12 / args.peak_tflops,
        "peak_memory_bytes": peak, "planned_memory_bytes": planned, "losses": losses,
    }
    print_table([
        ("device", result["device"]),
        ("attention backend", backend),
        ("model", f"InternVL2.5-1B shape, {result['params'] / 1e9:.3f}B params, bf16 + fp32 master/AdamW"),
        ("packed row", f"{args.pack_tokens} tokens, {args.tiles} tiles, {args.samples} samples"),
        ("steps (timed)", f"{args.steps} ({len(times)})"),
        ("step time (median)", f"{step * 1e3:.1f} ms"),
        ("tokens/s", f"{result['tokens_per_second']:,.0f}"),
        ("model TFLOPs per step", f"{flops['total'] / 1e12:.1f} (+{flops['recompute'] / 1e12:.1f} recompute)"),
        ("achieved TFLOP/s", f"{tflops:.1f}"),
        ("MFU", f"{mfu:.1%} of {args.peak_tflops:g} TFLOP/s (hardware FLOPs: {result['hardware_mfu']:.1%})"),
        ("peak memory", f"{peak / GB:.2f} GB (planner estimate without margin: {planned / GB:.2f} GB)"),
        ("loss first -> last", f"{losses[0]:.3f} -> {losses[-1]:.3f}"),
    ])
    path = write_json(result)
    if path:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
