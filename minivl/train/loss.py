"""Loss reweighting: token, sample and square averaging (InternVL 2.5 report, section 4.2).

A packed row holds several samples whose answers have very different lengths. How much each
supervised token counts is set by a per-sample weight ``w_i = len2weight(n_i)``, where ``n_i``
is the number of supervised tokens of sample i:

* ``token``:  ``w = 1``         every token counts the same; long answers dominate;
* ``sample``: ``w = 1/n``       every sample counts the same; long answers are diluted;
* ``square``: ``w = 1/sqrt(n)`` the compromise InternVL 2.5 trains with.

The loss of a row is the weighted mean ``sum_t w_t CE_t / sum_t w_t`` with the usual causal
shift: the logit at position t predicts ``labels[t+1]`` and carries ``loss_weight[t+1]``.

Exactness. The weighted mean is not a mean of micro-batch means: averaging per-micro-batch
losses gives the wrong objective when micro-batches hold different total weight. minivl
divides every micro-batch of an optimizer step by one *global* denominator instead:

* gradient accumulation: ``W = sum over the step's micro-batches of sum(w)``
  (:func:`global_loss_denominator`); each micro-batch loss is back-propagated as it is, *not*
  divided by the number of accumulation steps; the summed gradients then equal the gradient of
  the whole step's weighted mean;
* data parallel: InternVL all-reduces the denominator with ``AVG`` over the R ranks
  (``loss_reduction_all_gather``). Each rank's loss is then ``sum_r(w CE) / mean_r(W)``;
  DDP averages gradients over ranks (divides their sum by R), so the result is
  ``sum_all(w CE) / (R * mean_r(W)) = sum_all(w CE) / sum_all(W)``: the exact global weighted
  mean. :func:`global_loss_denominator` does this with ``SUM`` then ``/ R`` (``AVG`` is not
  available on every backend, e.g. gloo).

Explained in chapter 9 (notebooks/09_loss_reweighting.ipynb).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
LOSS_REDUCTIONS = ("token", "sample", "square")


def len2weight(n: int, mode: str) -> float:
    """Weight of every supervised token of a sample with ``n`` supervised tokens.

    ``token`` -> 1, ``sample`` -> 1/n, ``square`` -> 1/sqrt(n); 0 when ``n == 0``
    (InternVL's ``len2weight``).

    Explained in chapter 9 (notebooks/09_loss_reweighting.ipynb).
    """
    if mode not in LOSS_REDUCTIONS:
        raise ValueError(f"unknown loss reduction {mode!r}; expected one of {', '.join(LOSS_REDUCTIONS)}")
    n = int(n)
    if n < 0:
        raise ValueError(f"len2weight: negative token count {n}")
    if n == 0:
        return 0.0
    if mode == "token":
        return 1.0
    if mode == "sample":
        return 1.0 / n
    return 1.0 / math.sqrt(n)


def sample_gradient_share(lengths: Sequence[int], mode: str) -> list[float]:
    """Share of the total loss weight that each sample gets: ``n_i w(n_i) / sum_j n_j w(n_j)``.

    With equal per-token losses this is also each sample's share of the gradient.
    ``token`` gives shares proportional to n, ``sample`` equal shares, ``square`` shares
    proportional to sqrt(n).

    Explained in chapter 9 (notebooks/09_loss_reweighting.ipynb).
    """
    mass = [n * len2weight(n, mode) for n in lengths]
    total = sum(mass)
    if total == 0:
        raise ValueError("sample_gradient_share: no sample has a supervised token")
    return [m / total for m in mass]


def data_index_from_cu_seqlens(cu_seqlens: torch.Tensor, length: int | None = None) -> torch.Tensor:
    """Per-token segment index from ``cu_seqlens = [0, n1, n1+n2, ...]``.

    Tokens at or after ``cu_seqlens[-1]`` (up to ``length``) get index -1 (padding).

    Explained in chapter 8 (notebooks/08_packing.ipynb).
    """
    cu = cu_seqlens.reshape(-1).long()
    if cu.numel() < 1 or int(cu[0]) != 0:
        raise ValueError(f"cu_seqlens must start at 0, got {cu.tolist()}")
    sizes = cu[1:] - cu[:-1]
    if (sizes < 0).any():
        raise ValueError(f"cu_seqlens must be non-decreasing, got {cu.tolist()}")
    index = torch.repeat_interleave(torch.arange(sizes.numel()), sizes)
    length = int(cu[-1]) if length is None else int(length)
    if length < index.numel():
        raise ValueError(f"length {length} is shorter than cu_seqlens[-1] = {int(cu[-1])}")
    pad = torch.full((length - index.numel(),), -1, dtype=torch.long)
    return torch.cat([index, pad])


def token_loss_weights(
    labels: torch.Tensor,
    mode: str = "square",
    data_index: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """Per-token loss weight (float32, the shape of ``labels``).

    The segments (samples) come from ``data_index`` (same shape as ``labels``, -1 for padding),
    or from ``cu_seqlens`` for a packed row, or else every row of ``labels`` is one sample.
    Sample i with ``n_i`` supervised labels gets ``len2weight(n_i, mode)`` on each token, and
    the weight is 0 wherever ``labels == ignore_index`` (as InternVL's packed collator does).

    Explained in chapter 9 (notebooks/09_loss_reweighting.ipynb).
    """
    if data_index is not None and cu_seqlens is not None:
        raise ValueError("token_loss_weights: give data_index or cu_seqlens, not both")
    if cu_seqlens is not None:
        if labels.dim() == 2 and labels.shape[0] != 1:
            raise ValueError(f"cu_seqlens describes one packed row; labels has shape {tuple(labels.shape)}")
        data_index = data_index_from_cu_seqlens(cu_seqlens, labels.shape[-1]).reshape(labels.shape)
    if data_index is None:
        # every row is its own sample
        rows = labels.reshape(-1, labels.shape[-1])  # (B, L) or (L,) -> (B, L)
        data_index = torch.arange(rows.shape[0]).unsqueeze(1).expand_as(rows).reshape(labels.shape)
    if data_index.shape != labels.shape:
        raise ValueError(f"data_index shape {tuple(data_index.shape)} != labels shape {tuple(labels.shape)}")

    flat_labels = labels.reshape(-1)
    flat_index = data_index.reshape(-1).long()
    supervised = (flat_labels != ignore_index) & (flat_index >= 0)
    weights = torch.zeros(flat_labels.shape, dtype=torch.float32)
    if supervised.any():
        seg = flat_index[supervised]
        counts = torch.bincount(seg)  # n_i per segment
        per_segment = torch.tensor([len2weight(int(n), mode) for n in counts.tolist()], dtype=torch.float32)
        weights[supervised] = per_segment[seg]
    return weights.reshape(labels.shape).to(labels.device)


def shifted_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """``CE_t = cross_entropy(logits[t], labels[t+1])`` per position, 0 where the label is ignored.

    ``logits`` (B, L, V), ``labels`` (B, L) -> (B, L-1), computed in float32.

    Explained in chapter 9 (notebooks/09_loss_reweighting.ipynb).
    """
    if logits.dim() != 3 or labels.dim() != 2 or logits.shape[:2] != labels.shape:
        raise ValueError(f"expected logits (B, L, V) and labels (B, L); got {tuple(logits.shape)} and {tuple(labels.shape)}")
    shift_logits = logits[:, :-1, :].float()  # (B, L, V) -> (B, L-1, V)
    shift_labels = labels[:, 1:]  # (B, L) -> (B, L-1)
    ce = F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.shape[-1]),  # (B, L-1, V) -> (B*(L-1), V)
        shift_labels.reshape(-1),  # (B, L-1) -> (B*(L-1),)
        ignore_index=ignore_index,
        reduction="none",
    )
    return ce.reshape(shift_labels.shape)  # (B*(L-1),) -> (B, L-1)


def shifted_weight_sum(loss_weight: torch.Tensor) -> torch.Tensor:
    """``sum_t loss_weight[t+1]``: the local denominator of one micro-batch (float32 scalar).

    Explained in chapter 9 (notebooks/09_loss_reweighting.ipynb).
    """
    w = loss_weight.reshape(-1, loss_weight.shape[-1])  # (L,) or (B, L) -> (B, L)
    return w[:, 1:].float().sum()


def weighted_causal_lm_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    loss_weight: torch.Tensor,
    denominator: torch.Tensor | float | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """``sum_t w_{t+1} CE(logits_t, labels_{t+1}) / W`` (InternVL's packed-mode loss).

    ``logits`` (B, L, V), ``labels`` and ``loss_weight`` (B, L). ``W`` is ``denominator`` when
    given (for gradient accumulation and data parallel, see :func:`global_loss_denominator`),
    else the local ``sum_t w_{t+1}``. A zero denominator (nothing supervised) gives a loss of 0
    that still back-propagates.

    Explained in chapter 9 (notebooks/09_loss_reweighting.ipynb).
    """
    if loss_weight.shape != labels.shape:
        raise ValueError(f"loss_weight shape {tuple(loss_weight.shape)} != labels shape {tuple(labels.shape)}")
    ce = shifted_cross_entropy(logits, labels, ignore_index)  # (B, L-1)
    w = loss_weight[:, 1:].to(ce.device, torch.float32)  # (B, L) -> (B, L-1), aligned with labels[t+1]
    return divide_by_weight((w * ce).sum(), w, denominator)


def divide_by_weight(numerator: torch.Tensor, shifted_weight: torch.Tensor,
                     denominator: torch.Tensor | float | None = None) -> torch.Tensor:
    """``numerator / W``: ``W`` is ``denominator`` when given, else ``shifted_weight.sum()``
    (the weights aligned with the supervised labels). A zero ``W`` (nothing supervised) gives 0,
    still differentiable.

    Explained in chapter 9 (notebooks/09_loss_reweighting.ipynb).
    """
    if denominator is None:
        denominator = shifted_weight.sum()
    denominator = torch.as_tensor(denominator, dtype=torch.float32, device=numerator.device)
    # W == 0 only when every weight is 0, and then the numerator is 0 too: the clamp keeps it 0.
    return numerator / denominator.clamp_min(torch.finfo(torch.float32).tiny)


def global_loss_denominator(loss_weights: Iterable[torch.Tensor], group=None) -> torch.Tensor:
    """Denominator that makes micro-batch and data-parallel losses add up to the exact global mean.

    Sums :func:`shifted_weight_sum` over the micro-batches of one optimizer step on this rank,
    then, when ``torch.distributed`` is initialised, averages it over ranks (all-reduce SUM,
    divided by the world size: InternVL's ``AVG``). Back-propagate each micro-batch's
    ``weighted_causal_lm_loss(..., denominator=W)`` without dividing by the number of
    micro-batches; DDP's gradient averaging then yields the global weighted mean.

    Explained in chapter 9 (notebooks/09_loss_reweighting.ipynb).
    """
    total = torch.zeros((), dtype=torch.float32)
    for w in loss_weights:
        total = total + shifted_weight_sum(w.detach().cpu())
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        world = torch.distributed.get_world_size(group)
        backend = torch.distributed.get_backend(group)
        if backend == "nccl":
            total = total.cuda()
        torch.distributed.all_reduce(total, op=torch.distributed.ReduceOp.SUM, group=group)
        total = total.cpu() / world
    return total
