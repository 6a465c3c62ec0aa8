"""The ``minivl`` command (also ``python -m minivl``).

Each subcommand is a thin wrapper over a function in the package, so everything the command
line does can also be done from Python or a notebook.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _cmd_info(args: argparse.Namespace) -> int:
    from minivl.scale import print_environment

    print_environment(args.scale)
    return 0


def _cmd_quickstart(args: argparse.Namespace) -> int:
    from minivl.quickstart import run_quickstart

    run_quickstart(out=args.out, scale=args.scale)
    return 0


def _cmd_data_synth(args: argparse.Namespace) -> int:
    from minivl.data.synthetic import synth_command

    synth_command(args.out, scale=args.scale, seed=args.seed)
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from minivl.train.run import train_command

    overrides = {k: v for k, v in (("max_steps", args.max_steps), ("num_workers", args.num_workers)) if v is not None}
    overrides = overrides or None
    train_command(args.config, overrides)
    return 0


def _cmd_chat(args: argparse.Namespace) -> int:
    from minivl.eval.inference import chat_command

    chat_command(args.model, args.image or [], args.question, max_num=args.max_num,
                 max_new_tokens=args.max_new_tokens, stream=not args.no_stream, draw=args.draw)
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from minivl.eval.inference import eval_command

    eval_command(args.model, args.bench, args.data, split=args.split, mode=args.mode, k=args.k, out=args.out,
                 tasks=args.task or None, limit=args.limit, max_num=args.max_num, temperature=args.temperature)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="minivl",
        description="minivl: InternVL 2.5 rebuilt from the ground up. "
        "Scale with --scale or $MINIVL_SCALE (smoke | cpu | gpu; default cpu).",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("info", help="print versions, device, dtype and scale")
    p.add_argument("--scale", default=None, help="smoke | cpu | gpu (default: $MINIVL_SCALE or cpu)")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("quickstart", help="run the whole pipeline at cpu scale and print a results table")
    p.add_argument("--out", default="runs/quickstart", help="output directory (default: runs/quickstart)")
    p.add_argument("--scale", default=None, help="smoke | cpu | gpu (default: $MINIVL_SCALE or cpu)")
    p.set_defaults(func=_cmd_quickstart)

    p = sub.add_parser("train", help="train one stage from a YAML config (see configs/)")
    p.add_argument("config", help="a run config, e.g. configs/tiny/stage2.yaml")
    p.add_argument("--max-steps", type=int, default=None, help="override the stage's max_steps")
    p.add_argument("--num-workers", type=int, default=None,
                   help="override the stage's DataLoader worker processes per rank (0: load in the training process)")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("chat", help="ask a trained model about images (streams the answer)")
    p.add_argument("question", nargs="?", default=None, help="the question; omit it to read one turn per line")
    p.add_argument("--model", required=True, help="checkpoint directory (minivl, official or transformers layout)")
    p.add_argument("--image", action="append", help="an image file (repeat for several: Image-1, Image-2, ...)")
    p.add_argument("--max-num", type=int, default=12, help="tile budget (default 12)")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--no-stream", action="store_true", help="print the answer at the end instead of streaming")
    p.add_argument("--draw", default=None, help="save the first image with the answer's boxes drawn to this file")
    p.set_defaults(func=_cmd_chat)

    p = sub.add_parser("eval", help="score a model on a benchmark; writes predictions and a results table")
    p.add_argument("--model", required=True, help="checkpoint directory")
    p.add_argument("--bench", default="synthetic", choices=["synthetic", "mmmu", "chartqa", "docvqa", "ai2d"])
    p.add_argument("--data", "--meta", dest="data", required=True,
                   help="synthetic: the split's meta JSON; others: a saved data set, parquet file or hub id")
    p.add_argument("--split", default=None, help="data set split (default: the benchmark's evaluation split)")
    p.add_argument("--mode", default="direct", choices=["direct", "cot"], help="direct answer or chain of thought")
    p.add_argument("--k", type=int, default=1, help="sampled answers per question, majority-voted (default 1)")
    p.add_argument("--temperature", type=float, default=0.6, help="sampling temperature when k > 1")
    p.add_argument("--task", action="append", help="synthetic: only this task (repeatable)")
    p.add_argument("--limit", type=int, default=None, help="at most this many items (per task for synthetic)")
    p.add_argument("--max-num", type=int, default=None, help="override the tile budgets")
    p.add_argument("--out", default=None, help="directory for predictions.jsonl, results.json and results.md")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("data", help="data tools: generate the synthetic suite")
    data_sub = p.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)
    q = data_sub.add_parser("synth", help="generate the offline synthetic multimodal suite")
    q.add_argument("--out", required=True, help="output directory")
    q.add_argument("--scale", default=None, help="smoke | cpu (default: $MINIVL_SCALE or cpu)")
    q.add_argument("--seed", type=int, default=0, help="base seed; splits and tasks derive their own")
    q.set_defaults(func=_cmd_data_synth)

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``minivl`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from minivl import __version__

        print(f"minivl {__version__}")
        return 0
    if not getattr(args, "command", None):
        parser.print_help()
        return 0
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
