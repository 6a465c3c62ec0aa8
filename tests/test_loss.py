"""Tests for minivl.train.loss: token / sample / square averaging, exact under packing,
gradient accumulation and data parallel."""

from __future__ import annotations

import math
import os
import socket
import tempfile

import pytest
import torch
import torch.multiprocessing as mp

from minivl.data.packing import PackedDataset, packed_collate_fn
from minivl.train.loss import (
    data_index_from_cu_seqlens,
    global_loss_denominator,
    len2weight,
    sample_gradient_share,
    token_loss_weights,
    weighted_causal_lm_loss,
)

LN2 = math.log(2.0)
# softmax(log p) = p: label 0 costs ln 2, label 1 costs 2 ln 2, labels 2 and 3 cost 3 ln 2
PROBS = torch.tensor([0.5, 0.25, 0.125, 0.125])


def test_len2weight():
    assert len2weight(4, "token") == 1.0
    assert len2weight(4, "sample") == 0.25
    assert len2weight(4, "square") == 0.5
    assert [len2weight(0, m) for m in ("token", "sample", "square")] == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="unknown loss reduction"):
        len2weight(3, "mean")
    shares = sample_gradient_share([1, 4], "square")  # sqrt(1) : sqrt(4) = 1 : 2
    assert shares == pytest.approx([1 / 3, 2 / 3])
    assert sample_gradient_share([1, 4], "token") == pytest.approx([0.2, 0.8])
    assert sample_gradient_share([1, 4], "sample") == pytest.approx([0.5, 0.5])


def toy_row():
    # sample A: labels [-100, 0, 1]        -> CE ln2, 2ln2          (n=2, sum 3 ln2)
    # sample B: labels [-100, 2, 2, 2, 0]  -> CE 3ln2, 3ln2, 3ln2, ln2 (n=4, sum 10 ln2)
    labels = torch.tensor([[-100, 0, 1, -100, 2, 2, 2, 0]])
    logits = PROBS.log().expand(1, 8, 4).clone()
    cu = torch.tensor([0, 3, 8], dtype=torch.int32)
    return logits, labels, cu


@pytest.mark.parametrize("mode, expected", [
    ("token", 13 / 6 * LN2),  # (3 + 10) / 6 tokens
    ("sample", 2.0 * LN2),  # (3/2 + 10/4) / 2 samples
    ("square", (3 / math.sqrt(2) + 10 / 2) / (2 / math.sqrt(2) + 4 / 2) * LN2),  # w = 1/sqrt(2), 1/2
])
def test_three_averages_by_hand(mode, expected):
    logits, labels, cu = toy_row()
    w = token_loss_weights(labels, mode, cu_seqlens=cu)
    loss = weighted_causal_lm_loss(logits, labels, w)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_weights_by_hand_and_shift_alignment():
    _, labels, cu = toy_row()
    w = token_loss_weights(labels, "square", cu_seqlens=cu)
    a, b = 1 / math.sqrt(2), 0.5
    assert torch.allclose(w, torch.tensor([[0, a, a, 0, b, b, b, b]]))
    assert data_index_from_cu_seqlens(cu, 10).tolist() == [0, 0, 0, 1, 1, 1, 1, 1, -1, -1]
    # the logit at t predicts labels[t+1]: make only position 1 certain of label 1 (the label at 2)
    logits = torch.zeros(1, 3, 4)
    logits[0, 1, 1] = 100.0
    labels3 = torch.tensor([[-100, -100, 1]])
    loss = weighted_causal_lm_loss(logits, labels3, token_loss_weights(labels3, "token"))
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    # an explicit denominator replaces sum(w); a row with nothing supervised gives 0, not nan
    logits, labels, cu = toy_row()
    w = token_loss_weights(labels, "token", cu_seqlens=cu)
    assert weighted_causal_lm_loss(logits, labels, w, denominator=12.0).item() == pytest.approx(13 / 12 * LN2)
    none = torch.full((1, 8), -100)
    assert weighted_causal_lm_loss(logits, none, token_loss_weights(none, "square")).item() == 0.0


def tiny_qwen2():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      use_cache=False, attn_implementation="sdpa")
    return Qwen2ForCausalLM(cfg).eval()


def text_sample(gen, length, supervised):
    ids = torch.randint(1, 40, (length,), generator=gen)
    labels = ids.clone()
    labels[: length - supervised] = -100
    return {"input_ids": ids, "labels": labels, "pixel_values": torch.zeros(0, 3, 2, 2),
            "image_flags": torch.zeros(0, dtype=torch.long)}


@pytest.mark.parametrize("mode", ["token", "sample", "square"])
def test_packed_equals_separate_samples(mode):
    model = tiny_qwen2()
    gen = torch.Generator().manual_seed(1)
    samples = [text_sample(gen, 9, 2), text_sample(gen, 14, 10), text_sample(gen, 6, 1)]
    ds = PackedDataset([samples], max_packed_tokens=64, num_images_expected=4, shuffle=False)
    (pack,) = list(ds)
    batch = packed_collate_fn([pack], loss_reduction=mode)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
        packed = weighted_causal_lm_loss(logits, batch["labels"], batch["loss_weight"])
        num = den = 0.0
        for s in samples:  # each sample alone: sum_i w_i sum_t CE / sum_i w_i n_i
            out = model(input_ids=s["input_ids"][None], use_cache=False).logits
            n = int((s["labels"][1:] != -100).sum())
            ce = torch.nn.functional.cross_entropy(out[0, :-1], s["labels"][1:], ignore_index=-100, reduction="sum")
            num += len2weight(n, mode) * ce.item()
            den += len2weight(n, mode) * n
    assert packed.item() == pytest.approx(num / den, rel=1e-5)


class TokenModel(torch.nn.Module):
    """Embedding -> linear: per-token logits, so rows can be split or joined freely."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = torch.nn.Embedding(12, 8)
        self.head = torch.nn.Linear(8, 12)

    def forward(self, ids):
        return self.head(self.emb(ids))


def micro_batches(mode="square"):
    """Three packed rows of different total weight (first label of every row ignored)."""
    gen = torch.Generator().manual_seed(3)
    rows = []
    for lengths in ([5, 3], [12], [2, 4, 7]):
        ids = torch.randint(0, 12, (sum(lengths),), generator=gen)
        labels = ids.clone()
        cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist())
        labels[cu[:-1]] = -100
        w = token_loss_weights(labels, mode, cu_seqlens=cu)
        rows.append((ids[None], labels[None], w[None]))
    return rows


def grads(model):
    return [p.grad.detach().clone() for p in model.parameters()]


def test_gradient_accumulation_equals_one_big_batch():
    rows = micro_batches()
    # reference: one row holding all three (sample starts are ignored, so the joins do not leak)
    big = [torch.cat(parts, dim=1) for parts in zip(*rows)]
    model = TokenModel()
    ref = weighted_causal_lm_loss(model(big[0]), big[1], big[2])
    ref.backward()
    ref_grads = grads(model)

    model = TokenModel()
    W = global_loss_denominator([w for _, _, w in rows])
    assert W.item() == pytest.approx(big[2][0, 1:].sum().item())
    total = 0.0
    for ids, labels, w in rows:  # no division by the number of micro-batches
        loss = weighted_causal_lm_loss(model(ids), labels, w, denominator=W)
        loss.backward()
        total += loss.item()
    assert total == pytest.approx(ref.item(), rel=1e-6)
    for g, r in zip(grads(model), ref_grads):
        assert torch.allclose(g, r, atol=1e-6)

    # the naive recipe (mean of per-micro-batch means) is a different objective
    model = TokenModel()
    naive = sum(weighted_causal_lm_loss(model(i), lab, w) for i, lab, w in rows) / len(rows)
    assert abs(naive.item() - ref.item()) > 1e-3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        rows = micro_batches()
        mine = rows[:2] if rank == 0 else rows[2:]  # rank 0: two micro-batches, rank 1: one
        model = TokenModel()
        W = global_loss_denominator([w for _, _, w in mine])
        total = torch.zeros(())
        for ids, labels, w in mine:
            loss = weighted_causal_lm_loss(model(ids), labels, w, denominator=W)
            loss.backward()
            total += loss.detach()
        for p in model.parameters():  # what DDP does: average gradients over ranks
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad /= world
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        torch.save({"W": W, "loss": total / world, "grads": grads(model)}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_rank_gloo_equals_global_weighted_mean():
    rows = micro_batches()
    big = [torch.cat(parts, dim=1) for parts in zip(*rows)]
    model = TokenModel()
    ref = weighted_causal_lm_loss(model(big[0]), big[1], big[2])
    ref.backward()
    with tempfile.TemporaryDirectory() as out:
        mp.spawn(_ddp_worker, args=(2, _free_port(), out), nprocs=2, join=True)
        results = [torch.load(os.path.join(out, f"rank{r}.pt")) for r in range(2)]
    # the denominator is the AVG over ranks of each rank's weight sum
    assert results[0]["W"].item() == pytest.approx(big[2][0, 1:].sum().item() / 2, rel=1e-6)
    for res in results:
        # mean over ranks of the losses (DDP's view) equals the global weighted mean
        assert res["loss"].item() == pytest.approx(ref.item(), rel=1e-5)
        for g, r in zip(res["grads"], grads(model)):
            assert torch.allclose(g, r, atol=1e-6)


@pytest.mark.parametrize("weighted", [False, True])
def test_supervised_logits_only_gives_the_same_loss_and_gradients(weighted):
    """The trainer projects only supervised positions onto the vocabulary; loss and gradients
    must equal the full-logits path (plain mean and InternVL's weighted loss, two rows)."""
    from tests._tiny_model import tiny_model_and_tokenizer

    model, tok = tiny_model_and_tokenizer()
    model.train()
    img = tok.convert_tokens_to_ids("<IMG_CONTEXT>")
    n_img = model.num_image_token
    gen = torch.Generator().manual_seed(5)
    ids = torch.randint(10, 250, (2, 40), generator=gen)
    ids[0, 3:3 + n_img] = img  # one tile in row 0
    labels = ids.clone()
    labels[:, :20] = -100  # prompt and image: not supervised
    labels[1, 30:34] = -100
    pixels = torch.randn(1, 3, model.config.vision.image_size, model.config.vision.image_size, generator=gen)
    kwargs = {"input_ids": ids, "pixel_values": pixels, "image_flags": torch.ones(1, dtype=torch.long), "labels": labels}
    if weighted:
        kwargs["loss_weight"] = token_loss_weights(labels, "square")
        kwargs["loss_denominator"] = torch.tensor(7.5)
    results = []
    for only in (False, True):
        model.zero_grad()
        out = model(**kwargs, supervised_logits_only=only)
        out.loss.backward()
        results.append((out.loss.detach(), out.logits.shape, grads(model)))
    (full, full_shape, g_full), (kept, kept_shape, g_kept) = results
    assert full_shape == (2, 40, model.config.llm["vocab_size"])
    assert kept_shape == (int((labels[:, 1:] != -100).sum()), model.config.llm["vocab_size"])
    torch.testing.assert_close(kept, full, rtol=1e-6, atol=1e-6)
    for a, b in zip(g_kept, g_full):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_supervised_logits_only_falls_back_for_an_llm_without_logits_to_keep():
    """A remote-code LLM whose forward has no ``logits_to_keep`` gets full logits and the usual loss."""
    from tests._tiny_model import tiny_model_and_tokenizer

    model, _ = tiny_model_and_tokenizer()
    inner = model.language_model

    class NoKeep(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = inner

        def get_input_embeddings(self):
            return self.inner.get_input_embeddings()

        def forward(self, inputs_embeds=None, **kwargs):
            assert "logits_to_keep" not in kwargs
            return self.inner(inputs_embeds=inputs_embeds, **kwargs)

    ids = torch.randint(10, 250, (1, 24), generator=torch.Generator().manual_seed(2))
    labels = ids.clone()
    labels[:, :12] = -100
    full = model(input_ids=ids, labels=labels)
    model.language_model = NoKeep()
    out = model(input_ids=ids, labels=labels, supervised_logits_only=True)
    assert out.logits.shape == full.logits.shape
    torch.testing.assert_close(out.loss, full.loss)
