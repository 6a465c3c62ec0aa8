"""The token cache: milliseconds per packed batch of the quickstart's data path with
``DataConfig.token_cache_size`` 0 (the baseline) and on, over two whole epochs.

The quickstart's training mixture (the workspace of ``minivl quickstart``, built if missing),
packed and collated by :func:`minivl.train.report.packed_make_loader`, the data path of every
quickstart stage; loading, packing and collation are timed, no model. Epoch 0 fills the cache,
epoch 1 draws the records again in another order and reads it (the quickstart's stage 2 passes
over its records about seven times). It checks that both settings give the very same batches
(token ids, labels, pixels) and prints the ratio to the baseline, epoch by epoch.

    MINIVL_SCALE=cpu python benchmarks/token_cache.py                      # --out runs/quickstart
"""

from __future__ import annotations

import argparse
import contextlib
import io
import time

import torch


def main(argv: list[str] | None = None) -> int:
    from minivl.quickstart import build_model, prepare
    from minivl.scale import get_scale
    from minivl.train.report import _TOKEN_CACHE_SIZE, packed_make_loader

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/quickstart", help="quickstart workspace (built if missing)")
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args(argv)

    with contextlib.redirect_stdout(io.StringIO()):
        ws = prepare(args.out, get_scale(), progress=False)
    model = build_model(ws)  # only its image size and tokens per tile are used

    def run(cache_size: int) -> tuple[list[float], list[dict]]:
        make_loader = packed_make_loader(ws, model, token_cache_size=cache_size)
        seconds, batches = [], []
        for epoch in range(args.epochs):
            start, n = time.perf_counter(), len(batches)
            batches += list(make_loader(epoch))
            seconds.append((time.perf_counter() - start) / (len(batches) - n))
        return seconds, batches

    base, base_batches = run(0)
    cached, cached_batches = run(_TOKEN_CACHE_SIZE)
    same = len(base_batches) == len(cached_batches) and all(
        torch.equal(a[k], b[k]) for a, b in zip(base_batches, cached_batches) for k in ("input_ids", "labels", "pixel_values"))
    print(f"the quickstart's packed batches, {len(base_batches) // args.epochs} an epoch; identical batches: {same}")
    print(f"{'epoch':>5} {'no cache ms':>12} {'cache ms':>9} {'ratio':>6}")
    for epoch, (a, b) in enumerate(zip(base, cached)):
        print(f"{epoch:>5} {a * 1000:>12.1f} {b * 1000:>9.1f} {b / a:>5.2f}x")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
