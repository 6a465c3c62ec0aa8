"""Measuring what the planner estimates: bytes kept for backward, training-state bytes, FLOPs.

:mod:`minivl.train.planner` predicts memory and FLOPs from the configs alone. This module
measures the same quantities on a real (tiny) model, so the two can be put side by side:

* :func:`saved_bytes`: the distinct storages autograd saves for the backward pass while a
  function runs (``torch.autograd.graph.saved_tensors_hooks``);
* :class:`LiveTensors`: every tensor created while it is active; after a forward pass, the
  storages still alive are the activations kept for backward by anyone (autograd, or a
  gradient checkpoint's stored inputs) plus the outputs;
* :func:`training_state_bytes`: weights, gradients, fp32 master copies and AdamW moments of a
  model and its optimizer after a step, the four lines of :func:`~minivl.train.planner.static_memory`;
* :func:`count_flops`: the FLOPs ``FlopCounterMode`` counts for a function (attention forced
  to the math backend so its matrix products are counted too);
* :func:`fastest_times`: wall time of several functions measured in turns, for the
  same-process ratios of ``benchmarks/``; :func:`add_device_arguments` and
  :func:`apply_device_arguments` give those benchmarks their shared command-line options.

Explained in chapter 13 (notebooks/13_scaling_up.ipynb).
"""

from __future__ import annotations

import argparse
import gc
import time
import weakref
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


def storage_key(t: torch.Tensor) -> int:
    """The address of a tensor's storage: views of one buffer share it, so each buffer counts once.

    Explained in chapter 13 (notebooks/13_scaling_up.ipynb).
    """
    return t.untyped_storage().data_ptr()


def storage_keys(tensors: Iterable[torch.Tensor] | nn.Module) -> set[int]:
    """:func:`storage_key` of each tensor, or of each parameter of a module (to exclude them).

    Explained in chapter 13 (notebooks/13_scaling_up.ipynb).
    """
    if isinstance(tensors, nn.Module):
        tensors = tensors.parameters()
    return {storage_key(t) for t in tensors}


def saved_bytes(fn: Callable[[], Any], exclude: set[int] | None = None) -> tuple[int, Any]:
    """``(bytes, fn())``: bytes of the distinct storages autograd saves for backward while ``fn`` runs.

    Storages in ``exclude`` (e.g. :func:`storage_keys` of the parameters and inputs) are not
    counted. Explained in chapter 13 (notebooks/13_scaling_up.ipynb).
    """
    seen, total = set(exclude or ()), [0]

    def pack(t: torch.Tensor) -> torch.Tensor:
        key = storage_key(t)
        if key not in seen and key != 0:
            seen.add(key)
            total[0] += t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return total[0], out


class LiveTensors(TorchDispatchMode):
    """Remember every tensor an op creates; :meth:`live_bytes` sums the storages still alive.

    Use it as a context manager around a forward pass; afterwards ``live_bytes(exclude)`` is
    what stays in memory for the backward pass (whoever keeps it) plus the outputs.

    Explained in chapter 13 (notebooks/13_scaling_up.ipynb).
    """

    def __init__(self) -> None:
        super().__init__()
        self.refs: list[weakref.ref] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.refs.append(weakref.ref(t))
        return out

    def live_bytes(self, exclude: set[int] | None = None) -> int:
        """Bytes of the distinct storages, created inside the context, that are still alive."""
        gc.collect()
        seen, total = set(exclude or ()), 0
        for ref in self.refs:
            t = ref()
            if t is None:
                continue
            key = storage_key(t)
            if key in seen or key == 0:
                continue
            seen.add(key)
            total += t.untyped_storage().nbytes()
        return total


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def training_state_bytes(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """Measured ``weights``, ``gradients``, ``master_weights`` and ``optimizer_states`` bytes.

    * ``weights``: every parameter of ``model``;
    * ``gradients``: the ``.grad`` of the model's parameters that have one;
    * ``master_weights``: tensors the optimizer updates that are not model parameters (the
      fp32 copies of mixed-precision training); 0 when it updates the parameters themselves;
    * ``optimizer_states``: every tensor in the optimizer's state except the ``step`` counter
      (AdamW: ``exp_avg`` and ``exp_avg_sq``).

    Call it after at least one ``optimizer.step()`` (AdamW creates its moments lazily).
    Explained in chapter 13 (notebooks/13_scaling_up.ipynb).
    """
    params = list(model.parameters())
    model_keys = storage_keys(params)
    opt_params = [p for group in optimizer.param_groups for p in group["params"]]
    if not optimizer.state:
        raise ValueError("training_state_bytes: the optimizer has no state yet; call optimizer.step() first")
    states = [v for p in opt_params for k, v in optimizer.state.get(p, {}).items()
              if k != "step" and isinstance(v, torch.Tensor)]
    return {
        "weights": sum(_nbytes(p) for p in params),
        "gradients": sum(_nbytes(p.grad) for p in params if p.grad is not None),
        "master_weights": sum(_nbytes(p) for p in opt_params if storage_key(p) not in model_keys),
        "optimizer_states": sum(_nbytes(v) for v in states),
    }


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of ``fn()`` as ``torch.utils.flop_counter.FlopCounterMode`` counts them.

    Scaled-dot-product attention is forced to the math backend, whose ``QK^T`` and ``AV``
    matrix products the counter sees (fused kernels are counted by formula, or not at all).
    Explained in chapter 13 (notebooks/13_scaling_up.ipynb).
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def fastest_times(steps: dict[str, Callable[[], Any]], reps: int, device: str = "cpu",
                  warmup: bool = True) -> dict[str, float]:
    """Fastest seconds of each ``steps[name]()`` over ``reps`` rounds (after one warm-up round).

    The steps take turns within each round, so a slow spell of a shared machine hits them all
    alike; the minimum is the run least disturbed by other work. CUDA work is synchronised
    around each call. Used by ``benchmarks/attention.py`` and ``benchmarks/supervised_logits.py``.
    """
    times: dict[str, list[float]] = {name: [] for name in steps}
    for round_index in range(reps + int(warmup)):
        for name, step in steps.items():
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            step()
            if device == "cuda":
                torch.cuda.synchronize()
            if round_index >= int(warmup):
                times[name].append(time.perf_counter() - start)
    return {name: min(values) for name, values in times.items()}


def add_device_arguments(parser: argparse.ArgumentParser, reps: int) -> None:
    """The options the speed benchmarks share: ``--reps`` timed rounds (default ``reps``),
    ``--device`` (default: CUDA when present) and ``--threads`` (torch CPU threads)."""
    from minivl.scale import default_device

    parser.add_argument("--reps", type=int, default=reps, help="timed rounds; the fastest one counts")
    parser.add_argument("--device", default=default_device())
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")


def apply_device_arguments(args: argparse.Namespace) -> torch.dtype:
    """Set torch's CPU threads from ``args.threads`` (when given), print the environment, and
    return the default dtype of ``args.device`` (bf16 on CUDA, float32 on CPU)."""
    from minivl.scale import default_dtype, print_environment

    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = default_dtype(args.device)
    print_environment()
    return dtype


__all__ = ["LiveTensors", "add_device_arguments", "apply_device_arguments", "count_flops", "fastest_times", "saved_bytes", "storage_key", "storage_keys",
           "training_state_bytes"]
