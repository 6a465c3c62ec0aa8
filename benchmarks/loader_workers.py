"""Data-loading workers: seconds per training step with ``num_workers`` 0 (the baseline) and 1, 2.

The quickstart's stage 2 on its packed rows (the workspace of ``minivl quickstart``, built if
missing): each setting trains a fresh copy of the same model for ``--steps`` optimizer steps
(the first ``--warmup`` untimed) from the quickstart's own loader
(:func:`minivl.train.report.packed_make_loader`), loading included, and the settings take
turns over ``--rounds`` rounds. It prints the median seconds per step and the ratio to
``num_workers=0`` measured in the same process. With one worker the
rows are the very rows of ``num_workers=0`` (the losses are printed to show it); with two,
each worker packs its own shard, as in InternVL.

A worker is a separate process: it pays off when the model leaves a core idle. On a 2-core
CPU it does not (both cores run the model), which is why the ``tiny`` presets keep 0 and the
GPU presets use InternVL's 8 (pre-training) and 4 (fine-tuning).

    MINIVL_SCALE=cpu python benchmarks/loader_workers.py                # workers 0 and 1
    MINIVL_SCALE=cpu python benchmarks/loader_workers.py --workers 0 1 2 --rounds 3

Explained in chapter 13 (notebooks/13_scaling_up.ipynb).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import statistics
import time

import torch


def main(argv: list[str] | None = None) -> int:
    from minivl.quickstart import build_model, prepare
    from minivl.scale import get_scale
    from minivl.train.report import packed_make_loader
    from minivl.train.stages import get_stage
    from minivl.train.trainer import (
        _NON_MODEL_KEYS,
        apply_stage_freezing,
        build_optimizer,
        global_loss_denominator,
    )

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/quickstart", help="quickstart workspace (built if missing)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    if 0 not in args.workers:
        parser.error("--workers must include 0, the baseline")

    with contextlib.redirect_stdout(io.StringIO()):
        ws = prepare(args.out, get_scale(), progress=False)
    r = ws.recipe
    stage = get_stage("stage2", "tiny", lr=1e-3, seed=r.seed, max_packed_tokens=r.max_packed_tokens,
                      num_images_expected=r.num_images_expected, vision_lr_scale=r.vision_lr_scale)

    def run(workers: int) -> tuple[float, list[float]]:
        model = build_model(ws)
        apply_stage_freezing(model, stage)
        optimizer = build_optimizer(model, stage)
        model.train()
        loader = packed_make_loader(ws, model, stage.loss_reduction, num_workers=workers)
        batches = loader(0)
        losses, start = [], 0.0
        for step, batch in enumerate(itertools.islice(batches, args.warmup + args.steps)):
            if step == args.warmup:
                start = time.perf_counter()
            inputs = {k: v for k, v in batch.items() if k not in _NON_MODEL_KEYS}
            loss = model(**inputs, labels=batch["labels"], loss_weight=batch["loss_weight"],
                         loss_denominator=global_loss_denominator([batch["loss_weight"]]),
                         supervised_logits_only=True).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), stage.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
        batches.close()  # stops the workers
        return (time.perf_counter() - start) / args.steps, losses

    seconds: dict[int, list[float]] = {w: [] for w in args.workers}
    losses: dict[int, list[float]] = {}
    for _ in range(args.rounds):
        for workers in args.workers:  # interleaved: a slow spell of the machine hits every setting
            per_step, losses[workers] = run(workers)
            seconds[workers].append(per_step)
    base = statistics.median(seconds[0])
    print(f"stage 2 of the quickstart, {args.steps} timed steps x {args.rounds} rounds, "
          f"torch threads {torch.get_num_threads()}")
    print(f"{'num_workers':>11} {'ms / step':>10} {'ratio':>7} {'sum of losses':>15}")
    for workers in args.workers:
        median = statistics.median(seconds[workers])
        print(f"{workers:>11} {median * 1000:>10.1f} {median / base:>6.2f}x {sum(losses[workers]):>15.6f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
