"""Backend `numba` only: its batch-1 step path, its dtype refusal, its no-grad path, its compile
helper. (The equivalence matrix over every backend is tests/test_equivalence.py.)"""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("numba")

import cells  # noqa: E402
from cells.kernels import numba_cpu  # noqa: E402

if numba_cpu.unavailable_reason():  # pragma: no cover
    pytest.skip(numba_cpu.unavailable_reason(), allow_module_level=True)

# float32 for every kind; float64 (a second compile of each kernel) for LSTM only, to keep the
# cold-cache run short
CASES = [("lstm", "tanh", torch.float32), ("gru", "tanh", torch.float32),
         ("rnn", "tanh", torch.float32), ("rnn", "relu", torch.float32),
         ("lstm", "tanh", torch.float64)]
TOL = {torch.float32: 2e-5, torch.float64: 1e-10}


def make(kind, nonlinearity="tanh", dtype=torch.float32, input_size=5, hidden_size=7, **kw):
    if kind == "rnn":
        kw["nonlinearity"] = nonlinearity
    return cells.create(kind, "numba", input_size, hidden_size, dtype=dtype, **kw)


def reference(module):
    """torch.nn in float64 with the module's weights."""
    cls = getattr(torch.nn, {"rnn": "RNN", "gru": "GRU", "lstm": "LSTM"}[module.kind])
    kw = {"nonlinearity": module.nonlinearity} if module.kind == "rnn" else {}
    ref = cls(module.input_size, module.hidden_size, num_layers=module.num_layers,
              bias=module.bias, dtype=torch.float64, **kw)
    ref.load_state_dict({k: v.double() for k, v in module.state_dict().items()})
    return ref.eval()


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def states(s):
    return s if isinstance(s, tuple) else (s,)


class StepSpy:
    """Counts the calls that the batch-1 step path served."""

    def __init__(self, module):
        self.taken = 0
        self.inner = module._step
        module._step = self

    def __call__(self, *args):
        result = self.inner(*args)
        self.taken += result is not None
        return result


def generate(module, x, state=None):
    ys = []
    with torch.no_grad():
        for t in range(x.size(0)):
            y, state = module(x[t:t + 1], state)
            ys.append(y)
    return torch.cat(ys), state


@pytest.mark.parametrize("kind, nonlinearity, dtype", CASES,
                         ids=[f"{k}-{n}-{str(d)[6:]}" for k, n, d in CASES])
def test_step_path_equals_general_path_and_torch_nn(kind, nonlinearity, dtype):
    module = make(kind, nonlinearity, dtype).eval()
    spy = StepSpy(module)
    x = torch.randn(9, 1, 5, dtype=dtype)
    y_step, s_step = generate(module, x)
    assert spy.taken == 9
    with torch.no_grad():
        y_all, s_all = module(x)  # T = 9: the general kernels
    assert spy.taken == 9
    y_ref, s_ref = reference(module)(x.double())
    assert y_step.shape == y_ref.shape == (9, 1, 7)
    assert rel(y_step, y_all) <= TOL[dtype] and rel(y_step, y_ref) <= TOL[dtype]
    for a, b, r in zip(states(s_step), states(s_all), states(s_ref)):
        assert a.shape == r.shape == (1, 1, 7) and a.dtype == dtype
        assert rel(a, b) <= TOL[dtype] and rel(a, r) <= TOL[dtype]
    # given state, and unbatched 2-D input: also the step path
    h0 = tuple(torch.randn(1, 1, 7, dtype=dtype) for _ in states(s_ref))
    hx = h0 if kind == "lstm" else h0[0]
    y_step, _ = generate(module, x, hx)
    y_ref, _ = reference(module)(x.double(), tuple(h.double() for h in h0) if kind == "lstm"
                                 else h0[0].double())
    assert rel(y_step, y_ref) <= TOL[dtype]
    y1, s1 = generate(module, x[:, 0], None if kind != "lstm" else None)
    assert y1.shape == (9, 7) and states(s1)[0].shape == (1, 7)
    assert rel(y1, y_all[:, 0]) <= TOL[dtype]
    assert spy.taken == 27


def test_step_path_falls_back_with_the_same_checks():
    module = make("lstm").eval()
    spy = StepSpy(module)
    x = torch.randn(1, 1, 5)
    with torch.no_grad():
        with pytest.raises(RuntimeError, match=r"Expected hx\[0\] size \(1, 1, 7\), got \(1, 2, 7\)"):
            module(x, (torch.zeros(1, 2, 7), torch.zeros(1, 1, 7)))
        with pytest.raises(TypeError, match="LSTM expects hx as a tuple"):
            module(x, torch.zeros(1, 1, 7))
        with pytest.raises(RuntimeError, match="input.size\\(-1\\) must be equal to input_size"):
            module(torch.randn(1, 1, 4))
        with pytest.raises(TypeError, match="must have the type torch.float32"):
            module(x.double())
        module(torch.randn(2, 1, 5))  # T > 1, B > 1: general path
        module(torch.randn(1, 3, 5))
    y, _ = module(x)  # grad enabled: general path (autograd)
    assert y.requires_grad and spy.taken == 0


def test_refuses_other_dtypes():
    for dtype in (torch.float16, torch.bfloat16):
        with pytest.raises(TypeError, match="supports float32 and float64 only"):
            make("lstm", dtype=dtype)
    module = make("gru").half()  # converted after construction: refused at call time
    with pytest.raises(TypeError, match="supports float32 and float64 only"):
        module(torch.randn(3, 2, 5, dtype=torch.float16))


def test_no_grad_path_saves_nothing_and_grad_path_flows():
    module = make("lstm", num_layers=2, bidirectional=True).train()
    x = torch.randn(6, 3, 5, requires_grad=True)
    calls = []
    original = numba_cpu._LayerFunction.apply
    numba_cpu._LayerFunction.apply = lambda *a: calls.append(1) or original(*a)
    try:
        with torch.no_grad():
            y0, _ = module(x)
        assert not calls and not y0.requires_grad
        y, (h, c) = module(x)
        assert len(calls) == 4  # 2 layers x 2 directions through autograd
    finally:
        numba_cpu._LayerFunction.apply = original
    assert torch.equal(y0, y.detach())
    (y.sum() + h.sum() + c.sum()).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


def test_output_changed_in_place_is_refused_in_backward():
    module = make("gru")
    y, _ = module(torch.randn(4, 2, 5))
    y.mul_(2)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


def test_step_path_follows_new_weights():
    module = make("lstm").eval()
    x = torch.randn(1, 1, 5)
    with torch.no_grad():
        module(x)  # fills the weight cache
        module.weight_hh_l0 = torch.nn.Parameter(torch.randn(28, 7))
        module.bias_ih_l0.add_(1.0)  # in place: same storage
        y, _ = module(x)
    y_ref, _ = reference(module)(x.double())
    assert rel(y, y_ref) <= 2e-5
    module.double()
    with torch.no_grad():
        y, _ = module(x.double())
    assert y.dtype == torch.float64 and rel(y, y_ref) <= 1e-10


def test_warm_up_compiles_and_reports_times():
    times = numba_cpu.warm_up(kinds=("lstm",), dtypes=(torch.float32,))
    assert list(times) == ["lstm float32"] and times["lstm float32"] >= 0
    again = numba_cpu.warm_up(kinds=("lstm",), dtypes=(torch.float32,))
    assert list(again) == ["lstm float32"]


def test_blas_threads_helper():
    n = numba_cpu.blas_threads()
    if n is None:
        assert numba_cpu.set_blas_threads(1) is False
    else:
        assert numba_cpu.set_blas_threads(n) is True and numba_cpu.blas_threads() == n


def test_retain_graph_and_weights_changed_before_backward():
    module = make("lstm")
    x = torch.randn(4, 2, 5, requires_grad=True)
    y, _ = module(x)
    y.sum().backward(retain_graph=True)
    first = x.grad.clone()
    y.sum().backward()
    assert torch.allclose(x.grad, 2 * first)
    y, _ = module(x)
    with torch.no_grad():
        module.weight_hh_l0.add_(1.0)  # an optimizer step between forward and backward
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


def test_deepcopy_drops_the_step_caches():
    import copy
    module = make("lstm").eval()
    x = torch.randn(1, 1, 5)
    with torch.no_grad():
        y, state = module(x)
        for clone in (copy.deepcopy(module),):
            assert clone._fast is None and clone._last_state is None
            clone.weight_hh_l0.add_(1.0)  # the clone's weights, not the original's
            y2, _ = clone(x, state)
            y1, _ = module(x, state)
            assert not torch.equal(y1, y2)
            assert rel(y2, reference(clone)(x.double(), tuple(s.double() for s in state))[0]) <= 2e-5


@pytest.mark.parametrize("kind, nonlinearity, dtype", CASES,
                         ids=[f"{k}-{n}-{str(d)[6:]}" for k, n, d in CASES])
@pytest.mark.parametrize("chunks", [2, 3])
def test_batch_split_over_threads_matches_torch_nn(kind, nonlinearity, dtype, chunks, monkeypatch):
    """The GRU and RNN kernels split the batch (and the T*B rows of the weight gradients) into
    blocks, one per numba thread, the LSTM kernels the hidden units; forcing 2 or 3 uneven blocks
    (B = 7, H = 7) must give torch.nn's results, with every gradient (input, states, weights,
    biases), and so must the batch-1 step. Run serially if numba has 1 thread."""
    monkeypatch.setattr(numba_cpu, "_chunks", lambda rows, per_thread: min(chunks, rows))
    monkeypatch.setattr(numba_cpu, "_unit_threads", lambda hidden: min(chunks, hidden))
    module = make(kind, nonlinearity, dtype)
    ref = reference(module)
    x = torch.randn(5, 7, 5, dtype=dtype)
    h0 = tuple(torch.randn(1, 7, 7, dtype=dtype) for _ in range(2 if kind == "lstm" else 1))
    xs = [x.clone().requires_grad_(), x.double().requires_grad_()]
    hs = [tuple(h.clone().requires_grad_() for h in h0),
          tuple(h.double().requires_grad_() for h in h0)]
    outs = []
    for m, xi, hi in ((module, xs[0], hs[0]), (ref, xs[1], hs[1])):
        y, s = m(xi, hi if kind == "lstm" else hi[0])
        (y.square().sum() + sum(t.sum() for t in states(s))).backward()
        outs.append((y, states(s)))
    assert rel(outs[0][0], outs[1][0]) <= TOL[dtype]
    for a, b in zip(outs[0][1], outs[1][1]):
        assert rel(a, b) <= TOL[dtype]
    assert rel(xs[0].grad, xs[1].grad) <= TOL[dtype]
    for a, b in zip(hs[0], hs[1]):
        assert rel(a.grad, b.grad) <= TOL[dtype]
    for (name, p), q in zip(module.named_parameters(), ref.parameters()):
        assert rel(p.grad, q.grad) <= TOL[dtype], name
    with torch.no_grad():  # the no-grad kernels (ping-pong buffers) split the same way
        y, _ = module(x)
        assert rel(y, ref(x.double())[0]) <= TOL[dtype]
        module.eval()
        y, s = module(x[:1, :1], tuple(h[:, :1] for h in h0) if kind == "lstm" else h0[0][:, :1])
        y_ref, s_ref = ref(x[:1, :1].double(), tuple(h[:, :1].double() for h in h0)
                           if kind == "lstm" else h0[0][:, :1].double())
    assert rel(y, y_ref) <= TOL[dtype]
    for a, b in zip(states(s), states(s_ref)):
        assert rel(a, b) <= TOL[dtype]


def test_workspace_buffers_are_never_shared_between_live_graphs():
    """Two forwards before one backward (gradient accumulation over sequences) and a graph
    dropped without a backward: each graph keeps its own saved buffers."""
    module = make("lstm")
    ref = reference(module)
    xs = [torch.randn(6, 3, 5) for _ in range(3)]
    module(xs[2])[0].sum()  # a graph that is dropped unused: its buffers go back to the pool
    loss = sum((module(x)[0] * (i + 1)).sum() for i, x in enumerate(xs[:2]))
    loss.backward()
    ref_loss = sum((ref(x.double())[0] * (i + 1)).sum() for i, x in enumerate(xs[:2]))
    ref_loss.backward()
    for (name, p), q in zip(module.named_parameters(), ref.parameters()):
        assert rel(p.grad, q.grad) <= TOL[torch.float32], name
    assert numba_cpu.WORKSPACE.nbytes() > 0
    numba_cpu.release_workspace()
    assert numba_cpu.WORKSPACE.nbytes() == 0
