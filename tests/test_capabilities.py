"""The capability matrix (docs/capabilities.md), checked cell by cell.

Every backend available here, for every column: a declared capability is checked numerically
(against torch.nn in float64, or against the module's own eager call), a refused one must raise
a clear message naming what is missing. A backend that loses a declared capability fails here;
nothing is skipped because of a declaration.
"""

from __future__ import annotations

import copy
import io
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

import cells
from cells.capabilities import COLUMNS, declared, markdown, supports
from cells.equivalence import Config, compare

ROOT = Path(__file__).resolve().parents[1]
KIND = (
    "lstm"  # the matrix is per backend; packed and dtypes are covered for every kind in test_dropin
)
BACKENDS = cells.backends(KIND)


def caps(backend: str):
    return declared(KIND, backend)


def inference_only(backend: str) -> bool:
    """Peers such as `ort` run forward only; their backward refuses (tested in test_peers)."""
    return bool(getattr(cells.get(KIND, backend), "inference_only", False))


def create(backend: str, **kw) -> nn.Module:
    return cells.create(KIND, backend, 3, 4, **kw)


class Model(nn.Module):
    """A Linear feeding the recurrent module, as in a real model."""

    def __init__(self, backend: str) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)
        self.rnn = create(backend, batch_first=True)

    def forward(self, x):
        return self.rnn(self.lin(x))[0]


def test_docs_matrix_is_generated_from_the_declarations():
    committed = (ROOT / "docs" / "capabilities.md").read_text()
    assert markdown() in committed, (
        "docs/capabilities.md is stale: python -m cells.capabilities --markdown"
    )


def test_every_builtin_declares_every_column():
    for backend in cells.registry.BUILTIN:
        c = declared(KIND, backend)
        assert all(isinstance(supports(c, column), bool) for column in COLUMNS)


@pytest.mark.parametrize("backend", BACKENDS)
def test_compile_in_a_model(backend):
    torch._dynamo.reset()
    model = Model(backend)
    x = torch.randn(2, 4, 3)
    compiled = torch.compile(model, backend="aot_eager")
    if inference_only(backend):
        with torch.no_grad():
            torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-6)
        return
    eager_out = model(x)
    eager_grads = torch.autograd.grad(eager_out.square().sum(), list(model.parameters()))
    out = compiled(x)
    grads = torch.autograd.grad(out.square().sum(), list(model.parameters()))
    torch.testing.assert_close(out, eager_out, rtol=1e-5, atol=1e-6)
    for g, e in zip(grads, eager_grads):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_vmap(backend):
    module = create(backend)
    xs = torch.randn(3, 5, 3)  # three unbatched sequences (T=5, I=3)
    run = torch.func.vmap(lambda x: module(x)[0])
    if not caps(backend).vmap:
        with pytest.raises(RuntimeError, match="does not support torch.func transforms"):
            run(xs)
        return
    batched = module(xs.transpose(0, 1))[0].transpose(0, 1)
    torch.testing.assert_close(run(xs), batched, rtol=1e-5, atol=1e-6)


def _double_backward(module: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    x = x.clone().requires_grad_(True)
    out, _ = module(x)
    weight = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
    (g,) = torch.autograd.grad((out * weight).sum(), x, create_graph=True)
    return list(torch.autograd.grad(g.square().sum(), [x, *module.parameters()]))


@pytest.mark.parametrize("backend", BACKENDS)
def test_double_backward(backend):
    dtype = torch.float64 if torch.float64 in caps(backend).dtypes else torch.float32
    module = create(backend, dtype=dtype)
    x = torch.randn(4, 2, 3, dtype=dtype)
    if not caps(backend).double_backward:
        with pytest.raises(RuntimeError, match="does not support double backward"):
            _double_backward(module, x)
        return
    reference = nn.LSTM(3, 4, dtype=torch.float64)
    reference.load_state_dict({k: v.double() for k, v in module.state_dict().items()})
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    for got, want in zip(_double_backward(module, x), _double_backward(reference, x.double())):
        torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol)


@pytest.mark.parametrize("backend", BACKENDS)
def test_jit_script_in_a_model(backend):
    model = Model(backend)
    x = torch.randn(2, 4, 3)
    if not caps(backend).script_in_model:
        with pytest.raises(RuntimeError, match="cannot be compiled by torch.jit.script"):
            torch.jit.script(model)
        return
    eager = model(x)
    torch.testing.assert_close(torch.jit.script(model)(x), eager)


@pytest.mark.filterwarnings(
    "ignore:You are using the legacy TorchScript-based ONNX export:DeprecationWarning"
)
@pytest.mark.parametrize("backend", BACKENDS)
def test_onnx_export(backend):
    model = Model(backend).eval()
    x = torch.randn(1, 4, 3)
    buffer = io.BytesIO()
    if not caps(backend).onnx_export:
        with pytest.raises(RuntimeError, match="cannot be exported to ONNX"):
            torch.onnx.export(model, (x,), buffer, dynamo=False)
        return
    pytest.importorskip("onnx", reason="torch.onnx.export needs the onnx package")
    ort = pytest.importorskip("onnxruntime", reason="running the exported graph needs onnxruntime")
    torch.onnx.export(model, (x,), buffer, dynamo=False, input_names=["x"])
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    got = session.run(None, {"x": x.numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(got), model(x).detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_meta_device_init(backend):
    if not caps(backend).meta_init:
        with pytest.raises(Exception, match="meta"):
            create(backend, device="meta")
        return
    module = create(backend, device="meta", num_layers=2)
    assert next(module.parameters()).is_meta
    module.to_empty(device="cpu")
    module.reset_parameters()
    cfg = Config(KIND, input_size=3, hidden_size=4, num_layers=2)
    result = compare(module, cfg)
    assert result.passed, result.summary()


@pytest.mark.parametrize("backend", BACKENDS)
def test_deepcopy_and_pickle(backend):
    module = create(backend)
    x = torch.randn(5, 2, 3)
    expected = module(x)[0]
    for clone in (copy.deepcopy(module), pickle.loads(pickle.dumps(module))):
        assert type(clone) is type(module)
        torch.testing.assert_close(clone(x)[0], expected)


def test_torch_save_loads_in_a_fresh_process(tmp_path):
    """Classes made at run time by for_kind must be found by a process that never built them."""
    x = torch.randn(5, 2, 3)
    expected = {}
    # every backend once, and every kind once (the classes differ per kind)
    pairs = {(KIND, backend) for backend in BACKENDS} | {(kind, "fused") for kind in cells.KINDS}
    for kind, backend in sorted(pairs):
        module = cells.create(kind, backend, 3, 4)
        torch.save(module, tmp_path / f"{kind}-{backend}.pt")
        expected[f"{kind}-{backend}"] = module(x)[0]
    torch.save(x, tmp_path / "x.pt")
    script = textwrap.dedent(f"""
        import pathlib, torch
        d = pathlib.Path({str(tmp_path)!r})
        x = torch.load(d / "x.pt")
        out = {{p.stem: torch.load(p, weights_only=False)(x)[0] for p in d.glob("*-*.pt")}}
        torch.save(out, d / "out.pt")
    """)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    run = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    got = torch.load(tmp_path / "out.pt")
    assert set(got) == set(expected)
    for name, want in expected.items():
        torch.testing.assert_close(got[name], want, msg=name)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("kind", cells.KINDS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_cpu_half_precision(backend, kind, dtype):
    if backend not in cells.backends(kind):
        pytest.skip(f"{backend} has no {kind}")
    cfg = Config(kind, num_layers=2, bidirectional=True, seq_len=5)
    if dtype not in declared(kind, backend).dtypes:
        with pytest.raises(Exception, match=str(dtype).replace("torch.", "")):
            module = cells.create(
                kind, backend, cfg.input_size, cfg.hidden_size, dtype=dtype, **cfg.nn_kwargs()
            )
            module(torch.randn(5, 3, cfg.input_size, dtype=dtype))
        return
    module = cells.create(
        kind, backend, cfg.input_size, cfg.hidden_size, dtype=dtype, **cfg.nn_kwargs()
    )
    result = compare(module, cfg)  # tolerance from cells/tolerances.py for the dtype
    assert result.passed, result.summary()


@pytest.mark.parametrize("backend", BACKENDS)
def test_packed_or_a_clear_refusal(backend):
    cfg = Config(KIND, num_layers=2, bidirectional=True, batch=4, lengths=(5, 1, 6, 3), seq_len=6)
    module = cells.create(KIND, backend, cfg.input_size, cfg.hidden_size, **cfg.nn_kwargs())
    if not caps(backend).packed:
        packed = nn.utils.rnn.pack_padded_sequence(
            torch.randn(6, 4, cfg.input_size), torch.tensor(cfg.lengths), enforce_sorted=False
        )
        with pytest.raises(
            TypeError, match="does not accept PackedSequence input; backends that do: .*naive"
        ):
            module(packed)
        return
    result = compare(module, cfg)
    assert result.passed, result.summary()


@pytest.mark.parametrize("backend", BACKENDS)
def test_proj_size_or_a_clear_refusal(backend):
    cfg = Config(KIND, num_layers=2, bidirectional=True, batch_first=True, proj_size=2)
    if not caps(backend).proj_size:
        with pytest.raises(
            ValueError,
            match="proj_size=2 is not supported by backend .*; backends with proj_size: .*fused",
        ):
            cells.create(KIND, backend, cfg.input_size, cfg.hidden_size, **cfg.nn_kwargs())
        return
    module = cells.create(KIND, backend, cfg.input_size, cfg.hidden_size, **cfg.nn_kwargs())
    result = compare(module, cfg)
    assert result.passed, result.summary()
