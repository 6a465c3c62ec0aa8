"""Variable-length (packed) attention for the LLM, on any backend.

InternVL 2.5 trains on *packed* rows (spec section 7.3): several conversations are
concatenated into one row of batch size 1, each one attending causally to itself only, with
``position_ids`` restarting at 0 for every sample. The boundaries travel as ``cu_seqlens``,
the cumulative lengths ``[0, n_1, n_1 + n_2, ...]`` that FlashAttention's varlen kernels take.
The official code monkey-patches each LLM to call ``flash_attn_varlen_func``; minivl instead
registers one attention function through transformers' public ``AttentionInterface`` and
picks a backend for the device:

==================  ===========================================  ======================
backend             kernel                                       where
==================  ===========================================  ======================
``flash_attn``      ``flash_attn.flash_attn_varlen_func``        CUDA, fp16 / bf16
``torch_varlen``    ``torch.nn.attention.varlen.varlen_attn``    CUDA, fp16 / bf16
``sdpa_segments``   SDPA over the samples as a padded batch      everywhere (CPU, MPS)
``sdpa``            SDPA + block-diagonal causal mask            everywhere
``flex``            ``flex_attention`` + a ``BlockMask``         on request (CPU: forward only)
==================  ===========================================  ======================

The two SDPA layouts do the same sums at different costs. The block mask scores every pair
of the row's ``T`` tokens (``T**2``) and throws most away; ``sdpa_segments`` cuts the row
into its ``N`` samples, pads them to the longest, ``Lmax``, and scores ``N * Lmax**2`` pairs,
several times fewer for rows of many short samples (it falls back to the block mask for a
row where that is not cheaper). It is what ``auto`` picks where no varlen kernel runs.

All five give the numbers of running each sample alone (``tests/test_attention.py``).

Why restarting ``position_ids`` alone are not enough: transformers 5 infers packing from
the positions only when there is no KV cache, and a model whose ``use_cache`` is on (the
default of every causal LM config) silently builds a plain causal mask over the whole row,
so sample 2 attends to sample 1 (the "leak"). In packed mode minivl therefore takes the
boundaries from ``cu_seqlens`` (or, failing that, from the positions) whatever the cache
flag, switches ``use_cache`` off, and refuses a packed row together with a KV cache.

The vision tower needs none of this: every tile is an independent row of the ViT's batch,
attended to bidirectionally, so tiles of different samples never meet.

Typical use (the model passes ``cu_seqlens`` through ``**kwargs`` to every attention layer)::

    with packed_attention(llm):                       # or enable_packed_attention(llm)
        out = llm(inputs_embeds=x, position_ids=pos, cu_seqlens=cu)   # x: (1, L, C)

Explained in chapter 8 (notebooks/08_packing.ipynb).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import inspect
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F

BACKENDS = ("flash_attn", "torch_varlen", "sdpa_segments", "sdpa", "flex")
"""The variable-length attention backends minivl knows, in the order ``auto`` tries them."""

ATTN_IMPLEMENTATION = "minivl_varlen"
"""The ``attn_implementation`` name of the auto-selecting packed attention."""

# One registered name per forced backend. Transformers inspects implementation names for the
# substrings "flash", "sdpa" and "flex_attention" (and runs its own checks for them), so
# these names avoid all three on purpose.
_BACKEND_IMPLEMENTATIONS = {
    "flash_attn": "minivl_varlen_fa",
    "torch_varlen": "minivl_varlen_torch",
    "sdpa_segments": "minivl_varlen_segments",
    "sdpa": "minivl_varlen_mask",
    "flex": "minivl_varlen_blockmask",
}

_HALF_DTYPES = (torch.float16, torch.bfloat16)


# --------------------------------------------------------------------------------------
# cu_seqlens, positions and masks
# --------------------------------------------------------------------------------------


def cu_seqlens_from_lengths(
    lengths: Sequence[int] | torch.Tensor, device: str | torch.device | None = None
) -> torch.Tensor:
    """Cumulative sequence lengths ``[0, n_1, n_1 + n_2, ...]`` (int32, shape ``(N + 1,)``).

    This is the ``cu_seqlens`` of FlashAttention's varlen kernels and of the official
    ``get_cu_seqlens_and_indexes``. Every length must be a positive integer.

    Explained in chapter 8 (notebooks/08_packing.ipynb).
    """
    lengths = torch.as_tensor(lengths, device=device).reshape(-1)  # any shape -> (N,)
    if lengths.numel() == 0:
        raise ValueError("cu_seqlens_from_lengths: need at least one sample length")
    if lengths.is_floating_point() or (lengths <= 0).any():
        raise ValueError(
            f"cu_seqlens_from_lengths: lengths must be positive integers, got {lengths.tolist()}"
        )
    zero = torch.zeros(1, dtype=torch.int32, device=lengths.device)
    return torch.cat([zero, lengths.cumsum(0).to(torch.int32)])


def cu_seqlens_from_position_ids(position_ids: torch.Tensor) -> torch.Tensor:
    """Sample boundaries of a packed row, read from its restarting ``position_ids``.

    A new sample starts at the first token of each row and wherever a position is not the
    previous one plus 1 (the rule transformers' ``find_packed_sequence_indices`` uses), so
    ``[0, 1, 2, 0, 1, 0, 1, 2, 3]`` gives ``[0, 3, 5, 9]``. A ``(B, L)`` input is read as
    ``B * L`` flattened tokens, each row starting a sample. Returns int32 ``(N + 1,)``.

    Explained in chapter 8 (notebooks/08_packing.ipynb).
    """
    if position_ids.dim() == 1:
        position_ids = position_ids[None]  # (L,) -> (1, L)
    if position_ids.dim() != 2 or position_ids.shape[-1] == 0:
        raise ValueError(
            f"cu_seqlens_from_position_ids: expected (L,) or (B, L) positions, got {tuple(position_ids.shape)}"
        )
    batch, length = position_ids.shape
    starts = torch.ones_like(position_ids, dtype=torch.bool)
    starts[:, 1:] = position_ids[:, 1:] != position_ids[:, :-1] + 1
    starts = starts.reshape(-1)  # (B, L) -> (B * L,)
    start_index = starts.nonzero().reshape(-1).to(torch.int32)  # (N, 1) -> (N,)
    end = torch.tensor([batch * length], dtype=torch.int32, device=position_ids.device)
    return torch.cat([start_index, end])


def position_ids_from_cu_seqlens(cu_seqlens: torch.Tensor) -> torch.Tensor:
    """The restarting positions of a packed row, ``(1, L)`` int64: ``0..n_1-1, 0..n_2-1, ...``.

    Explained in chapter 8 (notebooks/08_packing.ipynb).
    """
    cu_seqlens = _check_cu_seqlens(cu_seqlens)
    total = int(cu_seqlens[-1])
    segment = segment_ids_from_cu_seqlens(cu_seqlens, total)
    start = cu_seqlens[:-1].long()[segment]  # (L,): where each token's sample starts
    return (torch.arange(total, device=cu_seqlens.device) - start)[None]  # (L,) -> (1, L)


def segment_ids_from_cu_seqlens(cu_seqlens: torch.Tensor, total: int | None = None) -> torch.Tensor:
    """Which sample each token belongs to, ``(L,)`` int64: ``[0, 0, 0, 1, 1, 2, ...]``.

    Explained in chapter 8 (notebooks/08_packing.ipynb).
    """
    total = int(cu_seqlens[-1]) if total is None else total
    token = torch.arange(total, device=cu_seqlens.device)
    # a token's sample is the number of sample ends at or before it
    return torch.searchsorted(cu_seqlens[1:].long(), token, right=True)


def block_diagonal_causal_mask(
    cu_seqlens: torch.Tensor, dtype: torch.dtype = torch.bool, device: str | torch.device | None = None
) -> torch.Tensor:
    """The ``(L, L)`` attention mask of a packed row: causal inside each sample, nothing across.

    ``dtype=torch.bool`` gives True where a query (row) may attend to a key (column), the
    convention of ``scaled_dot_product_attention``. A floating dtype gives the additive form,
    0 where attending and the dtype's most negative value elsewhere (what eager attention adds
    to its scores).

    Explained in chapter 8 (notebooks/08_packing.ipynb).
    """
    cu_seqlens = _check_cu_seqlens(cu_seqlens)
    if device is not None:
        cu_seqlens = cu_seqlens.to(device)
    segment = segment_ids_from_cu_seqlens(cu_seqlens)
    total = segment.numel()
    same_sample = segment[:, None] == segment[None, :]  # (L, 1) == (1, L) -> (L, L)
    causal = torch.ones(total, total, dtype=torch.bool, device=segment.device).tril()
    mask = same_sample & causal
    if dtype == torch.bool:
        return mask
    if not dtype.is_floating_point:
        raise ValueError(f"block_diagonal_causal_mask: dtype must be torch.bool or floating, got {dtype}")
    additive = torch.zeros(total, total, dtype=dtype, device=segment.device)
    return additive.masked_fill(~mask, torch.finfo(dtype).min)


def _check_cu_seqlens(cu_seqlens: torch.Tensor, total: int | None = None) -> torch.Tensor:
    """Fail loudly on a malformed ``cu_seqlens`` (not 1-D, not from 0, not increasing, wrong end)."""
    if not isinstance(cu_seqlens, torch.Tensor):
        cu_seqlens = torch.as_tensor(cu_seqlens)
    if cu_seqlens.dim() == 2 and cu_seqlens.shape[0] == 1:
        cu_seqlens = cu_seqlens[0]  # the official collator stacks it as (1, N + 1)
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2 or cu_seqlens.is_floating_point():
        raise ValueError(
            f"cu_seqlens must be a 1-D integer tensor [0, n_1, ...], got shape {tuple(cu_seqlens.shape)}"
        )
    values = cu_seqlens.tolist()
    if values[0] != 0 or any(b <= a for a, b in zip(values, values[1:])):
        raise ValueError(f"cu_seqlens must start at 0 and increase strictly, got {values}")
    if total is not None and values[-1] != total:
        raise ValueError(f"cu_seqlens ends at {values[-1]} but the packed row has {total} tokens")
    return cu_seqlens


# --------------------------------------------------------------------------------------
# backends
# --------------------------------------------------------------------------------------


@torch.compiler.disable  # under torch.compile the probe would run on fake tensors and always "work"
@functools.cache
def _probe_torch_varlen(device_type: str, dtype: torch.dtype) -> str | None:
    """Run ``varlen_attn`` once on 4 tokens; None if it works, else the reason it does not.

    Always run eagerly, on real tensors: traced by ``torch.compile`` the call would succeed on
    any device, and a compiled model would pick a kernel its device does not have."""
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
    except ImportError:
        return f"torch {torch.__version__} has no torch.nn.attention.varlen.varlen_attn"
    try:
        q = torch.randn(4, 1, 16, device=device_type, dtype=dtype)  # (T, H, D)
        cu = torch.tensor([0, 2, 4], dtype=torch.int32, device=device_type)
        _torch_varlen(q, q, q, cu, 2, scale=None)
    except Exception as error:  # noqa: BLE001 - any failure means "not on this device"
        first_line = (str(error).splitlines() or [type(error).__name__])[0]
        return (
            f"torch.nn.attention.varlen.varlen_attn does not run on {device_type}/{dtype}: {first_line[:160]}"
        )
    return None


def backend_unavailable_reason(backend: str, device: str | torch.device, dtype: torch.dtype) -> str | None:
    """Why ``backend`` cannot run on ``device`` with ``dtype``, or None when it can.

    Explained in chapter 8 (notebooks/08_packing.ipynb).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    device_type = torch.device(device).type
    if backend in ("sdpa", "sdpa_segments"):
        return None
    if backend == "flex":
        if importlib.util.find_spec("torch.nn.attention.flex_attention") is None:
            return f"torch {torch.__version__} has no flex_attention"
        return None
    if backend == "torch_varlen":  # ask torch itself: a later release may bring other devices
        return _probe_torch_varlen(device_type, dtype)
    if device_type != "cuda" or dtype not in _HALF_DTYPES:
        return f"flash_attn needs a CUDA device and float16/bfloat16 (got {device_type}/{dtype})"
    if importlib.util.find_spec("flash_attn") is None:
        return "flash-attn is not installed (pip install flash-attn --no-build-isolation)"
    return None


def available_backends(device: str | torch.device, dtype: torch.dtype) -> list[str]:
    """The backends that can run on ``device`` with ``dtype``, in :data:`BACKENDS` order.

    Explained in chapter 8 (notebooks/08_packing.ipynb).
    """
    return [b for b in BACKENDS if backend_unavailable_reason(b, device, dtype) is None]


def select_backend(device: str | torch.device, dtype: torch.dtype, override: str | None = None) -> str:
    """Pick the packed-attention backend for ``device`` and ``dtype``.

    ``override`` (one of :data:`BACKENDS`) forces a backend and raises if it cannot run here.
    Otherwise (``None`` or ``"auto"``): ``flash_attn`` if installed on CUDA with fp16/bf16, else
    torch's ``varlen_attn`` if it runs there, else ``sdpa_segments`` (SDPA over the samples as
    a padded batch, or the block mask where that is cheaper). ``flex`` is never
    picked automatically (on CPU it has no backward and materialises the full score matrix).

    Explained in chapter 8 (notebooks/08_packing.ipynb).
    """
    if override not in (None, "auto"):
        reason = backend_unavailable_reason(override, device, dtype)
        if reason is not None:
            raise RuntimeError(f"attention backend {override!r} is unavailable: {reason}")
        return override
    for backend in ("flash_attn", "torch_varlen"):
        if backend_unavailable_reason(backend, device, dtype) is None:
            return backend
    return "sdpa_segments"


def _flash_attn(q, k, v, cu_seqlens, max_seqlen, scale, dropout_p=0.0):
    """FlashAttention 2's varlen kernel; q (T, Hq, D), k/v (T, Hkv, D) -> (T, Hq, D)."""
    try:
        from flash_attn import flash_attn_varlen_func
    except ImportError as error:
        raise ImportError(
            "the flash_attn backend needs flash-attn: pip install flash-attn --no-build-isolation"
        ) from error
    cu = cu_seqlens.to(device=q.device, dtype=torch.int32)
    # the kernel handles grouped-query attention itself (fewer k/v heads than q heads)
    return flash_attn_varlen_func(
        q,
        k,
        v,
        cu_seqlens_q=cu,
        cu_seqlens_k=cu,
        max_seqlen_q=max_seqlen,
        max_seqlen_k=max_seqlen,
        dropout_p=dropout_p,
        softmax_scale=scale,
        causal=True,
    )


@functools.cache
def _torch_varlen_parameters() -> frozenset[str]:
    from torch.nn.attention.varlen import varlen_attn

    return frozenset(inspect.signature(varlen_attn).parameters)


def _torch_varlen(q, k, v, cu_seqlens, max_seqlen, scale):
    """torch's own varlen kernel; q (T, Hq, D), k/v (T, Hkv, D) -> (T, Hq, D)."""
    from torch.nn.attention.varlen import varlen_attn

    params = _torch_varlen_parameters()
    cu = cu_seqlens.to(device=q.device, dtype=torch.int32)
    kwargs: dict[str, Any] = {"scale": scale}
    # torch 2.13 spells causality as a window (-1 = unbounded left, 0 = nothing right);
    # the first release of varlen_attn had an is_causal flag instead
    if "window_size" in params:
        kwargs["window_size"] = (-1, 0)
    else:
        kwargs["is_causal"] = True
    if q.shape[1] != k.shape[1]:
        if "enable_gqa" in params:
            kwargs["enable_gqa"] = True
        else:
            groups = q.shape[1] // k.shape[1]
            k = k.repeat_interleave(groups, dim=1)  # (T, Hkv, D) -> (T, Hq, D)
            v = v.repeat_interleave(groups, dim=1)
    return varlen_attn(q, k, v, cu, cu, max_seqlen, max_seqlen, **kwargs)


def _sdpa_block_mask(q, k, v, cu_seqlens, scale, dropout_p=0.0):
    """SDPA with the block-diagonal causal mask; q (T, Hq, D), k/v (T, Hkv, D) -> (T, Hq, D)."""
    mask = block_diagonal_causal_mask(cu_seqlens, device=q.device)  # (T, T)
    q, k, v = (t.transpose(0, 1)[None] for t in (q, k, v))  # (T, H, D) -> (1, H, T, D)
    out = F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, dropout_p=dropout_p, scale=scale, enable_gqa=q.shape[1] != k.shape[1]
    )
    return out[0].transpose(0, 1)  # (1, Hq, T, D) -> (T, Hq, D)


def segment_layout(cu_seqlens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The packed row as a padded batch: ``(index, valid)``, both ``(N, Lmax)``.

    ``index[i, j]`` is the row position of token ``j`` of sample ``i`` (0 where sample ``i``
    is shorter than ``j + 1``) and ``valid`` marks the real tokens. ``x[index]`` turns a
    ``(T, ...)`` packed tensor into ``(N, Lmax, ...)``; ``y[valid]`` turns it back, in order.

    Explained in chapter 8 (notebooks/08_packing.ipynb).
    """
    cu = cu_seqlens.long()
    lengths = cu[1:] - cu[:-1]  # (N,)
    offsets = torch.arange(int(lengths.max()), device=cu.device)  # (Lmax,)
    valid = offsets[None, :] < lengths[:, None]  # (1, Lmax) < (N, 1) -> (N, Lmax)
    index = (cu[:-1, None] + offsets[None, :]).masked_fill(~valid, 0)  # (N, Lmax)
    return index, valid


def _sdpa_segments(q, k, v, cu_seqlens, scale, dropout_p=0.0):
    """SDPA over the samples as a padded batch; q (T, Hq, D), k/v (T, Hkv, D) -> (T, Hq, D).

    Each sample's tokens start a row of the batch and padding fills its end, so a plain causal
    mask (``is_causal``) is already the block mask for every real token: query ``j`` of a
    sample sees keys ``0..j``, all real. Padded query rows see their sample and padding (never
    an empty softmax) and are dropped at the end. Without an explicit mask SDPA skips the
    blocks above the diagonal; the outputs and gradients are bit-identical to the masked call
    (tests/test_attention.py). On 2 CPU cores, ``benchmarks/attention.py`` (1024 tokens in 3
    samples, forward + backward of a tiny Qwen2) went from 1.00x to 0.85x of the padded
    baseline's time, and the quickstart's stage 2 from 854 to 750 s (``results.json``).
    """
    total = q.shape[0]
    n = cu_seqlens.numel() - 1
    longest = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
    if n == 1 or n * longest * longest >= total * total:  # one sample, or no saving: the block mask
        return _sdpa_block_mask(q, k, v, cu_seqlens, scale, dropout_p)
    index, valid = segment_layout(cu_seqlens.to(q.device))
    flat = index.reshape(-1)  # (N * Lmax,)
    # index_select rather than q[flat]: the same gather, with a cheaper backward (index_add)
    q, k, v = (t.index_select(0, flat).unflatten(0, index.shape).transpose(1, 2) for t in (q, k, v))  # (N, H, Lmax, D)
    out = F.scaled_dot_product_attention(
        q, k, v, dropout_p=dropout_p, is_causal=True, scale=scale, enable_gqa=q.shape[1] != k.shape[1]
    )
    out = out.transpose(1, 2).flatten(0, 1)  # (N, Hq, Lmax, D) -> (N * Lmax, Hq, D)
    return out.index_select(0, valid.reshape(-1).nonzero().squeeze(1))  # the real tokens, in order: (T, Hq, D)


@functools.lru_cache(maxsize=8)
def _flex_block_mask(boundaries: tuple[int, ...], device: str):
    """The flex ``BlockMask`` of a packed row, cached across the layers of one forward."""
    from torch.nn.attention.flex_attention import create_block_mask

    cu = torch.tensor(boundaries, device=device)
    segment = segment_ids_from_cu_seqlens(cu)

    def same_sample_causal(b, h, q_idx, kv_idx):
        return (segment[q_idx] == segment[kv_idx]) & (kv_idx <= q_idx)

    total = boundaries[-1]
    return create_block_mask(same_sample_causal, None, None, total, total, device=device)


def _flex(q, k, v, cu_seqlens, scale):
    """flex_attention with a document-causal BlockMask; q (T, Hq, D), k/v (T, Hkv, D) -> (T, Hq, D)."""
    from torch.nn.attention.flex_attention import flex_attention

    if q.device.type == "cpu" and torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        raise NotImplementedError(
            "the flex backend has no backward pass on CPU in torch "
            f"{torch.__version__}; use backend='sdpa' for training on CPU"
        )
    block_mask = _flex_block_mask(tuple(cu_seqlens.tolist()), str(q.device))
    q, k, v = (t.transpose(0, 1)[None] for t in (q, k, v))  # (T, H, D) -> (1, H, T, D)
    with warnings.catch_warnings():
        # outside torch.compile flex runs unfused (it materialises the scores): fine for checking numbers
        warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
        out = flex_attention(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=q.shape[1] != k.shape[1])
    return out[0].transpose(0, 1)  # (1, Hq, T, D) -> (T, Hq, D)


def varlen_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    cu_seqlens: torch.Tensor,
    *,
    max_seqlen: int | None = None,
    scale: float | None = None,
    dropout_p: float = 0.0,
    backend: str = "sdpa",
) -> torch.Tensor:
    """Causal attention of packed samples, each attending only to itself.

    ``query`` is ``(T, Hq, D)``, ``key`` / ``value`` are ``(T, Hkv, D)`` (FlashAttention's
    varlen layout; ``Hq`` a multiple of ``Hkv`` for grouped-query attention), ``cu_seqlens``
    the ``(N + 1,)`` sample boundaries with ``cu_seqlens[-1] == T``. Returns ``(T, Hq, D)``.
    The backend is used as named (see :func:`select_backend` to choose one).

    Explained in chapter 8 (notebooks/08_packing.ipynb).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    if query.dim() != 3 or key.dim() != 3 or value.dim() != 3:
        raise ValueError(
            f"varlen_attention expects (T, H, D) tensors, got {tuple(query.shape)}, {tuple(key.shape)}, {tuple(value.shape)}"
        )
    if query.shape[1] % key.shape[1] != 0:
        raise ValueError(f"{query.shape[1]} query heads are not a multiple of {key.shape[1]} key/value heads")
    cu_seqlens = _check_cu_seqlens(cu_seqlens, total=query.shape[0])
    if key.shape[0] != query.shape[0]:
        raise ValueError(
            f"packed attention needs as many keys as queries ({key.shape[0]} vs {query.shape[0]}): a KV cache "
            "cannot be combined with cu_seqlens"
        )
    if dropout_p > 0 and backend in ("torch_varlen", "flex"):
        raise NotImplementedError(
            f"the {backend} backend has no attention dropout; use 'sdpa' or 'flash_attn'"
        )
    if backend == "sdpa_segments":
        return _sdpa_segments(query, key, value, cu_seqlens, scale, dropout_p)
    if backend == "sdpa":
        return _sdpa_block_mask(query, key, value, cu_seqlens, scale, dropout_p)
    if backend == "flex":
        return _flex(query, key, value, cu_seqlens, scale)
    if max_seqlen is None:
        max_seqlen = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
    if backend == "flash_attn":
        return _flash_attn(query, key, value, cu_seqlens, max_seqlen, scale, dropout_p)
    return _torch_varlen(query, key, value, cu_seqlens, max_seqlen, scale)


# --------------------------------------------------------------------------------------
# transformers integration
# --------------------------------------------------------------------------------------


def _causal_attention(query, key, value, padding_mask, scale, dropout_p):
    """Plain causal attention for unpacked batches and cached decoding.

    query ``(B, Hq, L, K)``, key/value ``(B, Hkv, S, K)`` with ``S >= L`` (the last ``L`` keys
    are the new tokens), optional ``(B, S)`` padding mask (True = real token).
    Returns ``(B, L, Hq, K)``.
    """
    length, keys = query.shape[2], key.shape[2]
    mask = None
    if length > 1:  # query i sits at key position i + (S - L): bottom-right aligned causality
        mask = torch.ones(length, keys, dtype=torch.bool, device=query.device).tril(keys - length)
        mask = mask[None, None]  # (L, S) -> (1, 1, L, S)
    if padding_mask is not None:
        keep = padding_mask[:, None, None, :]  # (B, S) -> (B, 1, 1, S)
        mask = keep if mask is None else mask & keep
    out = F.scaled_dot_product_attention(
        query,
        key,
        value,
        attn_mask=mask,
        dropout_p=dropout_p,
        scale=scale,
        enable_gqa=query.shape[1] != key.shape[1],
    )
    return out.transpose(1, 2).contiguous()  # (B, Hq, L, K) -> (B, L, Hq, K)


def packed_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    *,
    backend: str | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """The attention function minivl registers with transformers' ``AttentionInterface``.

    transformers calls it from every attention layer with ``query`` ``(B, Hq, L, K)`` and
    ``key`` / ``value`` ``(B, Hkv, S, K)``, plus whatever extra keyword arguments were given
    to the model's forward. Samples are isolated by, in order of precedence:

    1. ``cu_seqlens`` (or transformers' name ``cu_seq_lens_q``) over the ``B * L`` flattened
       tokens, optionally with a precomputed ``max_seqlen`` (or ``max_length_q``): the packed path;
    2. restarting ``position_ids`` of a single row (batch 1, no cache), turned into
       ``cu_seqlens`` by :func:`cu_seqlens_from_position_ids`: the packed path again, so
       positions alone are safe here whatever ``use_cache`` says;
    3. otherwise ordinary causal attention with the 2-D padding mask, if any (unpacked
       batches, and decoding with a KV cache).

    ``backend`` None picks one per call with :func:`select_backend`. Returns
    ``(attn_output (B, L, Hq, K), None)`` as transformers expects.

    Explained in chapter 8 (notebooks/08_packing.ipynb).
    """
    if not getattr(module, "is_causal", True):
        raise ValueError(
            f"{type(module).__name__} is a bidirectional layer (a vision tower?): enable packed attention on "
            "the language model only, e.g. enable_packed_attention(vlm.language_model)"
        )
    if kwargs.get("sliding_window") is not None:
        raise NotImplementedError("minivl packed attention does not implement sliding-window layers")
    if kwargs.get("softcap") is not None:
        raise NotImplementedError("minivl packed attention does not implement logit soft-capping")
    batch, heads, length, head_dim = query.shape
    keys = key.shape[2]
    cu_seqlens = kwargs.get("cu_seqlens")
    if cu_seqlens is None:
        cu_seqlens = kwargs.get("cu_seq_lens_q")
    position_ids = kwargs.get("position_ids")
    padding_mask = None
    if attention_mask is not None:
        if attention_mask.dim() == 4:  # a ready-made 4-D mask: honour it as SDPA would
            if cu_seqlens is not None:
                raise ValueError("pass either cu_seqlens or a 4-D attention_mask to a packed model, not both")
            mask = (
                attention_mask.bool()
                if attention_mask.dtype == torch.bool
                else attention_mask.to(query.dtype)
            )
            out = F.scaled_dot_product_attention(
                query,
                key,
                value,
                attn_mask=mask,
                dropout_p=dropout,
                scale=scaling,
                enable_gqa=heads != key.shape[1],
            )
            return out.transpose(1, 2).contiguous(), None  # (B, Hq, L, K) -> (B, L, Hq, K)
        padding_mask = attention_mask.bool()
        if bool(padding_mask.all()):
            padding_mask = None
        elif cu_seqlens is not None:
            raise ValueError(
                "a packed row (cu_seqlens) must not carry padding in attention_mask; give padding its own "
                "segment in cu_seqlens instead (as InternVL's collator does)"
            )
    if (
        cu_seqlens is None
        and padding_mask is None
        and batch == 1
        and keys == length
        and position_ids is not None
        and position_ids.dim() <= 2
        and position_ids.numel() == length
    ):
        cu_seqlens = cu_seqlens_from_position_ids(position_ids.reshape(1, length))  # (L,) or (1, L) -> (1, L)
        if cu_seqlens.numel() == 2:  # a single sample: plain causal attention is the same thing
            cu_seqlens = None
    if cu_seqlens is None:
        return _causal_attention(query, key, value, padding_mask, scaling, dropout), None
    if kwargs.get("use_cache"):
        raise ValueError(
            "packed rows (cu_seqlens or restarting position_ids) cannot fill a KV cache: call the model with use_cache=False "
            "(enable_packed_attention sets config.use_cache=False)"
        )
    if keys != length:
        raise ValueError(f"packed attention got {length} queries but {keys} keys: a KV cache is in use")
    backend = select_backend(query.device, query.dtype) if backend is None else backend
    q, k, v = (
        t.transpose(1, 2).reshape(-1, t.shape[1], head_dim) for t in (query, key, value)
    )  # (B, H, L, K) -> (B*L, H, K)
    out = varlen_attention(
        q,
        k,
        v,
        cu_seqlens,
        max_seqlen=kwargs.get("max_seqlen", kwargs.get("max_length_q")),
        scale=scaling,
        dropout_p=dropout,
        backend=backend,
    )
    return out.reshape(batch, length, heads, head_dim), None  # (B*L, Hq, K) -> (B, L, Hq, K)


def _padding_mask_only(
    *args: Any, attention_mask: torch.Tensor | None = None, **kwargs: Any
) -> torch.Tensor | None:
    """Mask "creation" for minivl's implementations: hand the 2-D padding mask through untouched.

    Registered in transformers' ``AttentionMaskInterface`` so that the model neither builds an
    ``(L, L)`` causal mask that packed attention would ignore, nor drops the padding mask of an
    unpacked batch (which is what happens to an implementation with no mask function).
    """
    return attention_mask


def attn_implementation_name(backend: str | None = None) -> str:
    """The ``attn_implementation`` string for ``backend`` (None or ``"auto"``: chosen per call).

    Explained in chapter 8 (notebooks/08_packing.ipynb).
    """
    if backend in (None, "auto"):
        return ATTN_IMPLEMENTATION
    if backend not in BACKENDS:
        raise ValueError(
            f"unknown attention backend {backend!r}; expected one of {', '.join(BACKENDS)} or 'auto'"
        )
    return _BACKEND_IMPLEMENTATIONS[backend]


def register_packed_attention() -> None:
    """Register minivl's packed attention under :data:`ATTN_IMPLEMENTATION` and one name per backend.

    After this, ``AutoModelForCausalLM.from_config(config, attn_implementation="minivl_varlen")``
    works too. Idempotent. Explained in chapter 8 (notebooks/08_packing.ipynb).
    """
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    names = {ATTN_IMPLEMENTATION: None, **{name: b for b, name in _BACKEND_IMPLEMENTATIONS.items()}}
    for name, backend in names.items():
        function = (
            packed_attention_forward
            if backend is None
            else functools.partial(packed_attention_forward, backend=backend)
        )
        AttentionInterface.register(name, function)
        AttentionMaskInterface.register(name, _padding_mask_only)


def enable_packed_attention(model: torch.nn.Module, backend: str | None = "auto") -> dict[str, Any]:
    """Switch a transformers causal LM to packed attention; returns what to restore.

    Sets the model's attention implementation to minivl's (``backend`` forces one of
    :data:`BACKENDS`, checked against the model's device and dtype) and ``config.use_cache``
    to False. Then ``model(..., position_ids=..., cu_seqlens=...)`` isolates the samples of a
    packed row. Works for any model that dispatches attention through transformers'
    ``AttentionInterface`` (Qwen2, Llama and the InternLM2 weights converted to Llama, Qwen3,
    Mistral, ...); raises ``TypeError`` for one that does not. For a vision-language model pass
    its language model only: the vision tower keeps its own bidirectional attention. Pass the returned dict to
    :func:`disable_packed_attention` to undo.

    Explained in chapter 8 (notebooks/08_packing.ipynb).
    """
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "_attn_implementation"):
        raise TypeError(
            f"enable_packed_attention needs a transformers PreTrainedModel, got {type(model).__name__}"
        )
    if backend not in (None, "auto"):
        parameter = next(model.parameters(), None)
        if parameter is not None:
            select_backend(parameter.device, parameter.dtype, override=backend)  # raises if unavailable
    register_packed_attention()
    name = attn_implementation_name(backend)
    previous = {
        "attn_implementation": config._attn_implementation,
        "use_cache": getattr(config, "use_cache", None),
    }
    _set_attn_implementation(model, name)
    config.use_cache = False
    return previous


def disable_packed_attention(model: torch.nn.Module, previous: dict[str, Any]) -> None:
    """Undo :func:`enable_packed_attention` with the dict it returned.

    Explained in chapter 8 (notebooks/08_packing.ipynb).
    """
    _set_attn_implementation(model, previous["attn_implementation"])
    if previous.get("use_cache") is not None:
        model.config.use_cache = previous["use_cache"]


@contextlib.contextmanager
def packed_attention(model: torch.nn.Module, backend: str | None = "auto") -> Iterator[torch.nn.Module]:
    """``with packed_attention(llm): llm(..., cu_seqlens=cu)``: packed mode for one block.

    Explained in chapter 8 (notebooks/08_packing.ipynb).
    """
    previous = enable_packed_attention(model, backend)
    try:
        yield model
    finally:
        disable_packed_attention(model, previous)


def _set_attn_implementation(model: torch.nn.Module, name: str) -> None:
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(name)
    else:
        model.config._attn_implementation = name
    if model.config._attn_implementation != name:
        raise TypeError(
            f"{type(model).__name__} did not switch to attn_implementation={name!r}: it does not dispatch its "
            "attention through transformers' AttentionInterface (remote-code models such as the original "
            "InternLM2 must be converted to a transformers-native layout first)"
        )
