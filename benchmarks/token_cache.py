"""The token cache: milliseconds per packed batch of the quickstart's data path with
``DataConfig.token_cache_size`` 0 (the baseline) and on, over two passes.

The quickstart's training mixture (the workspace of ``minivl quickstart``, built if missing),
packed as stage 2 packs it (:func:`minivl.train.report.packed_make_loader`'s settings); each
setting draws ``--batches`` packed batches per pass, two passes (epochs 0 and 1), loading and
packing included, no model. The first pass fills the cache, the second reads it (the quickstart's
stage 2 sees each record about seven times). It checks that both settings give the very same
batches (token ids, labels, pixels) and prints the ratio to the baseline, pass by pass.

    MINIVL_SCALE=cpu python benchmarks/token_cache.py --out /root/.cache/minivl/quickstart/cpu
"""

from __future__ import annotations

import argparse
import contextlib
import io
import time

import torch


def main(argv: list[str] | None = None) -> int:
    from minivl.data.dataset import DataConfig, build_datasets
    from minivl.data.packing import PackedDataset
    from minivl.quickstart import prepare
    from minivl.scale import get_scale
    from minivl.train.report import _TOKEN_CACHE_SIZE

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/quickstart", help="quickstart workspace (built if missing)")
    parser.add_argument("--batches", type=int, default=600, help="packed batches per pass")
    args = parser.parse_args(argv)

    with contextlib.redirect_stdout(io.StringIO()):
        ws = prepare(args.out, get_scale(), progress=False)
    r, tok = ws.recipe, ws.tokenizer
    image_size = ws.vit.config.image_size if ws.vit is not None else r.image_size

    def run(cache_size: int) -> tuple[list[float], list[dict]]:
        cfg = DataConfig(image_size=image_size, num_image_token=(image_size // 14 // 2) ** 2,
                         max_dynamic_patch=r.max_dynamic_patch, max_length=r.max_packed_tokens,
                         min_num_frame=4, max_num_frame=8, token_cache_size=cache_size)
        datasets = build_datasets(ws.train_meta, tok, cfg, seed=r.seed)
        packed = PackedDataset(datasets, max_packed_tokens=r.max_packed_tokens,
                               num_images_expected=r.num_images_expected, seed=r.seed,
                               img_start_token_id=tok.convert_tokens_to_ids("<img>"),
                               img_end_token_id=tok.convert_tokens_to_ids("</img>"), pad_token_id=tok.pad_token_id)
        seconds, batches = [], []
        for epoch in (0, 1):
            for ds in datasets:
                ds.set_epoch(epoch)
            rows = iter(packed)
            start = time.perf_counter()
            batches += [next(rows) for _ in range(args.batches)]
            seconds.append((time.perf_counter() - start) / args.batches)
        return seconds, batches

    base, base_batches = run(0)
    cached, cached_batches = run(_TOKEN_CACHE_SIZE)
    same = all(torch.equal(a[k], b[k]) for a, b in zip(base_batches, cached_batches)
               for k in ("input_ids", "labels", "pixel_values"))
    print(f"the quickstart's packed rows, {args.batches} batches a pass; identical batches: {same}")
    print(f"{'pass':>4} {'no cache ms':>12} {'cache ms':>9} {'ratio':>6}")
    for i, (a, b) in enumerate(zip(base, cached)):
        print(f"{i + 1:>4} {a * 1000:>12.1f} {b * 1000:>9.1f} {b / a:>5.2f}x")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
