"""Backend `compiled`: equivalence with float64 torch.nn, one compile per kind (not per shape),
and the hand-written backward of `Recurrence` checked eagerly (no compilation) on its own."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

import cells
from cells import recurrence
from cells.equivalence import Config, compare
from cells.kernels import compiled, compiled_infer, compiled_support
from cells.matrix import matrix

pytestmark = pytest.mark.skipif(
    compiled.unavailable_reason() is not None,
    reason=f"compiled unavailable: {compiled.unavailable_reason()}",
)


def _build(config: Config, backend: str = "compiled"):
    torch.manual_seed(0)
    return cells.create(
        config.kind, backend, config.input_size, config.hidden_size, **config.nn_kwargs()
    )


class _EagerSteps(cells.RecurrentBase):
    """The same Recurrence with the step functions run eagerly: checks the backward math alone."""

    def run_layer(self, x, state, weights):
        steps = recurrence.EAGER_STEPS[recurrence.variant_of(self)]
        return recurrence.recurrent_layer(steps, x, state, weights)


# the hand-written backward on its own, over the quick subset of the one equivalence matrix
@pytest.mark.parametrize(
    "config", [c for kind in cells.KINDS for c in matrix(kind, quick=True)], ids=Config.label
)
def test_recurrence_backward_eager(config):
    torch.manual_seed(0)
    module = cells.for_kind(_EagerSteps, config.kind)(
        config.input_size, config.hidden_size, **config.nn_kwargs()
    )
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
    """The first training call of a kind compiles its forward and backward steps, and both
    compile times are recorded. In a fresh interpreter: in this one, earlier tests (and their
    torch._dynamo.reset()) decide what is compiled when."""
    import json
    import subprocess
    import sys

    script = (
        "import json, torch, cells\n"
        "from cells.kernels import compiled\n"
        "m = cells.create('rnn', 'compiled', 5, 7)\n"
        "m(torch.randn(4, 2, 5))[0].sum().backward()\n"
        "print(json.dumps(compiled.compile_times()))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=600, check=True
    ).stdout
    times = json.loads(out.strip().splitlines()[-1])
    assert {"rnn_tanh.forward[torch.float32, cpu]", "rnn_tanh.backward[torch.float32, cpu]"} <= set(
        times
    )
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
    single = cells.for_kind(_EagerSteps, config.kind)(
        config.input_size, config.hidden_size, **config.nn_kwargs()
    )
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
    op = compiled_support.define_packed_mm()
    if op is None:
        pytest.skip("oneDNN packed linear not in this torch build")
    torch.manual_seed(0)
    x, b = torch.randn(5, 16), torch.randn(16, 24)
    torch.testing.assert_close(op(x, b), x.mm(b))
    assert compiled_support.packed_for(b.double(), x.size(0)) is None  # float32 CPU only
    packing = compiled_support.packed_for(b, x.size(0))
    assert packing is not None
    with packing:
        assert compiled_support._PACKED[id(b)][0] is b
        torch.testing.assert_close(op(x, b), x.mm(b), rtol=1e-5, atol=1e-5)
        b.add_(1.0)  # new version: the packed copy is stale and must not be used
        torch.testing.assert_close(op(x, b), x.mm(b))
    assert id(b) not in compiled_support._PACKED


# --- inference on short inputs (generation): the no-grad path --------------------------------
# the one matrix's quick subset and its unbatched entries, cut to the short lengths generation feeds
SHORT_CONFIGS = [
    replace(c, seq_len=min(c.seq_len, 3))
    for kind in cells.KINDS
    for c in matrix(kind)
    if c in matrix(kind, quick=True) or c.batch is None
]


def _float64_pair(config: Config):
    """The compiled module and torch.nn in float64 with the same weights, inputs and states."""
    from cells.equivalence import reference_module

    module = _build(config).eval()
    reference = reference_module(config).eval()
    reference.load_state_dict({k: v.double() for k, v in module.state_dict().items()})
    batch = () if config.batch is None else (config.batch,)
    x = torch.randn(
        *(
            (batch + (config.seq_len,))
            if config.batch_first and batch
            else (config.seq_len,) + batch
        ),
        config.input_size,
    )
    states = (2 if config.kind == "lstm" else 1) if config.with_hx else 0
    hx = (
        tuple(
            torch.randn(
                config.num_layers * (2 if config.bidirectional else 1), *batch, config.hidden_size
            )
            for _ in range(states)
        )
        or None
    )
    return module, reference, x, hx


def _relative_error(got, want) -> float:
    return float((got.double() - want).norm() / want.norm())


@pytest.mark.parametrize("config", SHORT_CONFIGS, ids=Config.label)
@pytest.mark.parametrize(
    "context", [torch.no_grad, torch.inference_mode], ids=["no_grad", "inference_mode"]
)
def test_short_inference_matches_float64_torch_nn(config, context):
    from cells.tolerances import tolerance

    module, reference, x, hx = _float64_pair(config)
    arg = None if hx is None else (hx if config.kind == "lstm" else hx[0])
    with context():
        got = module(x, arg)
    want = reference(
        x.double(),
        None
        if hx is None
        else (tuple(h.double() for h in hx) if config.kind == "lstm" else hx[0].double()),
    )
    for g, w in zip([got[0], *compiled_states(got[1])], [want[0], *compiled_states(want[1])]):
        assert g.shape == w.shape and g.dtype == torch.float32
        assert _relative_error(g, w.detach()) <= tolerance(torch.float32)
    assert (
        got[0].data_ptr() != compiled_states(got[1])[0].data_ptr()
    )  # output and state never share


def compiled_states(hx):
    return tuple(hx) if isinstance(hx, tuple) else (hx,)


def test_generation_step_by_step_matches_float64_torch_nn_and_compiles_nothing_new():
    """Batch 1, one token per call, state carried (what `bench run --modes generate` times), 2 layers:
    equal to torch.nn on the whole sequence; after the first calls, no new graph for other batch sizes,
    sequence lengths below SHORT_STEPS or unbatched input; batch 1 (run eagerly) compiles nothing."""
    from torch._dynamo.utils import counters

    from cells.tolerances import tolerance

    config = Config("lstm", num_layers=2, seq_len=12, batch=1)
    module, reference, x, _ = _float64_pair(config)
    with torch.no_grad():
        module(torch.randn(2, 3, config.input_size))  # batch > 1: the dynamic graph
        graphs = counters["stats"]["unique_graphs"]
        state, ys = None, []
        for t in range(config.seq_len):
            y, state = module(x[t : t + 1], state)
            ys.append(y)
        assert counters["stats"]["unique_graphs"] == graphs, "batch-1 generation compiled a graph"
        before = graphs
        for seq, batch in ((1, 4), (compiled.SHORT_STEPS - 1, 1), (2, 7), (3, None)):
            shape = (seq, config.input_size) if batch is None else (seq, batch, config.input_size)
            module(torch.randn(*shape))
    assert counters["stats"]["unique_graphs"] == before, "a short inference call recompiled"
    want, (h, c) = reference(x.double())
    assert _relative_error(torch.cat(ys), want.detach()) <= tolerance(torch.float32)
    assert _relative_error(state[0], h.detach()) <= tolerance(torch.float32)
    assert _relative_error(state[1], c.detach()) <= tolerance(torch.float32)
    assert "lstm.infer[torch.float32, cpu]" in compiled.compile_times()


def test_short_inference_path_only_without_grad(monkeypatch):
    """Under grad (training, even at T = 1) the autograd path runs; under no_grad with T >=
    SHORT_STEPS the chunked path runs; only short no-grad calls take the inference step."""
    taken = []
    real = compiled_infer.infer_short
    monkeypatch.setattr(
        compiled_infer,
        "infer_short",
        lambda *a, **k: taken.append((a[1].size(0), k.get("eager"))) or real(*a, **k),
    )
    real_batch1 = compiled_infer.gru_batch1
    monkeypatch.setattr(
        compiled_infer,
        "gru_batch1",
        lambda *a: taken.append((a[0].size(0), "gru batch 1")) or real_batch1(*a),
    )
    module = _build(Config("gru"))
    module(torch.randn(1, 2, 5))[0].sum().backward()
    assert all(p.grad is not None for p in module.parameters()) and taken == []
    with torch.no_grad():
        module(torch.randn(compiled.SHORT_STEPS, 2, 5))
        module(torch.randn(compiled.SHORT_STEPS - 1, 2, 5))
        module(torch.randn(1, 1, 5))
    # batch 1 runs GRU's eager step on packed weights, straight from the module's shortcut
    assert taken == [(compiled.SHORT_STEPS - 1, False), (1, "gru batch 1")]


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_short_call_equals_general_path_bit_for_bit(kind):
    """No grad, one layer and direction, fewer than SHORT_STEPS steps: `CompiledLoop._short`
    runs infer_short without the shared base's Python. A non-contiguous copy of the same input
    takes the general path; outputs and final states must match exactly, with hx given and
    None, at batch 1 (the eager step) and 2 (the compiled one). Anything unusual is left to the
    general path, with its messages."""
    module = _build(Config(kind)).eval()
    taken: list[bool] = []
    inner = module._short
    module._short = lambda *a: (lambda r: taken.append(r is not None) or r)(inner(*a))
    I, H = module.input_size, module.hidden_size  # noqa: E741
    for T, B in ((1, 1), (3, 2)):
        x = torch.randn(T, B, I)
        general_x = torch.empty(T, B, 2 * I)[..., ::2].copy_(x)  # strided: never contiguous
        h0 = tuple(torch.randn(1, B, H) for _ in range(2 if kind == "lstm" else 1))
        for hx in (None, h0 if kind == "lstm" else h0[0]):
            with torch.no_grad():
                before = sum(taken)
                y, s = module(x, hx)
                assert sum(taken) == before + 1
                y_general, s_general = module(general_x, hx)
                assert sum(taken) == before + 1  # declined: not contiguous
            assert torch.equal(y, y_general)
            for a, b in zip(compiled_states(s), compiled_states(s_general)):
                assert torch.equal(a, b) and a.shape == (1, B, H)
                assert a.data_ptr() != y.data_ptr()
    before = sum(taken)
    x = torch.randn(1, 1, I)
    with torch.no_grad():
        with pytest.raises(RuntimeError, match=r"Expected (hx|hx\[0\]|hidden\[0\]|hidden) size"):
            bad = torch.zeros(1, 2, H)
            module(x, (bad, bad) if kind == "lstm" else bad)
        with torch.autocast("cpu"), pytest.raises(TypeError, match="under torch.autocast"):
            module(x)
        module(torch.randn(compiled.SHORT_STEPS, 1, I))
        for other in (
            _build(replace(Config(kind), batch_first=True)),
            _build(replace(Config(kind), num_layers=2)),
        ):
            spy: list[bool] = []
            inner_other = other._short
            other._short = lambda *a, f=inner_other, s=spy: (
                lambda r: s.append(r is not None) or r
            )(f(*a))
            other.eval()(x)
            assert not any(spy)
    assert sum(taken) == before
    module(x)  # with grad enabled the shortcut is not asked
    assert sum(taken) == before


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
def test_batch1_weight_caches_follow_in_place_updates(kind, bias):
    """The batch-1 step's weights (W^T, GRU's packed blocks) are derived once per weight
    version: after an in-place update of any one parameter (what an optimizer step does) a
    generated token uses the new value, equal to float64 torch.nn updated the same way."""
    from cells.tolerances import tolerance

    config = Config(kind, batch=1, seq_len=1, bias=bias)
    module, reference, x, hx = _float64_pair(config)
    arg = (hx if kind == "lstm" else hx[0]) if hx is not None else None
    for name in [None, *dict(module.named_parameters())]:
        if name is not None:
            with torch.no_grad():
                getattr(module, name).mul_(-0.5)
                getattr(reference, name).mul_(-0.5)
        with torch.no_grad():
            y, _ = module(x, arg)
            want, _ = reference(
                x.double(),
                None
                if hx is None
                else (tuple(h.double() for h in arg) if kind == "lstm" else arg.double()),
            )
        assert _relative_error(y, want) <= tolerance(torch.float32), f"after updating {name}"
