"""The peer backends (ort, openvino, jax) against float64 torch.nn, and their contracts.

ort and openvino are inference only: their forward is checked over the usual matrix, and
backward must refuse with cells.errors.Unsupported. jax also trains: the full comparison
(outputs, final states, every gradient) runs over the same matrix. The whole file is skipped
only when the `peers` extra is not installed.
"""

from __future__ import annotations

import os

import pytest
import torch

for _package in ("onnx", "onnxruntime", "openvino", "jax"):
    pytest.importorskip(_package, reason="the peers extra: pip install cellbench[peers]")

import cells  # noqa: E402
from cells.equivalence import Config, compare, reference_module  # noqa: E402
from cells.errors import Unsupported  # noqa: E402
from cells.matrix import matrix  # noqa: E402
from cells.tolerances import tolerance  # noqa: E402

INFERENCE_ONLY = ("ort", "openvino")
PEERS = INFERENCE_ONLY + ("jax",)


def build(backend: str, cfg: Config, **kw) -> torch.nn.Module:
    return cells.create(cfg.kind, backend, cfg.input_size, cfg.hidden_size, **cfg.nn_kwargs(), **kw)


def as_tuple(result) -> list[torch.Tensor]:
    out, final = result
    return [out, *(final if isinstance(final, tuple) else (final,))]


def forward_errors(module: torch.nn.Module, cfg: Config, seed: int = 0) -> dict[str, float]:
    """Norm-wise relative error of output and final states against float64 torch.nn."""
    reference = reference_module(cfg)
    reference.load_state_dict({k: v.double() for k, v in module.state_dict().items()})
    gen = torch.Generator().manual_seed(seed)
    d = 2 if cfg.bidirectional else 1
    if cfg.batch is None:
        x_shape, h_shape = (cfg.seq_len, cfg.input_size), (cfg.num_layers * d, cfg.hidden_size)
    else:
        x_shape = (
            (cfg.batch, cfg.seq_len, cfg.input_size)
            if cfg.batch_first
            else (cfg.seq_len, cfg.batch, cfg.input_size)
        )
        h_shape = (cfg.num_layers * d, cfg.batch, cfg.hidden_size)
    x = torch.randn(x_shape, generator=gen, dtype=torch.float64)
    hx = (
        [
            torch.randn(h_shape, generator=gen, dtype=torch.float64)
            for _ in range(cells.spec(cfg.kind).states)
        ]
        if cfg.with_hx
        else None
    )

    def arg(cast):
        return None if hx is None else (tuple(cast(h) for h in hx) if len(hx) == 2 else cast(hx[0]))

    with torch.no_grad():
        got = as_tuple(module(x.float(), arg(lambda t: t.float())))
        want = as_tuple(reference(x, arg(lambda t: t)))
    errors = {}
    for name, a, b in zip(("output", "h_n", "c_n"), got, want):
        assert a.shape == b.shape, (
            f"{name}: shape {tuple(a.shape)}, torch.nn gives {tuple(b.shape)}"
        )
        errors[name] = ((a.double() - b).norm() / b.norm().clamp_min(1e-300)).item()
    return errors


FORWARD_CASES = [
    pytest.param(backend, cfg, id=f"{backend}-{cfg.label().replace(' ', '-')}")
    for backend in INFERENCE_ONLY
    for kind in cells.KINDS
    for cfg in matrix(kind)
]
JAX_CASES = [
    pytest.param(cfg, id=cfg.label().replace(" ", "-"))
    for kind in cells.KINDS
    for cfg in matrix(kind)
]


@pytest.mark.parametrize("backend, cfg", FORWARD_CASES)
def test_inference_peer_forward_matches_float64_torch_nn(backend, cfg):
    errors = forward_errors(build(backend, cfg), cfg)
    tol = tolerance(torch.float32)
    assert all(e <= tol for e in errors.values()), f"{cfg.label()}: {errors} (tolerance {tol})"


@pytest.mark.parametrize("cfg", JAX_CASES)
def test_jax_matches_float64_torch_nn_with_gradients(cfg):
    result = compare(build("jax", cfg), cfg)
    assert result.passed, result.summary()


@pytest.mark.parametrize("backend", INFERENCE_ONLY)
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_the_forward_check_catches_torchs_gate_order_given_to_onnx(backend, kind, monkeypatch):
    from cells.kernels import ort

    cfg = Config(kind)
    identity = tuple(range(len(ort.GATE_ORDER[kind])))
    monkeypatch.setitem(ort.GATE_ORDER, kind, identity)  # the mistake the reordering guards against
    assert max(forward_errors(build(backend, cfg), cfg).values()) > 1e-3


@pytest.mark.parametrize("backend", INFERENCE_ONLY)
def test_inference_only_peer_refuses_training_clearly(backend):
    module = cells.create("lstm", backend, 5, 7)
    x = torch.randn(4, 3, 5)
    out, _ = module(x)  # forward outside no_grad works, as for any drop-in
    with torch.no_grad():
        torch.testing.assert_close(out, module(x)[0], rtol=0, atol=0)
    message = f"{backend} supports inference only (infer, generate); use jax, numba or native for training"
    with pytest.raises(Unsupported, match=message.replace("(", r"\(").replace(")", r"\)")):
        out.sum().backward()
    assert issubclass(Unsupported, NotImplementedError)


@pytest.mark.parametrize("backend", PEERS)
def test_float64_and_other_devices_are_refused_at_construction(backend):
    with pytest.raises(TypeError, match=f"backend '{backend}' runs float32 only.*torch.float64"):
        cells.create("gru", backend, 5, 7, dtype=torch.float64)


@pytest.mark.parametrize("backend", PEERS)
@pytest.mark.parametrize("kind", cells.KINDS)
def test_engine_is_rebuilt_when_parameters_change(backend, kind):
    cfg = Config(kind, num_layers=2)
    module = build(backend, cfg).eval()
    first = forward_errors(module, cfg)
    engine = module.engine(False)
    with torch.no_grad():  # in-place edit: bumps the parameter's _version
        module.weight_hh_l1.mul_(-1.5)
    assert module.engine(False) is not engine
    assert max(forward_errors(module, cfg).values()) <= tolerance(torch.float32)
    other = build("native", cfg)  # load_state_dict copies in place too
    module.load_state_dict(other.state_dict())
    assert max(forward_errors(module, cfg).values()) <= tolerance(torch.float32)
    assert max(first.values()) <= tolerance(torch.float32)
    unchanged = module.engine(False)
    assert module.engine(False) is unchanged  # and cached while nothing changes


def test_jax_trains_and_follows_optimizer_steps():
    torch.manual_seed(0)
    ours = cells.create("lstm", "jax", 5, 7, num_layers=2)
    ref = torch.nn.LSTM(5, 7, num_layers=2)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(6, 3, 5)
    for module in (ours, ref):
        opt = torch.optim.SGD(module.parameters(), lr=0.5)
        for _ in range(3):
            opt.zero_grad()
            module(x)[0].pow(2).sum().backward()
            opt.step()
    for (name, a), b in zip(ours.named_parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
    with torch.no_grad():
        torch.testing.assert_close(ours(x)[0], ref(x)[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", PEERS)
def test_dropout_masks_follow_torch_seed(backend):
    module = cells.create("gru", backend, 5, 7, num_layers=3, dropout=0.4).train()
    x = torch.randn(6, 3, 5)
    with torch.no_grad():
        torch.manual_seed(7)
        a = module(x)[0]
        torch.manual_seed(7)
        b = module(x)[0]
        module.eval()
        c = module(x)[0]
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_ort_graph_holds_one_recurrent_node_per_layer():
    for kind, op, kw in (
        ("lstm", "LSTM", {}),
        ("gru", "GRU", {}),
        ("rnn", "RNN", {"nonlinearity": "relu"}),
    ):
        module = cells.create(kind, "ort", 5, 7, num_layers=2, bidirectional=True, **kw)
        nodes = module.onnx_model().graph.node
        recurrent = [n for n in nodes if n.op_type in ("LSTM", "GRU", "RNN")]
        assert [n.op_type for n in recurrent] == [op, op], [n.op_type for n in nodes]
        for node in recurrent:
            attrs = {a.name: a for a in node.attribute}
            assert attrs["direction"].s == b"bidirectional" and attrs["hidden_size"].i == 7
            if kind == "gru":
                assert attrs["linear_before_reset"].i == 1
            if kind == "rnn":
                assert list(attrs["activations"].strings) == [b"Relu", b"Relu"]
        assert {n.op_type for n in nodes} - {op} <= {
            "Slice",
            "Transpose",
            "Reshape",
            "Concat",
            "Squeeze",
        }


@pytest.fixture
def threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("n", [1, 2])
def test_threads_are_pinned_to_torchs_thread_count(n, threads):
    torch.set_num_threads(n)
    ort_module = cells.create("lstm", "ort", 5, 7)
    options = ort_module.session().get_session_options()
    assert options.intra_op_num_threads == n and options.inter_op_num_threads == 1
    spin = "1" if os.environ.get("CELLBENCH_ORT_SPIN") == "1" else "0"
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == spin
    compiled = cells.create("lstm", "openvino", 5, 7).compiled_model()
    assert compiled.get_property("INFERENCE_NUM_THREADS") == n
    import openvino as ov

    assert compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.f32


def test_jax_pins_xla_threads_once():
    from cells.kernels import jax_peer

    engine = cells.create("gru", "jax", 5, 7).engine(False)
    pinned = jax_peer._PINNED["threads"]
    assert pinned is not None
    if isinstance(pinned, int):  # pinned by us (not by the user's XLA_FLAGS)
        assert engine.threads == pinned
        assert f"intra_op_parallelism_threads={pinned}" in os.environ["XLA_FLAGS"]


def test_missing_package_gives_the_install_hint():
    from cells.kernels.peer_base import missing_packages

    assert (
        missing_packages("no_such_package_xyz")
        == "needs no_such_package_xyz: pip install cellbench[peers]"
    )
    assert missing_packages("torch") is None


def test_openvino_writes_into_torchs_output_tensors():
    """The docs say no output copy is timed: the plugin must have used the tensors we set."""
    module = cells.create("gru", "openvino", 5, 7, num_layers=2, bidirectional=True).eval()
    with torch.no_grad():
        out, h_n = module(torch.randn(4, 3, 5))
    request = module.engine(False).request
    assert request.get_output_tensor(0).data.ctypes.data == out.data_ptr()
    assert request.get_output_tensor(1).data.ctypes.data == h_n.data_ptr()
