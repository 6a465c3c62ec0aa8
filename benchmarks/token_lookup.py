"""Looking up a special token's id with a real-sized vocabulary: one lookup vs the whole dict.

:func:`minivl.text.tokenizer.token_id` runs twice for every training sample (the ids of
``<IMG_CONTEXT>`` and ``</img>``, in :func:`minivl.text.prompt.preprocess_internvl2_5`).
Building ``tokenizer.get_vocab()`` to find one id costs time that grows with the vocabulary;
``convert_tokens_to_ids`` does not. This script builds a word-level tokenizer with as many
entries as Qwen2.5's (151,643 plus InternVL's tokens), checks that both ways give the same id,
and times them in the same process.

    python benchmarks/token_lookup.py
    python benchmarks/token_lookup.py --vocab 32000 --calls 50

Explained in chapter 4 (notebooks/04_tokens_and_templates.ipynb).
"""

from __future__ import annotations

import argparse
import time

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from minivl.text.tokenizer import IMG_CONTEXT_TOKEN, add_internvl_tokens, token_id


def vocab_dict_lookup(tokenizer, token: str) -> int:
    """The baseline: the whole vocabulary as a dict, then one key."""
    return int(tokenizer.get_vocab()[token])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vocab", type=int, default=151_643, help="entries before InternVL's tokens")
    parser.add_argument("--calls", type=int, default=20)
    args = parser.parse_args()

    words = {f"w{i}": i for i in range(args.vocab - 1)}
    words["[UNK]"] = args.vocab - 1
    raw = Tokenizer(models.WordLevel(words, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="[UNK]")
    add_internvl_tokens(tok)
    assert token_id(tok, IMG_CONTEXT_TOKEN) == vocab_dict_lookup(tok, IMG_CONTEXT_TOKEN)

    timings = {}
    for name, fn in (("get_vocab()[token]", vocab_dict_lookup), ("token_id", token_id)):
        start = time.perf_counter()
        for _ in range(args.calls):
            fn(tok, IMG_CONTEXT_TOKEN)
        timings[name] = (time.perf_counter() - start) / args.calls
        print(f"{name:<20} {timings[name] * 1e3:9.3f} ms per call")
    ratio = timings["get_vocab()[token]"] / timings["token_id"]
    print(f"vocabulary {len(tok):,}: token_id is {ratio:,.0f}x faster; per training sample (two lookups) it "
          f"saves {2 * (timings['get_vocab()[token]'] - timings['token_id']) * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
