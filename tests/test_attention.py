"""Packed (variable-length) attention: every backend against each sample run alone."""

from __future__ import annotations

import sys
import types

import pytest
import torch
import torch.nn.functional as F

from minivl.train import attention as attn
from minivl.train.attention import (
    BACKENDS,
    backend_unavailable_reason,
    block_diagonal_causal_mask,
    cu_seqlens_from_lengths,
    cu_seqlens_from_position_ids,
    disable_packed_attention,
    enable_packed_attention,
    packed_attention,
    position_ids_from_cu_seqlens,
    select_backend,
    varlen_attention,
)

transformers = pytest.importorskip("transformers")

LENGTHS = [5, 9, 3, 7]  # four samples packed into one row of 24 tokens
VOCAB = 61
CPU_BACKENDS = [b for b in BACKENDS if backend_unavailable_reason(b, "cpu", torch.float32) is None]


def reference_attention(q, k, v, cu_seqlens, scale):
    """Each sample alone, written out: softmax(q k^T * scale + causal) v, k/v heads repeated."""
    groups = q.shape[1] // k.shape[1]
    outs = []
    bounds = cu_seqlens.tolist()
    for start, end in zip(bounds, bounds[1:]):
        qs = q[start:end].transpose(0, 1)  # (n, Hq, D) -> (Hq, n, D)
        ks = k[start:end].repeat_interleave(groups, dim=1).transpose(0, 1)  # (n, Hkv, D) -> (Hq, n, D)
        vs = v[start:end].repeat_interleave(groups, dim=1).transpose(0, 1)
        scores = qs @ ks.transpose(1, 2) * scale  # (Hq, n, n)
        n = end - start
        scores = scores.masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), float("-inf"))
        outs.append((scores.softmax(-1) @ vs).transpose(0, 1))  # (Hq, n, D) -> (n, Hq, D)
    return torch.cat(outs)


def tiny_model(kind: str):
    torch.manual_seed(0)
    common = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    if kind == "qwen2":
        model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**common))
    elif kind == "llama":  # also the layout of InternLM2 weights converted to transformers
        model = transformers.LlamaForCausalLM(
            transformers.LlamaConfig(**{**common, "num_key_value_heads": 1})
        )
    elif kind == "qwen3":
        model = transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**common, head_dim=8))
    else:
        raise ValueError(kind)
    return model.eval()


@pytest.fixture(scope="module", params=["qwen2", "llama"])
def model(request):
    return tiny_model(request.param)


@pytest.fixture(scope="module")
def samples():
    generator = torch.Generator().manual_seed(1)
    return [torch.randint(0, VOCAB, (n,), generator=generator) for n in LENGTHS]


def packed(samples):
    cu = cu_seqlens_from_lengths([len(s) for s in samples])
    return torch.cat(samples)[None], position_ids_from_cu_seqlens(cu), cu  # (1, L), (1, L), (N + 1,)


@torch.no_grad()
def logits_alone(model, samples):
    return [model(input_ids=s[None], use_cache=False).logits[0] for s in samples]


# ---------------------------------------------------------------- cu_seqlens, positions, masks


def test_cu_seqlens_from_lengths():
    cu = cu_seqlens_from_lengths([5, 9, 3, 7])
    assert cu.dtype == torch.int32
    assert cu.tolist() == [0, 5, 14, 17, 24]
    with pytest.raises(ValueError, match="positive"):
        cu_seqlens_from_lengths([3, 0, 2])
    with pytest.raises(ValueError, match="at least one"):
        cu_seqlens_from_lengths([])


def test_cu_seqlens_from_position_ids():
    assert cu_seqlens_from_position_ids(torch.tensor([0, 1, 2, 0, 1, 0, 1, 2, 3])).tolist() == [0, 3, 5, 9]
    # padding positions filled with 0 (the official collator) become one-token segments
    assert cu_seqlens_from_position_ids(torch.tensor([[0, 1, 2, 0, 0, 0]])).tolist() == [0, 3, 4, 5, 6]
    # (B, L) rows are flattened, each row starting a sample
    assert cu_seqlens_from_position_ids(torch.tensor([[0, 1, 2], [0, 1, 0]])).tolist() == [0, 3, 5, 6]
    # a row that does not start at 0 still starts a sample, and so does any jump
    assert cu_seqlens_from_position_ids(torch.tensor([4, 5, 6, 9, 10])).tolist() == [0, 3, 5]


def test_position_ids_round_trip():
    cu = torch.tensor([0, 3, 5, 9], dtype=torch.int32)
    positions = position_ids_from_cu_seqlens(cu)
    assert positions.tolist() == [[0, 1, 2, 0, 1, 0, 1, 2, 3]]
    assert cu_seqlens_from_position_ids(positions).tolist() == cu.tolist()


def test_block_diagonal_causal_mask_by_hand():
    mask = block_diagonal_causal_mask(torch.tensor([0, 2, 5]))
    expected = torch.tensor(
        [
            [1, 0, 0, 0, 0],
            [1, 1, 0, 0, 0],
            [0, 0, 1, 0, 0],
            [0, 0, 1, 1, 0],
            [0, 0, 1, 1, 1],
        ],
        dtype=torch.bool,
    )
    assert mask.dtype == torch.bool and torch.equal(mask, expected)
    additive = block_diagonal_causal_mask(torch.tensor([0, 2, 5]), dtype=torch.float32)
    assert torch.equal(additive[expected], torch.zeros(int(expected.sum())))
    assert (additive[~expected] == torch.finfo(torch.float32).min).all()


@pytest.mark.parametrize("bad", [[1, 3], [0, 3, 3], [0, 4, 2], [0.0, 2.0]])
def test_malformed_cu_seqlens_fail_loudly(bad):
    with pytest.raises(ValueError, match="cu_seqlens"):
        block_diagonal_causal_mask(torch.tensor(bad))


# ---------------------------------------------------------------- the attention op itself


def random_qkv(heads_q=4, heads_kv=2, dim=8, total=24, dtype=torch.float32):
    generator = torch.Generator().manual_seed(2)
    q = torch.randn(total, heads_q, dim, generator=generator, dtype=dtype)
    k = torch.randn(total, heads_kv, dim, generator=generator, dtype=dtype)
    v = torch.randn(total, heads_kv, dim, generator=generator, dtype=dtype)
    return q, k, v


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("heads_kv", [4, 2, 1])
def test_varlen_attention_equals_each_sample_alone(backend, heads_kv):
    q, k, v = random_qkv(heads_kv=heads_kv)
    cu = cu_seqlens_from_lengths(LENGTHS)
    out = varlen_attention(q, k, v, cu, scale=0.3, backend=backend)
    assert out.shape == (24, 4, 8)
    torch.testing.assert_close(out, reference_attention(q, k, v, cu, 0.3), atol=1e-5, rtol=1e-5)


def test_segment_layout_round_trips():
    cu = cu_seqlens_from_lengths([3, 1, 2])
    index, valid = attn.segment_layout(cu)
    assert index.tolist() == [[0, 1, 2], [3, 0, 0], [4, 5, 0]]
    assert valid.tolist() == [[True, True, True], [True, False, False], [True, True, False]]
    x = torch.arange(6.0)
    assert torch.equal(x[index][valid], x)


@pytest.mark.parametrize("lengths", [[5, 7, 3, 9, 1, 6, 4, 8], [40, 2, 3]])
def test_sdpa_segments_forward_and_backward_equal_the_block_mask(lengths):
    """Many short samples take the padded-batch path; one long sample among short ones falls
    back to the block mask. Values and gradients equal the reference either way."""
    total = sum(lengths)
    cu = cu_seqlens_from_lengths(lengths)
    generator = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(total, h, 8, generator=generator, requires_grad=True) for h in (4, 2, 2))
    out = varlen_attention(q, k, v, cu, scale=0.3, backend="sdpa_segments")
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    ref = reference_attention(q, k, v, cu, 0.3)
    ref_grads = torch.autograd.grad(ref.square().sum(), (q, k, v))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, atol=1e-5, rtol=1e-5)


def test_sdpa_segments_is_bit_identical_to_the_masked_padded_batch():
    """The padded batch runs with ``is_causal`` instead of an explicit causal-and-valid mask:
    for every real token the two masks agree, so values and gradients must match exactly,
    not just closely (GQA, head dim 32 as in the cpu-scale LLM)."""
    lengths = [90, 40, 130, 17, 200, 60, 111]
    cu = cu_seqlens_from_lengths(lengths)
    total, longest = sum(lengths), max(lengths)
    generator = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(total, h, 32, generator=generator, requires_grad=True) for h in (4, 2, 2))
    upstream = torch.randn(total, 4, 32, generator=generator)

    out = varlen_attention(q, k, v, cu, scale=32 ** -0.5, backend="sdpa_segments")
    grads = torch.autograd.grad((out * upstream).sum(), (q, k, v))

    index, valid = attn.segment_layout(cu)  # the padded batch with its explicit mask, written out
    mask = torch.ones(longest, longest, dtype=torch.bool).tril()[None, None] & valid[:, None, None, :]
    qp, kp, vp = (t[index].transpose(1, 2) for t in (q, k, v))
    ref = F.scaled_dot_product_attention(qp, kp, vp, attn_mask=mask, scale=32 ** -0.5, enable_gqa=True)
    ref = ref.transpose(1, 2)[valid]
    ref_grads = torch.autograd.grad((ref * upstream).sum(), (q, k, v))
    assert torch.equal(out, ref)
    for g, r in zip(grads, ref_grads):
        assert torch.equal(g, r)


def test_varlen_attention_rejects_mismatched_lengths():
    q, k, v = random_qkv()
    with pytest.raises(ValueError, match="ends at 20 but the packed row has 24"):
        varlen_attention(q, k, v, torch.tensor([0, 10, 20]))
    with pytest.raises(ValueError, match="KV cache"):
        varlen_attention(q, k[:20], v[:20], cu_seqlens_from_lengths(LENGTHS))


def test_torch_varlen_on_cpu_or_skip():
    reason = backend_unavailable_reason("torch_varlen", "cpu", torch.float32)
    if reason is not None:
        pytest.skip(reason)
    q, k, v = random_qkv()
    cu = cu_seqlens_from_lengths(LENGTHS)
    out = varlen_attention(q, k, v, cu, scale=0.3, backend="torch_varlen")
    torch.testing.assert_close(out, reference_attention(q, k, v, cu, 0.3), atol=1e-5, rtol=1e-5)


def test_flash_attn_wiring_with_a_stand_in_kernel(monkeypatch):
    """The GPU-only kernel replaced by the reference: checks layout, int32 boundaries, causal flag."""
    calls = {}

    def flash_attn_varlen_func(
        q,
        k,
        v,
        cu_seqlens_q,
        cu_seqlens_k,
        max_seqlen_q,
        max_seqlen_k,
        dropout_p=0.0,
        softmax_scale=None,
        causal=False,
    ):
        calls.update(
            causal=causal, dtype=cu_seqlens_q.dtype, max=(max_seqlen_q, max_seqlen_k), heads=k.shape[1]
        )
        assert torch.equal(cu_seqlens_q, cu_seqlens_k)
        return reference_attention(q, k, v, cu_seqlens_q, softmax_scale)

    monkeypatch.setitem(
        sys.modules, "flash_attn", types.SimpleNamespace(flash_attn_varlen_func=flash_attn_varlen_func)
    )
    q, k, v = random_qkv(heads_kv=2)
    cu = cu_seqlens_from_lengths(LENGTHS).long()
    out = varlen_attention(q, k, v, cu, scale=0.3, backend="flash_attn")
    assert calls == {"causal": True, "dtype": torch.int32, "max": (9, 9), "heads": 2}
    torch.testing.assert_close(out, reference_attention(q, k, v, cu, 0.3), atol=1e-6, rtol=1e-6)


def test_torch_varlen_wiring_with_a_stand_in_kernel(monkeypatch):
    """torch 2.13's signature (window_size, enable_gqa), with the kernel replaced by the reference."""
    from torch.nn.attention import varlen

    calls = {}

    def varlen_attn(
        query,
        key,
        value,
        cu_seq_q,
        cu_seq_k,
        max_q,
        max_k,
        *,
        return_aux=None,
        scale=None,
        window_size=(-1, -1),
        enable_gqa=False,
        seqused_k=None,
        block_table=None,
        num_splits=None,
    ):
        calls.update(window=window_size, gqa=enable_gqa, dtype=cu_seq_q.dtype, max=(max_q, max_k))
        return reference_attention(query, key, value, cu_seq_q, scale)

    monkeypatch.setattr(varlen, "varlen_attn", varlen_attn)
    attn._torch_varlen_parameters.cache_clear()
    try:
        q, k, v = random_qkv(heads_kv=1)
        cu = cu_seqlens_from_lengths(LENGTHS)
        out = varlen_attention(q, k, v, cu, scale=0.3, backend="torch_varlen")
    finally:
        attn._torch_varlen_parameters.cache_clear()
    assert calls == {"window": (-1, 0), "gqa": True, "dtype": torch.int32, "max": (9, 9)}
    torch.testing.assert_close(out, reference_attention(q, k, v, cu, 0.3), atol=1e-6, rtol=1e-6)


# ---------------------------------------------------------------- backend selection


def test_select_backend_on_cpu():
    assert select_backend("cpu", torch.float32) == "sdpa_segments"
    assert select_backend("cpu", torch.bfloat16) == "sdpa_segments"
    assert select_backend("cpu", torch.float32, override="auto") == "sdpa_segments"
    assert select_backend("cpu", torch.float32, override="flex") == "flex"
    with pytest.raises(RuntimeError, match="flash_attn.*CUDA"):
        select_backend("cpu", torch.float32, override="flash_attn")
    with pytest.raises(ValueError, match="unknown attention backend"):
        select_backend("cpu", torch.float32, override="xformers")


def test_select_backend_on_a_gpu(monkeypatch):
    """The auto order on CUDA: flash-attn, then torch's varlen_attn, then SDPA; half precision only."""
    real_find_spec = attn.importlib.util.find_spec
    installed = {"flash_attn": True}
    monkeypatch.setattr(
        attn.importlib.util,
        "find_spec",
        lambda name, *a: (
            object() if name == "flash_attn" and installed["flash_attn"] else real_find_spec(name, *a)
        ),
    )
    monkeypatch.setattr(
        attn, "_probe_torch_varlen", lambda device_type, dtype: None if device_type == "cuda" else "no"
    )
    assert select_backend("cuda", torch.bfloat16) == "flash_attn"
    assert select_backend("cuda:0", torch.float16) == "flash_attn"
    assert select_backend("cuda", torch.float32) == "torch_varlen"  # flash-attn has no fp32 kernels
    installed["flash_attn"] = False
    assert select_backend("cuda", torch.bfloat16) == "torch_varlen"
    assert "not installed" in backend_unavailable_reason("flash_attn", "cuda", torch.bfloat16)
    monkeypatch.setattr(attn, "_probe_torch_varlen", lambda device_type, dtype: "no kernel")
    assert select_backend("cuda", torch.bfloat16) == "sdpa_segments"
    assert select_backend("cuda", torch.bfloat16, override="sdpa") == "sdpa"


# ---------------------------------------------------------------- whole LLMs on packed rows


@pytest.mark.parametrize("backend", ["auto", *CPU_BACKENDS])
def test_packed_logits_equal_each_sample_alone(model, samples, backend):
    expected = torch.cat(logits_alone(model, samples))
    ids, positions, cu = packed(samples)
    with packed_attention(model, backend=backend), torch.no_grad():
        assert model.config.use_cache is False
        logits = model(input_ids=ids, position_ids=positions, cu_seqlens=cu).logits[0]
        # the multimodal model calls the LLM with embeddings, not ids
        embeds = model.get_input_embeddings()(ids)
        from_embeds = model(inputs_embeds=embeds, position_ids=positions, cu_seqlens=cu).logits[0]
    assert logits.shape == (sum(LENGTHS), VOCAB)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(from_embeds, expected, atol=1e-5, rtol=1e-5)


def test_qwen3_with_qk_norm(samples):
    model = tiny_model("qwen3")
    ids, positions, cu = packed(samples)
    expected = torch.cat(logits_alone(model, samples))
    with packed_attention(model), torch.no_grad():
        logits = model(input_ids=ids, position_ids=positions, cu_seqlens=cu).logits[0]
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)


def test_packed_rows_in_a_batch_of_two(model, samples):
    """cu_seqlens over the B * L flattened tokens: rows of 12 tokens holding samples of 5 + 7 | 12."""
    flat = torch.cat(samples)  # 24 tokens, re-cut into samples that do not cross the two rows
    pieces = [flat[0:5], flat[5:12], flat[12:24]]
    cu = cu_seqlens_from_lengths([5, 7, 12])
    positions = position_ids_from_cu_seqlens(cu).reshape(2, 12)  # (1, 24) -> (2, 12)
    with packed_attention(model), torch.no_grad():
        logits = model(input_ids=flat.reshape(2, 12), position_ids=positions, cu_seqlens=cu).logits
    logits = logits.reshape(24, VOCAB)  # (2, 12, V) -> (24, V)
    torch.testing.assert_close(logits, torch.cat(logits_alone(model, pieces)), atol=1e-5, rtol=1e-5)


def test_positions_alone_isolate_samples_in_packed_mode(model, samples):
    """Without cu_seqlens minivl reads the boundaries from the restarting positions."""
    expected = torch.cat(logits_alone(model, samples))
    ids, positions, _ = packed(samples)
    with packed_attention(model), torch.no_grad():
        logits = model(input_ids=ids, position_ids=positions).logits[0]
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)


def test_changing_one_sample_changes_no_other(model, samples):
    ids, positions, cu = packed(samples)
    changed = ids.clone()
    changed[0, 5:14] = (changed[0, 5:14] + 7) % VOCAB  # sample 1 (tokens 5..13) only
    with packed_attention(model), torch.no_grad():
        before = model(input_ids=ids, position_ids=positions, cu_seqlens=cu).logits[0]
        after = model(input_ids=changed, position_ids=positions, cu_seqlens=cu).logits[0]
    others = torch.ones(sum(LENGTHS), dtype=torch.bool)
    others[5:14] = False
    torch.testing.assert_close(after[others], before[others], atol=1e-6, rtol=0)
    assert (after[5:14] - before[5:14]).abs().max() > 1e-3


def test_packed_gradients_equal_sum_of_per_sample_gradients(samples):
    model = tiny_model("qwen2").train()

    def summed_loss(logits, tokens):  # next-token cross-entropy, summed over the sample
        return F.cross_entropy(logits[:-1], tokens[1:], reduction="sum")

    model.zero_grad()
    for s in samples:
        summed_loss(model(input_ids=s[None], use_cache=False).logits[0], s).backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters()}

    model.zero_grad()
    ids, positions, cu = packed(samples)
    with packed_attention(model, backend="sdpa"):
        logits = model(input_ids=ids, position_ids=positions, cu_seqlens=cu).logits[0]
    bounds = cu.tolist()
    loss = sum(summed_loss(logits[a:b], ids[0, a:b]) for a, b in zip(bounds, bounds[1:]))
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad.abs().max() > 0, name
        torch.testing.assert_close(p.grad, expected[name], atol=1e-5, rtol=1e-4, msg=name)


def test_the_known_leak_and_the_guard(samples):
    """Restarting positions with transformers' own SDPA: isolated only when use_cache is off."""
    model = tiny_model("qwen2")
    alone = logits_alone(model, samples)
    ids, positions, cu = packed(samples)
    assert model.config.use_cache is True  # the default of every causal LM config
    with torch.no_grad():
        naive = model(input_ids=ids, position_ids=positions).logits[0]
        no_cache = model(input_ids=ids, position_ids=positions, use_cache=False).logits[0]
    # the first sample only looks back at itself either way; every later one leaks
    torch.testing.assert_close(naive[:5], alone[0], atol=1e-5, rtol=1e-5)
    assert (naive[5:14] - alone[1]).abs().max() > 1e-2
    assert (naive[14:17] - alone[2]).abs().max() > 1e-2
    torch.testing.assert_close(no_cache, torch.cat(alone), atol=1e-5, rtol=1e-5)
    # minivl: the cache flag is switched off and packed rows with a cache are refused
    with packed_attention(model), torch.no_grad():
        ours = model(input_ids=ids, position_ids=positions, cu_seqlens=cu).logits[0]
        with pytest.raises(ValueError, match="use_cache=False"):
            model(input_ids=ids, position_ids=positions, cu_seqlens=cu, use_cache=True)
    torch.testing.assert_close(ours, torch.cat(alone), atol=1e-5, rtol=1e-5)


def test_padded_batches_and_generation_still_work_in_packed_mode(samples):
    model = tiny_model("llama")
    alone = logits_alone(model, samples)
    ids = torch.zeros(4, 9, dtype=torch.long)
    mask = torch.zeros(4, 9, dtype=torch.long)
    for i, s in enumerate(samples):
        ids[i, : len(s)] = s
        mask[i, : len(s)] = 1
    with torch.no_grad():
        greedy = model.generate(samples[0][None], max_new_tokens=5, do_sample=False)
    with packed_attention(model), torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
        greedy_packed_mode = model.generate(
            samples[0][None], max_new_tokens=5, do_sample=False, use_cache=True
        )
    for i, s in enumerate(samples):  # right padding: the real tokens match, the padding mask was kept
        torch.testing.assert_close(logits[i, : len(s)], alone[i], atol=1e-5, rtol=1e-5)
    assert greedy_packed_mode.tolist() == greedy.tolist()


def test_enable_and_disable_restore_the_model():
    model = tiny_model("qwen2")
    assert model.config._attn_implementation == "sdpa"
    previous = enable_packed_attention(model, backend="sdpa")
    assert model.config._attn_implementation == "minivl_varlen_mask"
    assert model.model.layers[0].self_attn.config._attn_implementation == "minivl_varlen_mask"
    assert model.config.use_cache is False
    disable_packed_attention(model, previous)
    assert (model.config._attn_implementation, model.config.use_cache) == ("sdpa", True)
    with pytest.raises(RuntimeError, match="unavailable"):
        enable_packed_attention(model, backend="flash_attn")
    assert model.config._attn_implementation == "sdpa"
    with pytest.raises(KeyError):
        with packed_attention(model):
            assert model.config._attn_implementation == "minivl_varlen"
            raise KeyError("boom")
    assert (model.config._attn_implementation, model.config.use_cache) == ("sdpa", True)


def test_models_without_attention_interface_are_refused(monkeypatch):
    model = tiny_model("qwen2")
    monkeypatch.setattr(model, "_can_set_attn_implementation", lambda: False)
    with pytest.raises(TypeError, match="AttentionInterface"):
        enable_packed_attention(model)


def test_padding_inside_a_packed_row_is_refused(samples):
    model = tiny_model("qwen2")
    ids, positions, cu = packed(samples)
    mask = torch.ones_like(ids)
    mask[0, -2:] = 0
    with packed_attention(model), pytest.raises(ValueError, match="own segment"):
        model(input_ids=ids, position_ids=positions, cu_seqlens=cu, attention_mask=mask)


def test_transformers_flattening_kwargs_are_understood(samples, monkeypatch):
    """``DataCollatorWithFlattening(return_flash_attn_kwargs=True)`` names: cu_seq_lens_q, max_length_q."""
    model = tiny_model("qwen2")
    seen = []
    real = attn.varlen_attention

    def spy(q, k, v, cu_seqlens, **kwargs):
        seen.append((cu_seqlens.tolist(), kwargs["max_seqlen"]))
        return real(q, k, v, cu_seqlens, **kwargs)

    monkeypatch.setattr(attn, "varlen_attention", spy)
    alone = torch.cat(logits_alone(model, samples))
    ids, positions, cu = packed(samples)
    with packed_attention(model), torch.no_grad():
        logits = model(
            input_ids=ids,
            position_ids=positions,
            cu_seq_lens_q=cu,
            cu_seq_lens_k=cu,
            max_length_q=9,
            max_length_k=9,
        ).logits[0]
    torch.testing.assert_close(logits, alone, atol=1e-5, rtol=1e-5)
    assert seen == [([0, 5, 14, 17, 24], 9)] * 2  # both layers used the given boundaries


def test_bidirectional_layers_are_refused():
    q, k, v = (t.transpose(0, 1)[None] for t in random_qkv())  # (T, H, D) -> (1, H, T, D)
    vision_layer = torch.nn.Module()
    vision_layer.is_causal = False
    with pytest.raises(ValueError, match="language model only"):
        attn.packed_attention_forward(
            vision_layer, q, k, v, None, cu_seqlens=cu_seqlens_from_lengths(LENGTHS)
        )


def test_the_automatic_backend_under_torch_compile_is_the_eager_one():
    """Traced by torch.compile, the varlen probe used to run on fake tensors, 'succeed' on the CPU
    and send the compiled call to a CUDA-only kernel (NotImplementedError)."""
    from minivl.train.attention import select_backend, varlen_attention

    def attend(q, k, v, cu):
        return varlen_attention(q, k, v, cu, backend=select_backend(q.device, q.dtype))

    torch.manual_seed(0)
    q, k, v = (torch.randn(10, 2, 8) for _ in range(3))
    cu = torch.tensor([0, 4, 10], dtype=torch.int32)
    torch._dynamo.reset()
    compiled = torch.compile(attend, backend="eager")  # dynamo's tracing alone: no C++ build needed
    assert torch.allclose(compiled(q, k, v, cu), attend(q, k, v, cu), atol=1e-6)
