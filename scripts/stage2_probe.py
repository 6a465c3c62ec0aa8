"""Stage 2 alone, from the quickstart's warm starts, on a few tasks, over seeds and LLM depths.

A quick way to compare stage-2 recipes at cpu scale without running the whole quickstart:
it reuses (or builds) the quickstart workspace under ``--out`` (suite, tokenizer, warm-started
LLM and ViT), then, for each LLM depth and seed, builds a fresh MiniVL, trains only stage 2
on ``--tasks`` and scores the held-out ``shape_qa`` split per question type (count, colour,
position). The seed sets the stage's data order and the new projector. LLM depths other
than LLM-S's get their own warm start (``llm_S<depth>`` under ``--out``), 128 wide like S.

    MINIVL_SCALE=cpu python scripts/stage2_probe.py --seeds 0 1 2 --llm-layers 2 4

Single runs differ by several points from seed to seed at this size; compare means.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import time

import torch

from minivl.eval.suite import evaluate_suite
from minivl.quickstart import RECIPES, build_model, prepare
from minivl.scale import get_scale
from minivl.train.report import train_packed
from minivl.train.stages import get_stage
from minivl.train.warmstart import LLM_SIZES, suite_conversations, warm_start_llm


def llm_of_depth(ws, layers: int):
    """The workspace's LLM-S, or an LLM-S-wide model with ``layers`` layers warm-started the same way."""
    hidden, depth, heads, kv, inter = LLM_SIZES["S"]
    if layers == depth:
        return "S", ws.llm
    size = f"S{layers}"
    LLM_SIZES[size] = (hidden, layers, heads, kv, inter)  # registered for this process only
    r = ws.recipe
    llm, _ = warm_start_llm(ws.tokenizer, suite_conversations(ws.train_meta), size, steps=r.warm_steps, seed=r.seed,
                            cache=ws.out / f"llm_{size}", progress=False)
    return size, llm


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/quickstart", help="quickstart workspace (built if missing)")
    parser.add_argument("--tasks", nargs="+", default=["caption", "shape_qa"])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--lr", type=float, default=None, help="peak lr (default: the recipe's stage-2 lr)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--llm-layers", type=int, nargs="+", default=[LLM_SIZES["S"][1]])
    parser.add_argument("--image-size", type=int, default=None,
                        help="tile side in px (default: the recipe's); another size retrains the workspace's ViT, "
                             "so give it its own --out")
    parser.add_argument("--per-task", type=int, default=None, help="held-out questions (default: all)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    scale = get_scale()
    recipe = RECIPES[scale]
    if args.image_size is not None:
        recipe = dataclasses.replace(recipe, image_size=args.image_size)
    ws = prepare(args.out, scale, recipe, progress=False)
    if args.lr is None:
        args.lr = next(lr for name, _, lr in recipe.stages if name == "stage2")
    rows = []
    print(f"\nstage 2 only, {args.steps} steps at lr {args.lr:g} on {' + '.join(args.tasks)}; "
          f"{recipe.image_size} px tiles; held-out shape_qa ({scale} scale)")
    print(f"{'LLM':<15}{'seed':>5}{'seconds':>9}{'shape_qa':>10}   by question type")
    for layers in args.llm_layers:
        size, llm = llm_of_depth(ws, layers)
        for seed in args.seeds:
            run_ws = dataclasses.replace(ws, recipe=dataclasses.replace(ws.recipe, seed=seed))
            model = build_model(run_ws, language_model=copy.deepcopy(llm))
            r = run_ws.recipe
            stage = get_stage("stage2", "tiny", max_steps=args.steps, lr=args.lr, seed=seed,
                              max_packed_tokens=r.max_packed_tokens, num_images_expected=r.num_images_expected,
                              vision_lr_scale=r.vision_lr_scale, drop_path_rate=r.drop_path_rate)
            start = time.perf_counter()
            train_packed(run_ws, model, stage, progress=False, names=args.tasks)
            seconds = time.perf_counter() - start
            scores = evaluate_suite(model, ws.tokenizer, ws.test_meta, tasks=["shape_qa"], per_task=args.per_task,
                                    details=True)
            by_type = {q: v for q, (v, _) in scores["tasks"]["shape_qa"].by_type.items()}
            row = {"llm": f"{size} ({layers} layers)", "seed": seed, "seconds": seconds,
                   "shape_qa": scores["shape_qa"], "by_type": by_type}
            rows.append(row)
            print(f"{row['llm']:<15}{seed:>5}{seconds:>9.0f}{row['shape_qa']:>10.1%}   "
                  + ", ".join(f"{q} {v:.0%}" for q, v in by_type.items()), flush=True)
    return rows


if __name__ == "__main__":
    main()
