"""Backend `compiled`: equivalence with float64 torch.nn, one compile per kind (not per shape),
and the hand-written backward of `Recurrence` checked eagerly (no compilation) on its own."""
from __future__ import annotations

import pytest
import torch

import cells
from cells.equivalence import Config, compare
from cells.kernels import compiled

pytestmark = pytest.mark.skipif(compiled.unavailable_reason() is not None,
                                reason=f"compiled unavailable: {compiled.unavailable_reason()}")

CONFIGS = [
    Config("lstm"), Config("gru"), Config("rnn"), Config("rnn", nonlinearity="relu"),
    Config("lstm", num_layers=3, bidirectional=True), Config("gru", num_layers=2, bidirectional=True),
    Config("lstm", batch_first=True, bias=False, with_hx=False),
    Config("gru", bias=False, with_hx=False), Config("rnn", batch=None),
    Config("lstm", batch=None), Config("gru", batch=1, seq_len=1), Config("lstm", batch=1),
    Config("lstm", seq_len=200, num_layers=2), Config("gru", seq_len=200),
    Config("rnn", nonlinearity="relu", seq_len=200, num_layers=2, bidirectional=True),
]


def _build(config: Config, backend: str = "compiled"):
    torch.manual_seed(0)
    return cells.create(config.kind, backend, config.input_size, config.hidden_size, **config.nn_kwargs())


@pytest.mark.parametrize("config", CONFIGS, ids=Config.label)
def test_matches_torch_nn(config):
    result = compare(_build(config), config)
    assert result.passed, result.summary()


class _EagerSteps(cells.RecurrentBase):
    """The same Recurrence with the step functions run eagerly: checks the backward math alone."""

    def run_layer(self, x, state, weights):
        variant = compiled.variant_of(self)
        return compiled.recurrent_layer(variant, compiled.EAGER_STEPS[variant], x, state, weights)


@pytest.mark.parametrize("config", [
    Config("lstm", num_layers=2, bidirectional=True), Config("gru", bias=False), Config("gru", batch=1),
    Config("rnn", nonlinearity="relu", with_hx=False), Config("lstm", batch=None, seq_len=1),
], ids=Config.label)
def test_recurrence_backward_eager(config):
    torch.manual_seed(0)
    module = cells.for_kind(_EagerSteps, config.kind)(config.input_size, config.hidden_size,
                                                       **config.nn_kwargs())
    result = compare(module, config)
    assert result.passed, result.summary()


def test_float64_is_exact():
    config = Config("lstm", num_layers=2)
    module = _build(config).double()
    result = compare(module, config)
    assert result.passed, result.summary()


def test_no_recompile_for_new_sequence_length_or_batch():
    from torch._dynamo.utils import counters
    module = _build(Config("lstm"))
    # T = K + 1: one single step and one K-step chunk, so every step function is compiled (or
    # found); later sequence lengths only change how many chunk and single-step calls run
    x = torch.randn(compiled.CHUNK + 1, 3, 5)
    module(x)[0].sum().backward()
    before = counters["stats"]["unique_graphs"]
    for seq, batch in ((1, 3), (17, 3), (40, 4), (3, 1), (2 * compiled.CHUNK, 2)):
        out, _ = module(torch.randn(seq, batch, 5, requires_grad=True))
        out.sum().backward()
    assert counters["stats"]["unique_graphs"] == before, "a new T or batch size recompiled a step"


def test_compile_time_is_observable():
    # the first call per kind in this process compiled (here or in an earlier test) and was timed
    module = _build(Config("rnn"))
    module(torch.randn(4, 2, 5))[0].sum().backward()
    times = compiled.compile_times()
    assert {"rnn_tanh.forward[torch.float32, cpu]", "rnn_tanh.backward[torch.float32, cpu]"} <= set(times)
    assert all(t > 0 for t in times.values())


def test_inference_under_no_grad():
    config = Config("gru", num_layers=2)
    module, reference = _build(config), _build(config, "native")
    x = torch.randn(6, 3, 5)
    with torch.no_grad():
        got, h = module(x)
        want, h_ref = reference(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(h, h_ref, rtol=1e-5, atol=1e-6)


def test_chunked_matches_single_steps():
    """K steps per compiled call (plus T % K single steps) gives what one step per call gives."""
    config = Config("lstm", seq_len=2 * compiled.CHUNK + 3, num_layers=2)
    chunked = _build(config)
    torch.manual_seed(0)
    single = cells.for_kind(_EagerSteps, config.kind)(config.input_size, config.hidden_size,
                                                      **config.nn_kwargs())
    x = torch.randn(config.seq_len, 4, config.input_size, requires_grad=True)
    outs = []
    for module in (chunked, single):
        y, (h, c) = module(x)
        (y.sum() + h.sum() * 2 + c.sum() * 3).backward()
        outs.append([y, h, c, x.grad.clone()] + [p.grad for p in module.parameters()])
        x.grad = None
    for got, want in zip(*outs):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_packed_mm_uses_registered_weight_and_falls_back():
    """`packed_mm` (the steps' recurrent GEMM on float32 CPU) equals x @ b with the packed copy
    registered, and falls back to torch.mm without one or after b changed in place."""
    op = compiled._define_packed_mm()
    if op is None:
        pytest.skip("oneDNN packed linear not in this torch build")
    steps = compiled.Steps(None, None, packed=True)
    torch.manual_seed(0)
    x, b = torch.randn(5, 16), torch.randn(16, 24)
    torch.testing.assert_close(op(x, b), x.mm(b))
    with compiled._packed_for(steps, b, x.size(0)):
        assert compiled._PACKED[id(b)][0] is b
        torch.testing.assert_close(op(x, b), x.mm(b), rtol=1e-5, atol=1e-5)
        b.add_(1.0)  # new version: the packed copy is stale and must not be used
        torch.testing.assert_close(op(x, b), x.mm(b))
    assert id(b) not in compiled._PACKED
