"""The measurement engine: FLOP model, tokens/s arithmetic, statistics, and timing with a fake clock."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import test_bench_fakes  # noqa: E402

from bench import measure  # noqa: E402
from bench.measure import Case, Options  # noqa: E402


@pytest.fixture
def fakes():
    test_bench_fakes.register_all()
    test_bench_fakes.CALLS.clear()
    yield test_bench_fakes
    test_bench_fakes.unregister_all()


# --- FLOP model against hand-computed values ----------------------------------------------------
def flops(kind, mode, input_size, hidden, batch, seq_len, layers=1, convention="full"):
    """measure.mode_flops of the case with these fields (any backend: FLOPs do not depend on it)."""
    case = Case(kind, "native", mode, input_size, hidden, layers, batch, seq_len)
    return measure.mode_flops(replace(case, convention=convention))


def test_flops_lstm_d2l_by_hand():
    # 2 FLOPs x 4 gates x batch 32 x hidden 256 x (28 + 256) inputs x 35 steps
    forward = 2 * 4 * 32 * 256 * 284 * 35
    assert forward == 651_427_840
    assert flops("lstm", "infer", 28, 256, 32, 35) == forward
    assert flops("lstm", "train", 28, 256, 32, 35) == 3 * forward
    assert flops("lstm", "generate", 28, 256, 32, 35) == 2 * 4 * 1 * 256 * 284 * 35


def test_flops_two_layer_gru_and_rnn():
    # layer 0 sees the input (10), layer 1 sees hidden (20): 2*3*B*H*(I+H)*T + 2*3*B*H*(H+H)*T
    b, h, t = 4, 20, 7
    expected = 2 * 3 * b * h * (10 + h) * t + 2 * 3 * b * h * (h + h) * t
    assert flops("gru", "infer", 10, h, b, t, layers=2) == expected
    assert flops("rnn", "infer", 10, h, b, t) == 2 * 1 * b * h * (10 + h) * t


def test_unknown_mode_is_rejected():
    with pytest.raises(ValueError, match="train, infer, generate"):
        flops("lstm", "sing", 1, 1, 1, 1)


def test_tokens_per_second_and_pct_of_peak():
    case = Case("lstm", "native", "train", 28, 256, 1, 32, 35)
    d = measure.derived(case, 0.1, peak_gflops=200.0)
    assert d["tokens_per_s"] == pytest.approx(32 * 35 / 0.1)
    assert d["gflops"] == pytest.approx(3 * 651_427_840 / 0.1 / 1e9)
    assert d["pct_of_peak"] == pytest.approx(100 * d["gflops"] / 200.0)
    gen = Case("lstm", "native", "generate", 28, 256, 1, 1, 35)
    assert measure.derived(gen, 0.5, None)["tokens_per_s"] == pytest.approx(35 / 0.5)
    assert measure.derived(gen, 0.5, None)["pct_of_peak"] is None
    assert measure.derived(case, None, 200.0)["tokens_per_s"] is None


# --- timing with a fake clock: known cost in, known numbers out ---------------------------------
def test_run_case_with_fake_clock_gives_exact_numbers(fakes):
    case = Case("lstm", "fake", "infer", 3, 4, 1, 2, 10, threads=1)
    r = measure.run_case(
        case,
        Options(min_run_time=0.05, min_repeats=5, memory=False, check=False),
        peak_gflops=1.0,
        timer=fakes.CLOCK,
    )
    per_call = fakes.FakeRecurrent.STEP_COST * 10
    assert r["status"] == "ok" and len(r["times"]) >= 5
    assert r["times"] == pytest.approx([per_call] * len(r["times"]))
    # the first call carries the 'compilation' and is kept out of the round's times
    assert r["first_call_s"] == pytest.approx(fakes.FakeRecurrent.FIRST_COST + per_call)
    figures = measure.derived(case, per_call, 1.0)
    assert figures["tokens_per_s"] == pytest.approx(2 * 10 / per_call)
    assert figures["gflops"] == pytest.approx(flops("lstm", "infer", 3, 4, 2, 10) / per_call / 1e9)


def test_generate_contract(fakes):
    """batch 1, one token at a time, state carried from None, eval mode, no_grad."""
    case = Case("lstm", "fake", "generate", 3, 4, 1, 1, 6, threads=1)
    fn, module = measure.build_workload(case)
    fn()
    assert [c["shape"] for c in fakes.CALLS] == [(1, 1, 3)] * 6
    assert [c["state_none"] for c in fakes.CALLS] == [True] + [False] * 5
    assert not any(c["training"] or c["grad"] for c in fakes.CALLS)
    r = measure.run_case(
        case, Options(min_run_time=0.05, memory=False, check=False), timer=fakes.CLOCK
    )
    assert r["times"] == pytest.approx([6 * fakes.FakeRecurrent.STEP_COST] * len(r["times"]))


def test_train_and_infer_modes(fakes):
    fn, module = measure.build_workload(Case("lstm", "fake", "train", 3, 4, 1, 2, 5))
    fn()
    assert fakes.CALLS[-1] == {
        "shape": (5, 2, 3),
        "state_none": True,
        "training": True,
        "grad": True,
    }
    assert all(p.grad is None for p in module.parameters())  # cleared after each call
    fn, module = measure.build_workload(Case("lstm", "fake", "infer", 3, 4, 1, 2, 5))
    fn()
    assert fakes.CALLS[-1]["training"] is False and fakes.CALLS[-1]["grad"] is False


def test_real_backend_measures_memory_and_peak():
    case = Case("lstm", "native", "train", 4, 8, 1, 2, 3, threads=1)
    r = measure.run_case(case, Options(min_run_time=0.01, warmup=0))
    assert r["status"] == "ok" and min(r["times"]) > 0 and r["check_error"] < 1 and r["check_s"] > 0
    assert r["peak_mem_bytes"] is not None and r["peak_mem_bytes"] > 0
    assert "profiler" in r["mem_method"]
    peak = measure.measure_peak("cpu", size=128, repeats=1)
    assert peak["peak_gflops"] > 0 and peak["peak_source"] in ("torch", "numpy")


def test_error_message_is_one_line():
    assert measure.error_message(RuntimeError("boom\nstack")) == "RuntimeError: boom"
    assert measure.error_message(MemoryError()) == "MemoryError"


# --- the recurrent convention (DeepBench / FlashRNN): frozen weights, recurrent FLOPs only ------
def test_recurrent_flops_by_hand():
    # LSTM I5 H8 B2 T3: 2 FLOPs x 4 gates x batch 2 x H 8 x H 8 x 3 steps; no input projection
    forward = 2 * 4 * 2 * 8 * 8 * 3
    assert forward == 3072
    assert flops("lstm", "infer", 5, 8, 2, 3, convention="recurrent") == forward
    # train: the forward h W_hh^T and backward's dgates W_hh, no weight gradients
    assert flops("lstm", "train", 5, 8, 2, 3, convention="recurrent") == 2 * forward
    assert flops("lstm", "generate", 5, 8, 2, 3, convention="recurrent") == forward // 2
    # two layers: 2 x (2 x 3 gates x B x H x H x T); the second layer's input width is not counted
    two = flops("gru", "infer", 5, 8, 2, 3, layers=2, convention="recurrent")
    assert two == 2 * 2 * 3 * 2 * 64 * 3
    case = Case("lstm", "native", "train", 5, 8, 1, 2, 3, convention="recurrent")
    assert measure.derived(case, 1.0, None)["flops"] == 6144
    assert measure.derived(Case("lstm", "native", "train", 5, 8, 1, 2, 3), 1.0, None)["flops"] == (
        3 * 2 * 4 * 2 * 8 * (5 + 8) * 3
    )
    with pytest.raises(ValueError, match="full, recurrent"):
        flops("lstm", "train", 5, 8, 2, 3, convention="deepbench")


@pytest.mark.parametrize("convention", ["full", "recurrent"])
def test_recurrent_convention_freezes_the_weights(convention):
    fn, module = measure.build_workload(
        Case("lstm", "native", "train", 5, 8, 1, 2, 3, convention=convention)
    )
    inputs = []
    module.register_forward_hook(lambda m, args, out: inputs.append(args[0]))
    fn()
    recurrent = convention == "recurrent"
    # no parameter takes part in autograd, so backward computes no weight gradient; the input's
    # gradient (with the states') is what backward computes instead
    assert all(p.requires_grad is not recurrent for p in module.parameters())
    assert inputs[0].requires_grad is recurrent
    assert all(p.grad is None for p in module.parameters()) and inputs[0].grad is None


def test_recurrent_case_passes_the_gate_and_stays_frozen(monkeypatch):
    from bench import gate

    seen: dict = {}

    def spy(module, case):
        seen["module"] = module
        seen["trainable"] = all(p.requires_grad for p in module.parameters())
        return real(module, case)

    real = gate.check
    monkeypatch.setattr(gate, "check", spy)
    keep: dict = {}
    case = Case("lstm", "native", "train", 5, 8, 1, 2, 3, threads=1, convention="recurrent")
    r = measure.run_case(case, Options(min_run_time=0.01, warmup=0, memory=False), keep=keep)
    # the gate checks every gradient, weights unfrozen for it; the timed calls are frozen again
    # (else their weight gradients would accumulate: the call clears only trainable ones)
    assert r["status"] == "ok" and r["check_error"] < 1 and seen["trainable"]
    measure.retime(case, Options(min_run_time=0.01, memory=False), keep)
    params = list(seen["module"].parameters())
    assert all(not p.requires_grad and p.grad is None for p in params)
    assert case.label().endswith(" recurrent")
