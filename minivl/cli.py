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

    overrides = {"max_steps": args.max_steps} if args.max_steps else None
    train_command(args.config, overrides)
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
    p.set_defaults(func=_cmd_train)

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
