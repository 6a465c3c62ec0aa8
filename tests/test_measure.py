"""The measuring helpers of chapter 13 on tensors whose sizes are known by hand."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from minivl.config import MiniVLConfig
from minivl.model import MiniVL
from minivl.train.measure import (
    LiveTensors,
    count_flops,
    saved_bytes,
    storage_key,
    storage_keys,
    training_state_bytes,
)
from minivl.train.planner import param_counts, static_memory
from minivl.train.stages import stage1
from minivl.train.trainer import apply_stage_freezing


def test_storage_key_is_shared_by_views():
    a = torch.zeros(4, 6)
    assert storage_key(a.view(6, 4)) == storage_key(a[1:]) == storage_key(a)
    assert storage_key(a.clone()) != storage_key(a)
    lin = nn.Linear(3, 2)
    assert storage_keys(lin) == {storage_key(lin.weight), storage_key(lin.bias)}


def test_saved_bytes_of_known_ops():
    x = torch.randn(3, 4, requires_grad=True)
    w = torch.randn(4, 5, requires_grad=True)
    # exp saves its output: 3 x 4 fp32 = 48 bytes
    n, out = saved_bytes(lambda: torch.exp(x), storage_keys([x]))
    assert n == 48 and out.shape == (3, 4)
    # a matmul saves both operands: x (48) and w (80); excluded storages are not counted
    assert saved_bytes(lambda: x @ w)[0] == 48 + 80
    assert saved_bytes(lambda: x @ w, storage_keys([w]))[0] == 48
    assert saved_bytes(lambda: x @ w, storage_keys([x, w]))[0] == 0
    # no grad, nothing saved
    with torch.no_grad():
        assert saved_bytes(lambda: x @ w)[0] == 0


def test_live_tensors_counts_storages_alive_after_the_block():
    live = LiveTensors()
    with live:
        a = torch.ones(10)  # 40 bytes, kept
        b = a * 2  # 40 bytes, freed below
        c = a.view(2, 5)  # same storage as a
        d = torch.ones(3, dtype=torch.float64)  # 24 bytes, kept
    del b
    assert live.live_bytes() == 40 + 24
    assert live.live_bytes(storage_keys([a])) == 24
    assert c.shape == (2, 5) and d.sum() == 3


def test_training_state_bytes_fp32_and_mixed_precision():
    torch.manual_seed(0)
    lin = nn.Linear(4, 3)  # 15 parameters
    opt = torch.optim.AdamW(lin.parameters(), lr=1e-3)
    with pytest.raises(ValueError, match="no state yet"):
        training_state_bytes(lin, opt)
    lin(torch.randn(2, 4)).sum().backward()
    opt.step()
    assert training_state_bytes(lin, opt) == {"weights": 60, "gradients": 60, "master_weights": 0,
                                              "optimizer_states": 120}
    # bf16 weights and gradients, fp32 master copies optimised by AdamW (2 + 2 + 4 + 8 bytes per parameter)
    half = nn.Linear(4, 3).to(torch.bfloat16)
    masters = [p.detach().float().requires_grad_() for p in half.parameters()]
    opt = torch.optim.AdamW(masters, lr=1e-3)
    half(torch.randn(2, 4, dtype=torch.bfloat16)).sum().backward()
    for m, p in zip(masters, half.parameters()):
        m.grad = p.grad.float()
    opt.step()
    assert training_state_bytes(half, opt) == {"weights": 30, "gradients": 30, "master_weights": 60,
                                               "optimizer_states": 120}


def test_training_state_bytes_equal_planner_for_a_frozen_tower_model():
    torch.manual_seed(0)
    stage = stage1("tiny")
    cfg = MiniVLConfig.smoke(vocab_size=300, image_token_id=5)
    model = MiniVL(cfg)
    apply_stage_freezing(model, stage)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    ids = torch.cat([torch.full((cfg.num_image_token,), 5), torch.randint(10, 300, (12,))])[None]  # (L,) -> (1, L)
    model(input_ids=ids, pixel_values=torch.randn(1, 3, 112, 112), labels=ids).loss.backward()
    opt.step()
    measured = training_state_bytes(model, opt)
    assert measured == static_memory(param_counts(cfg, stage), "fp32", "ddp", 1)
    assert measured["gradients"] == 4 * param_counts(cfg, stage)["projector"]["total"]


def test_count_flops_linear_and_attention():
    lin = nn.Linear(4, 3)
    x = torch.randn(5, 4)
    assert count_flops(lambda: lin(x)) == 2 * 5 * 4 * 3
    # forward + backward of a Linear whose input needs no gradient: forward and weight gradient
    assert count_flops(lambda: lin(x).sum().backward()) == 2 * (2 * 5 * 4 * 3)
    q, k, v = (torch.randn(1, 2, 8, 4) for _ in range(3))  # (B, heads, L, d)
    # QK^T and AV: 2 x (2 x L x L x d) per head
    assert count_flops(lambda: nn.functional.scaled_dot_product_attention(q, k, v)) == 2 * 2 * (2 * 8 * 8 * 4)


def test_fastest_times_takes_turns_and_keeps_the_minimum(monkeypatch):
    """Each step runs once per round plus a warm-up round, in turns; the result is its fastest round."""
    import minivl.train.measure as measure

    clock = iter(float(t) for t in range(1000))
    monkeypatch.setattr(measure.time, "perf_counter", lambda: next(clock))
    order = []
    durations = {"a": iter([9, 3, 5]), "b": iter([1, 7, 2])}

    def step(name):
        def run():
            order.append(name)
            for _ in range(next(durations[name]) - 1):  # each extra clock read adds one "second"
                next(clock)
        return run

    out = measure.fastest_times({"a": step("a"), "b": step("b")}, reps=2)
    assert order == ["a", "b", "a", "b", "a", "b"]  # warm-up round first, then 2 timed rounds
    assert out == {"a": 3.0, "b": 2.0}  # the warm-up's 9 and 1 are not counted


def test_device_arguments_set_threads_and_pick_the_dtype(capsys):
    import argparse

    import minivl.train.measure as measure

    parser = argparse.ArgumentParser()
    measure.add_device_arguments(parser, reps=7)
    args = parser.parse_args(["--device", "cpu", "--threads", "1"])
    assert (args.reps, args.device, args.threads) == (7, "cpu", 1)
    before = torch.get_num_threads()
    try:
        assert measure.apply_device_arguments(args) == torch.float32  # float32 on CPU
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert "torch threads" in capsys.readouterr().out  # the environment is printed
    assert parser.parse_args([]).threads is None  # torch's own choice unless asked
