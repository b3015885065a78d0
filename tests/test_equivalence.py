"""Every backend of every kind equals torch.nn run in float64 on the same weights.

Checked per configuration: the output, the final state(s), and the gradients of every
parameter, the input and the initial state(s), under random inputs and random upstream
gradients (cells.equivalence). Tolerances come from cells/tolerances.py only.
New backends join automatically: the matrix is built from cells.backends(kind).
"""

from __future__ import annotations

import pytest
import torch
from conftest import requires_cuda
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cells
from cells.capabilities import declared
from cells.equivalence import Config, compare
from cells.matrix import matrix

# inference-only peers (ort, openvino) refuse backward: their forward runs this matrix in test_peers
BACKENDS = [
    (kind, backend)
    for kind in cells.KINDS
    for backend in cells.backends(kind)
    if not getattr(cells.get(kind, backend), "inference_only", False)
]


CASES = [
    pytest.param(kind, backend, cfg, id=f"{backend}-{cfg.label().replace(' ', '-')}")
    for kind, backend in BACKENDS
    for cfg in matrix(kind)
]


def build(backend: str, cfg: Config, **factory) -> torch.nn.Module:
    return cells.create(
        cfg.kind, backend, cfg.input_size, cfg.hidden_size, **cfg.nn_kwargs(), **factory
    )


def assert_equivalent(module: torch.nn.Module, cfg: Config, seed: int = 0) -> None:
    result = compare(module, cfg, seed=seed)
    assert result.passed, result.summary()


@pytest.mark.parametrize("kind, backend, cfg", CASES)
def test_float32_matches_float64_torch_nn(kind, backend, cfg):
    assert_equivalent(build(backend, cfg), cfg)


@pytest.mark.parametrize("kind, backend", BACKENDS)
def test_float64_matches_torch_nn_to_roundoff(kind, backend):
    cfg = Config(kind, num_layers=2, bidirectional=True, seq_len=12)
    try:
        module = build(backend, cfg, dtype=torch.float64)
    except (TypeError, ValueError, NotImplementedError) as exc:
        if "float64" in str(exc) or "dtype" in str(exc):
            pytest.skip(f"{backend} does not support float64: {exc}")
        raise
    assert_equivalent(module, cfg, seed=1)


@pytest.mark.parametrize("kind, backend", BACKENDS)
@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
@given(data=st.data())
def test_random_shapes(kind, backend, data):
    cfg = Config(
        kind,
        input_size=data.draw(st.integers(1, 9), "input_size"),
        hidden_size=data.draw(st.integers(1, 12), "hidden_size"),
        num_layers=data.draw(st.integers(1, 3), "num_layers"),
        bias=data.draw(st.booleans(), "bias"),
        batch_first=data.draw(st.booleans(), "batch_first"),
        bidirectional=data.draw(st.booleans(), "bidirectional"),
        nonlinearity=data.draw(st.sampled_from(["tanh", "relu"]), "nonlinearity"),
        batch=data.draw(st.one_of(st.none(), st.integers(1, 5)), "batch"),
        seq_len=data.draw(st.integers(1, 25), "seq_len"),
        with_hx=data.draw(st.booleans(), "with_hx"),
    )
    assert_equivalent(build(backend, cfg), cfg, seed=data.draw(st.integers(0, 2**16), "seed"))


def test_matrix_covers_what_the_standard_asks():
    configs = matrix("rnn")
    assert {c.num_layers for c in configs} >= {1, 2, 3}
    assert any(c.bidirectional for c in configs) and any(c.batch_first for c in configs)
    assert any(not c.bias for c in configs) and any(c.batch is None for c in configs)
    assert {c.with_hx for c in configs} == {True, False}
    assert min(c.seq_len for c in configs) == 1 and max(c.seq_len for c in configs) >= 200
    assert any(c.batch == 1 for c in configs) and any(c.nonlinearity == "relu" for c in configs)


def test_the_check_catches_a_wrong_function():
    """The comparison must fail on a module that is not torch.nn's function (gates swapped)."""
    cfg = Config("lstm")
    fused = type(build("fused", cfg))

    class SwappedGates(fused):
        def run_layer(self, x, state, weights):
            def swap(w):
                return None if w is None else torch.cat([w.chunk(4)[i] for i in (1, 0, 2, 3)])

            return super().run_layer(x, state, tuple(swap(w) for w in weights))

    result = compare(SwappedGates(cfg.input_size, cfg.hidden_size), cfg)
    assert not result.passed and "rel. error" in result.summary()


# --- CUDA: the same matrix on the GPU, cuDNN against the rest -----------------------------
GPU_DTYPES = [torch.float32, torch.float16, torch.bfloat16]


# Generated from what each backend declares (cells.capabilities): a declared device and dtype
# that breaks fails; nothing is skipped by the text of an error. Without a GPU these items are
# deselected at collection (conftest.py), so a CPU machine collects none of them.
CUDA_CASES = [
    pytest.param(
        kind, backend, cfg, dtype, id=f"{backend}-{cfg.label().replace(' ', '-')}-{str(dtype)[6:]}"
    )
    for kind, backend in BACKENDS
    for cfg in matrix(kind)
    for dtype in GPU_DTYPES
    if "cuda" in declared(kind, backend).devices and dtype in declared(kind, backend).dtypes
]


@requires_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("kind, backend, cfg, dtype", CUDA_CASES)
def test_cuda_matches_float64_torch_nn(kind, backend, cfg, dtype):
    assert_equivalent(build(backend, cfg, device="cuda", dtype=dtype), cfg)
