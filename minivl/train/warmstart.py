"""A pretrained LLM for the cpu scale: a small Qwen2 warmed up on the suite's text.

InternVL 2.5 starts from pretrained LLMs (Qwen2.5, InternLM2.5). Nothing pretrained is
reachable offline at the size a CPU can train, so minivl pretrains its own stand-in: a
Qwen2-architecture model of two sizes, ``S`` and ``L`` (the small and large LLMs of the
progressive-scaling demo, chapter 11), trained for a few minutes with plain next-token
prediction on every conversation of the synthetic suite, rendered with the chat template
(images removed). It learns the template, the vocabulary and the answer formats, but cannot
see: that is what the stages teach.

:func:`warm_start_llm` caches the result under ``minivl.cache_dir("llm")`` so chapters reuse it.

Explained in chapter 10 (notebooks/10_stage1_mlp_warmup.ipynb).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from minivl.text.template import get_template

# width, layers, heads, kv heads, MLP width: S and L differ 4x in parameters.
LLM_SIZES = {"S": (128, 2, 4, 2, 384), "L": (256, 4, 4, 2, 768)}


def llm_config(size: str, vocab_size: int, tie_word_embeddings: bool = True) -> dict[str, Any]:
    """A Qwen2 config dict for the cpu-scale LLM of ``size`` ``"S"`` or ``"L"``.

    Input and output embeddings are one matrix, as in the small Qwen2.5 models InternVL2.5-1B
    and -4B start from; ``tie_word_embeddings=False`` gives them their own, as Qwen2.5-7B and
    InternLM2.5 have."""
    if size not in LLM_SIZES:
        raise ValueError(f"unknown LLM size {size!r}; expected one of {sorted(LLM_SIZES)}")
    hidden, layers, heads, kv, inter = LLM_SIZES[size]
    return {
        "model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "vocab_size": vocab_size,
        "hidden_size": hidden, "intermediate_size": inter, "num_hidden_layers": layers,
        "num_attention_heads": heads, "num_key_value_heads": kv, "hidden_act": "silu",
        "max_position_embeddings": 4096, "rms_norm_eps": 1e-6,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
        "tie_word_embeddings": tie_word_embeddings, "bos_token_id": None, "eos_token_id": None,
        "use_sliding_window": False, "sliding_window": None, "max_window_layers": layers,
    }


def suite_conversations(meta: str | Path) -> list[list[dict[str, str]]]:
    """Every conversation of every data set of a meta file (the warm start's corpus); malformed
    records are skipped as :meth:`read_records` does with ``strict=False``."""
    from minivl.data.records import read_meta

    return [r.conversations for m in read_meta(meta).values() for r in m.read_records(strict=False)[0]]


def render_conversations(conversations: Sequence[Sequence[dict[str, str]]], template: str = "internvl2_5") -> list[str]:
    """Conversations (official record format) as chat-template text, image placeholders removed."""
    tpl = get_template(template)
    out = []
    for conv in conversations:
        system = conv[0]["value"] if conv and conv[0]["from"] == "system" else None
        turns = [(t["from"], t["value"].replace("<image>\n", "").replace("<video>\n", "").replace("<image>", ""))
                 for t in conv if t["from"] != "system"]
        out.append(tpl.render(turns, system_message=system))
    return out


def token_stream(tokenizer: Any, texts: Sequence[str], seq_len: int) -> torch.Tensor:
    """All texts tokenized end to end and cut into rows of ``seq_len`` tokens: (N, seq_len)."""
    ids: list[int] = []
    for text in texts:
        ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
    n = len(ids) // seq_len
    if n == 0:
        raise ValueError(f"the corpus has {len(ids)} tokens, fewer than one row of {seq_len}")
    return torch.tensor(ids[: n * seq_len]).reshape(n, seq_len)  # (n*seq_len,) -> (n, seq_len)


def pretrain_llm(
    model: nn.Module,
    rows: torch.Tensor,
    steps: int,
    batch_size: int = 16,
    lr: float = 3e-3,
    warmup: int = 20,
    seed: int = 0,
    progress: bool = True,
    train_embeddings: bool = True,
) -> list[float]:
    """Next-token prediction on ``rows`` (N, L) for ``steps`` AdamW steps (cosine schedule).
    With ``train_embeddings=False`` the input embeddings (and, when tied, the output ones) keep
    their initial values.

    Returns the loss per step.
    """
    from tqdm.auto import tqdm

    from minivl.train.trainer import cosine_with_warmup

    g = torch.Generator().manual_seed(seed)
    embeddings = model.get_input_embeddings().weight
    was_trainable = embeddings.requires_grad
    embeddings.requires_grad_(train_embeddings and was_trainable)  # frozen: no gradient computed for it at all
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_with_warmup(s, warmup, steps, 0.1))
    model.train()
    losses = []
    for _ in tqdm(range(steps), desc="LLM warm start", disable=not progress, dynamic_ncols=True):
        batch = rows[torch.randint(len(rows), (batch_size,), generator=g)]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    embeddings.requires_grad_(was_trainable)
    model.eval()
    return losses


def warm_start_llm(
    tokenizer: Any,
    conversations: Sequence[Sequence[dict[str, str]]],
    size: str = "S",
    steps: int = 300,
    seq_len: int = 256,
    batch_size: int = 16,
    lr: float = 3e-3,
    seed: int = 0,
    cache: str | Path | None = None,
    progress: bool = True,
    tie_word_embeddings: bool = True,
    train_embeddings: bool = True,
) -> tuple[nn.Module, dict[str, Any]]:
    """Build the ``size`` LLM for ``tokenizer`` and pretrain it on ``conversations``.

    ``tie_word_embeddings`` (see :func:`llm_config`) and ``train_embeddings`` (see
    :func:`pretrain_llm`) are for experiments on what the warm start does to the words: on
    text where colours are interchangeable, it makes their embeddings nearly equal (see
    :func:`word_similarity`).

    With ``cache`` (a directory), a model saved there by an identical call is loaded instead of
    trained. Returns ``(model, info)`` with the loss curve, parameter count and seconds.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    from minivl.text.tokenizer import tokenizer_fingerprint

    key = {"size": size, "steps": steps, "seq_len": seq_len, "batch_size": batch_size, "lr": lr, "seed": seed,
           "vocab_size": len(tokenizer), "tokenizer": tokenizer_fingerprint(tokenizer),
           "num_conversations": len(conversations),
           "config": llm_config(size, len(tokenizer), tie_word_embeddings)}  # a changed LLM_SIZES entry must not load a stale model
    if not train_embeddings:  # only then: models cached before the option existed stay valid
        key["train_embeddings"] = False
    if cache is not None:
        cache = Path(cache)
        info_path = cache / "warmstart.json"
        if info_path.exists() and json.loads(info_path.read_text()).get("key") == key:
            model = AutoModelForCausalLM.from_pretrained(cache, dtype=torch.float32)
            return model.eval(), json.loads(info_path.read_text())
    torch.manual_seed(seed)
    cfg = dict(llm_config(size, len(tokenizer), tie_word_embeddings))
    model_type = cfg.pop("model_type")
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **cfg), attn_implementation="sdpa")
    rows = token_stream(tokenizer, render_conversations(conversations), seq_len)
    start = time.perf_counter()
    losses = pretrain_llm(model, rows, steps, batch_size, lr, seed=seed, progress=progress,
                          train_embeddings=train_embeddings)
    info = {"key": key, "losses": losses, "seconds": time.perf_counter() - start,
            "parameters": sum(p.numel() for p in model.parameters()), "tokens": int(rows.numel()),
            "final_loss": float(sum(losses[-10:]) / min(10, len(losses))) if losses else math.nan}
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(cache)
        (cache / "warmstart.json").write_text(json.dumps(info))
    return model, info


def word_similarity(model: nn.Module, tokenizer: Any, words: Sequence[str]) -> float:
    """Mean cosine similarity between the input embeddings of ``words``, over all pairs.

    Each word must be one token of ``tokenizer`` (written as the tokenizer spells it, e.g.
    ``"Ġred"`` for `` red`` after a space in a byte-level BPE). ``model`` is a causal LM or a
    :class:`minivl.model.MiniVL` (its language model is read). Random embeddings give about 0;
    words the model cannot tell apart give about 1. Chapter 15 uses it to show that a warm
    start on text where colours (or shape kinds) are interchangeable pulls their embeddings
    together."""
    if len(words) < 2:
        raise ValueError(f"word_similarity needs at least two words, got {list(words)}")
    vocab = tokenizer.get_vocab()
    missing = [word for word in words if word not in vocab]
    if missing:
        raise ValueError(f"{missing} are not single tokens of this tokenizer; spell each word as one of its "
                         f"tokens (a byte-level BPE writes ' red' as 'Ġred')")
    ids = [vocab[word] for word in words]
    llm = getattr(model, "language_model", model)
    with torch.no_grad():
        vectors = nn.functional.normalize(llm.get_input_embeddings().weight[torch.tensor(ids)].float(), dim=-1)
        cosines = vectors @ vectors.mT  # (n, n), ones on the diagonal
    n = len(ids)
    return float((cosines.sum() - cosines.diagonal().sum()) / (n * n - n))
