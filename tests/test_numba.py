"""Backend `numba` only: its batch-1 step path, its refusals, its no-grad path, its thread
rule and thread splits, its compile and BLAS helpers, its workspace. (The equivalence matrix
over every backend is tests/test_equivalence.py.)"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

import cells
from cells.kernels.numba import backend as numba_module

if numba_module.NumbaLoop.unavailable_reason():  # pragma: no cover
    pytest.skip(str(numba_module.NumbaLoop.unavailable_reason()), allow_module_level=True)

import numba  # noqa: E402

from cells.kernels.numba import autograd_layer as layer  # noqa: E402
from cells.kernels.numba import threads, workspace  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

# float32 for every kind; float64 (a second compile of each kernel) for LSTM only, to keep the
# cold-cache run short
CASES = [
    ("lstm", "tanh", torch.float32),
    ("gru", "tanh", torch.float32),
    ("rnn", "tanh", torch.float32),
    ("rnn", "relu", torch.float32),
    ("lstm", "tanh", torch.float64),
]
TOL = {torch.float32: 2e-5, torch.float64: 1e-10}


def make(kind, nonlinearity="tanh", dtype=torch.float32, input_size=5, hidden_size=7, **kw):
    if kind == "rnn":
        kw["nonlinearity"] = nonlinearity
    return cells.create(kind, "numba", input_size, hidden_size, dtype=dtype, **kw)


def reference(module):
    """torch.nn in float64 with the module's weights."""
    cls = getattr(torch.nn, {"rnn": "RNN", "gru": "GRU", "lstm": "LSTM"}[module.kind])
    kw = {"nonlinearity": module.nonlinearity} if module.kind == "rnn" else {}
    ref = cls(
        module.input_size,
        module.hidden_size,
        num_layers=module.num_layers,
        bias=module.bias,
        dtype=torch.float64,
        **kw,
    )
    ref.load_state_dict({k: v.double() for k, v in module.state_dict().items()})
    return ref.eval()


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def states(s):
    return s if isinstance(s, tuple) else (s,)


class StepSpy:
    """Counts the calls that the batch-1 step path (or another shortcut, `path`) served."""

    def __init__(self, module, path="_step"):
        self.taken = 0
        self.inner = getattr(module, path)
        setattr(module, path, self)

    def __call__(self, *args):
        result = self.inner(*args)
        self.taken += result is not None
        return result


def run_python(script: str, timeout: int) -> str:
    """The stdout of `script` in a fresh interpreter; fails the test if it fails."""
    command = [sys.executable, "-c", script]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def generate(module, x, state=None):
    ys = []
    with torch.no_grad():
        for t in range(x.size(0)):
            y, state = module(x[t : t + 1], state)
            ys.append(y)
    return torch.cat(ys), state


@pytest.mark.parametrize(
    "kind, nonlinearity, dtype", CASES, ids=[f"{k}-{n}-{str(d)[6:]}" for k, n, d in CASES]
)
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
    y_ref, _ = reference(module)(
        x.double(), tuple(h.double() for h in h0) if kind == "lstm" else h0[0].double()
    )
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
        with pytest.raises(
            RuntimeError, match=r"Expected hx\[0\] size \(1, 1, 7\), got \(1, 2, 7\)"
        ):
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


@pytest.mark.parametrize(
    "kind, nonlinearity, dtype", CASES, ids=[f"{k}-{n}-{str(d)[6:]}" for k, n, d in CASES]
)
def test_sequence_path_equals_general_path_bit_for_bit(kind, nonlinearity, dtype):
    """No grad, one layer, one direction, a contiguous (T, B, I) input: the no-grad sequence
    shortcut runs the general path's kernels without the base's Python; a non-contiguous copy
    of the same input takes the general path, and every output must match exactly."""
    module = make(kind, nonlinearity, dtype).eval()
    spy = StepSpy(module, "_sequence")
    x = torch.randn(6, 3, 5, dtype=dtype)
    general_x = torch.empty(3, 6, 5, dtype=dtype).transpose(0, 1).copy_(x)
    h0 = tuple(torch.randn(1, 3, 7, dtype=dtype) for _ in range(2 if kind == "lstm" else 1))
    with torch.no_grad():
        for hx in (None, h0 if kind == "lstm" else h0[0]):
            y, s = module(x, hx)
            taken = spy.taken
            y_general, s_general = module(general_x, hx)
            assert spy.taken == taken  # the shortcut declined the non-contiguous input
            assert torch.equal(y, y_general)
            for a, b in zip(states(s), states(s_general)):
                assert torch.equal(a, b) and a.shape == (1, 3, 7) and a.is_contiguous()
            states(s)[0].add_(1.0)  # h_n is its own memory, as torch.nn's, not a view of y
            assert torch.equal(y, y_general)
        assert spy.taken == 2
        y_ref, _ = reference(module)(x.double())
        assert rel(module(x)[0], y_ref) <= TOL[dtype]
    # with gradients: the same autograd Function, called directly; every gradient as the
    # general path's (x non-contiguous) bit for bit, through y and the final states (the
    # shortcut's are shaped (1, B, H) by the layer), with hx given and None (zeros made by the
    # layer on the shortcut, by the base on the general path)
    for given in (True, False):
        grads = []
        for inp in (x, general_x):
            inp = inp.detach().requires_grad_(True)
            hx = tuple(h.detach().requires_grad_(True) for h in h0) if given else ()
            y, s = module(inp, (hx if kind == "lstm" else hx[0]) if given else None)
            up = torch.linspace(-1, 1, y.numel(), dtype=dtype).view_as(y)
            loss = (y * up).sum() + sum((t * t).sum() for t in states(s))
            grads.append(torch.autograd.grad(loss, [inp, *hx, *module.parameters()]))
        for a, b in zip(*grads):
            assert torch.equal(a, b)
    assert spy.taken == 5


def test_sequence_path_leaves_the_rest_to_the_general_path():
    module = make("lstm").eval()
    spy = StepSpy(module, "_sequence")
    x = torch.randn(4, 3, 5)
    with torch.no_grad():
        with torch.autocast("cpu"):  # the base casts to bfloat16, which numba refuses
            with pytest.raises(TypeError, match="bfloat16 under torch.autocast"):
                module(x)
        with pytest.raises(RuntimeError, match=r"Expected hidden\[0\] size|Expected hx"):
            module(x, (torch.zeros(1, 2, 7), torch.zeros(1, 3, 7)))
        others = [make("lstm", batch_first=True).eval(), make("lstm", num_layers=2).eval()]
        spies = [StepSpy(m, "_sequence") for m in others]
        others[0](x.transpose(0, 1).contiguous())
        others[1](x)
    assert spy.taken == 0 and all(s.taken == 0 for s in spies)
    with torch.no_grad():
        module(x)
    assert spy.taken == 1  # the spy counts what the shortcut serves


def test_refuses_other_dtypes():
    for dtype in (torch.float16, torch.bfloat16):
        with pytest.raises(TypeError, match="supports float32 and float64 only"):
            make("lstm", dtype=dtype)
    module = make("gru").half()  # converted after construction: refused at call time
    with pytest.raises(TypeError) as refused:
        module(torch.randn(3, 2, 5, dtype=torch.float16))
    message = str(refused.value)  # names what was given and what is supported
    assert "numba" in message and all(d in message for d in ("float16", "float32", "float64"))


def test_no_grad_path_saves_nothing_and_grad_path_flows():
    module = make("lstm", num_layers=2, bidirectional=True).train()
    x = torch.randn(6, 3, 5, requires_grad=True)
    calls = []
    original = layer.LayerFunction.apply
    layer.LayerFunction.apply = lambda *a: calls.append(1) or original(*a)
    try:
        with torch.no_grad():
            y0, _ = module(x)
        assert not calls and not y0.requires_grad
        y, (h, c) = module(x)
        assert len(calls) == 4  # 2 layers x 2 directions through autograd
    finally:
        layer.LayerFunction.apply = original
    assert torch.equal(y0, y.detach())
    (y.sum() + h.sum() + c.sum()).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


def test_output_changed_in_place_is_refused_in_backward():
    module = make("gru")
    y, _ = module(torch.randn(4, 2, 5))
    with pytest.raises(RuntimeError, match="inplace"):  # refused at the change or the backward
        y.mul_(2)
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


WARM_UP_CHECK = """
import torch
from cells.kernels.numba import gemm, gru_rnn_kernels as K, warm_up
times = warm_up(kinds=("rnn",), dtypes=(torch.float64,))
kernels = (K.rnn_forward, K.rnn_backward, K.rnn_step, gemm.wgrad)
print(sorted(times), min(times.values()) > 0,
      [any("float64" in str(sig) for sig in k.signatures) for k in kernels],
      [not k.stats.cache_misses and bool(k.stats.cache_hits) for k in kernels])
"""


def test_warm_up_compiles_every_kernel_of_the_kinds_asked_and_the_cache_keeps_them():
    """In fresh processes (where nothing else compiled them): warm_up leaves the forward, the
    backward, the weight-gradient and the batch-1 step kernels of RNN float64 compiled and
    reports one positive time per kind and dtype; the second process loads every one of them
    from numba's on-disk cache (cache=True) instead of compiling it."""
    lines = [run_python(WARM_UP_CHECK, timeout=600).split("\n")[0] for _ in range(2)]
    assert lines[0].startswith("['rnn float64'] True [True, True, True, True]")
    assert lines[1] == "['rnn float64'] True [True, True, True, True] [True, True, True, True]"


def test_blas_threads_helper_sets_and_reads_the_count():
    from cells.kernels.numba import blas_threads, set_blas_threads

    n = blas_threads()
    if n is None:
        pytest.skip("scipy's OpenBLAS not found (another BLAS): nothing to set")
    other = 2 if n == 1 else 1
    try:
        assert set_blas_threads(other) is True
        assert blas_threads() == other
    finally:
        set_blas_threads(n)
    assert blas_threads() == n


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
            assert (
                rel(y2, reference(clone)(x.double(), tuple(s.double() for s in state))[0]) <= 2e-5
            )


@pytest.mark.parametrize(
    "kind, nonlinearity, dtype", CASES, ids=[f"{k}-{n}-{str(d)[6:]}" for k, n, d in CASES]
)
@pytest.mark.parametrize("chunks", [2, 3])
def test_batch_split_over_threads_matches_torch_nn(kind, nonlinearity, dtype, chunks, monkeypatch):
    """The GRU and RNN kernels split the batch (and the T*B rows of the weight gradients) into
    blocks, one per numba thread, the LSTM kernels the hidden units; forcing 2 or 3 uneven blocks
    (B = 7, H = 7) must give torch.nn's results, with every gradient (input, states, weights,
    biases), and so must the batch-1 step. Run serially if numba has 1 thread."""
    used = []

    def forced(*args):
        used.append(chunks)
        return chunks  # every split here has at least 7 pieces

    for name in ("batch_threads", "lstm_threads", "wgrad_threads", "threads_for"):
        monkeypatch.setattr(layer, name, forced)
    monkeypatch.setattr(numba_module, "lstm_threads", forced)  # the batch-1 step's blocks
    module = make(kind, nonlinearity, dtype)
    ref = reference(module)
    x = torch.randn(5, 7, 5, dtype=dtype)
    h0 = tuple(torch.randn(1, 7, 7, dtype=dtype) for _ in range(2 if kind == "lstm" else 1))
    xs = [x.clone().requires_grad_(), x.double().requires_grad_()]
    hs = [
        tuple(h.clone().requires_grad_() for h in h0),
        tuple(h.double().requires_grad_() for h in h0),
    ]
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
        y_ref, s_ref = ref(
            x[:1, :1].double(),
            tuple(h[:, :1].double() for h in h0) if kind == "lstm" else h0[0][:, :1].double(),
        )
    assert rel(y, y_ref) <= TOL[dtype]
    for a, b in zip(states(s), states(s_ref)):
        assert rel(a, b) <= TOL[dtype]
    # forward, backward, weight gradients, no-grad forward (and the step's packing for LSTM)
    assert len(used) >= 4


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
    assert workspace.WORKSPACE.nbytes() > 0
    workspace.release_workspace()
    assert workspace.WORKSPACE.nbytes() == 0


def test_refuses_what_it_does_not_support():
    with pytest.raises(ValueError, match="proj_size=3 is not supported by backend 'numba'"):
        cells.create("lstm", "numba", 5, 7, proj_size=3)
    with pytest.raises(RuntimeError, match="runs on the CPU only; parameters are on meta"):
        cells.create("lstm", "numba", 5, 7, device="meta")


@pytest.mark.parametrize("package", ["numba", "scipy"])
def test_unavailable_reason_names_the_missing_package(package):
    """With `package` made unimportable, cells.unavailable() and construction both name it."""
    script = (
        f"import sys; sys.modules[{package!r}] = None\n"
        "import cells\n"
        "print(cells.unavailable()['numba'])\n"
        "try:\n    cells.create('gru', 'numba', 2, 3)\n"
        "except Exception as exc:\n    print(type(exc).__name__, exc)\n"
    )
    reason, error = run_python(script, timeout=300).strip().split("\n")[-2:]
    assert reason.startswith(f"needs the package '{package}'"), reason
    assert error.startswith("RuntimeError") and f"needs the package '{package}'" in error, error


# --- how many threads, and when the pool is not used at all ------------------------------
def test_thread_rule_follows_the_work_between_joins(monkeypatch):
    monkeypatch.setattr(threads, "numba_threads", lambda: 4)
    W = threads.MIN_WORK
    assert threads.threads_for(2 * W - 1, 100) == 1  # each of 2 threads would get < MIN_WORK
    assert threads.threads_for(2 * W, 100) == 2
    assert threads.threads_for(100 * W, 100) == 4  # numba's thread count caps it
    assert threads.threads_for(100 * W, 3) == 3  # so does the number of pieces
    assert threads.threads_for(0, 0) == 1
    # LSTM, per step: 4H (H+I) B multiply-adds over H units
    assert threads.lstm_threads(8, 8, 1) == 1  # batch-1 generation at H = 8
    assert threads.lstm_threads(8, 8, 32) == 1
    assert threads.lstm_threads(256, 28, 32) == 4  # d2l size
    assert threads.lstm_threads(256, 28, 1) == 2
    assert threads.lstm_threads(2, 10_000, 10_000) == 2  # no more threads than units
    # GRU and RNN, per call: T B G (H+I) over B // MIN_ROWS batch blocks
    assert threads.batch_threads(3 * 256, 256, 28, 35, 32) == 4
    assert threads.batch_threads(3 * 8, 8, 8, 1, 32) == 1  # one small step
    assert threads.batch_threads(3 * 256, 256, 28, 35, 15) == 1  # under 2 blocks of MIN_ROWS
    assert threads.wgrad_threads(3 * 256, 256, 35 * 32) == 4
    assert threads.wgrad_threads(3 * 8, 8, 35 * 2) == 1


def _other_threads_cpu_ns() -> int:
    """CPU time (ns) that every thread of this process but the calling one has run."""
    me, total = threading.get_native_id(), 0
    for tid in os.listdir("/proc/self/task"):
        if int(tid) != me:
            try:
                total += int(Path(f"/proc/self/task/{tid}/schedstat").read_text().split()[0])
            except (FileNotFoundError, ProcessLookupError):  # a thread that just ended
                pass
    return total


def _small_workloads(kind):
    """Calls whose shapes get one thread by the rule: batch-1 generation, a small train step."""
    step = make(kind, input_size=8, hidden_size=8).eval()
    train = make(kind, input_size=8, hidden_size=8).train()
    x = torch.randn(1, 1, 8)
    xb = torch.randn(5, 4, 8, requires_grad=True)

    def generate():
        state = None
        with torch.no_grad():
            for _ in range(300):
                _, state = step(x, state)

    def train_step():
        for _ in range(30):
            y, _ = train(xb)
            y.sum().backward()

    return generate, train_step


@pytest.mark.skipif(
    not Path(f"/proc/self/task/{os.getpid()}/schedstat").exists(),
    reason="needs Linux's per-thread /proc/self/task/*/schedstat",
)
@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 numba threads")
@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_small_shapes_never_enter_the_thread_pool(kind, monkeypatch):
    """At 2 numba threads, shapes the rule gives one thread (I = H = 8: batch-1 generation and a
    B = 4 train step) run entirely in the calling thread: numba's pool threads run for no CPU
    time at all. The control forces 2 blocks on the same calls, and the pool does run. (CPU
    time of the other threads, from the kernel's accounting; nothing here is timed.)"""
    before = numba.get_num_threads()
    numba.set_num_threads(2)
    try:
        generate, train_step = _small_workloads(kind)
        generate(), train_step()  # compile / load, pack the weights
        time.sleep(0.3)  # let the pool's threads finish spinning after earlier tests
        start = _other_threads_cpu_ns()
        generate(), train_step()
        serial = _other_threads_cpu_ns() - start
        for name in ("batch_threads", "lstm_threads"):  # the control: force 2 blocks
            monkeypatch.setattr(layer, name, lambda *args: 2)
        monkeypatch.setattr(numba_module, "lstm_threads", lambda *args: 2)
        generate, train_step = _small_workloads(kind)  # repacked for 2 blocks
        start = _other_threads_cpu_ns()
        generate(), train_step()
        forced = _other_threads_cpu_ns() - start
    finally:
        numba.set_num_threads(before)
    assert forced > 0
    assert serial <= forced // 20, (serial, forced)
