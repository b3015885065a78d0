"""Drop-in behaviour: constructor, state_dict, initialisation, errors, dropout, registry."""

from __future__ import annotations

import re
import warnings

import pytest
import torch
from torch import nn

import cells
from cells.kinds import KINDS
from cells.loops import lstm_loop

BACKENDS = [(kind, backend) for kind in KINDS for backend in cells.backends(kind)]
TORCH_NN = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}
KW = dict(num_layers=2, bidirectional=True, batch_first=True)


def make(kind, backend, input_size=5, hidden_size=7, **kw):
    return cells.create(kind, backend, input_size, hidden_size, **kw)


def state_tuple(kind, shape):
    states = tuple(torch.randn(shape) for _ in range(cells.spec(kind).states))
    return states if kind == "lstm" else states[0]


# --- parameters and state_dict ---------------------------------------------------------
@pytest.mark.parametrize("kind, backend", BACKENDS)
def test_same_parameter_names_shapes_and_init_as_torch_nn(kind, backend):
    torch.manual_seed(3)
    ours = make(kind, backend, **KW)
    torch.manual_seed(3)
    ref = TORCH_NN[kind](5, 7, **KW)
    assert [(n, p.shape) for n, p in ours.named_parameters()] == [
        (n, p.shape) for n, p in ref.named_parameters()
    ]
    for (name, a), (_, b) in zip(ours.named_parameters(), ref.named_parameters()):
        assert torch.equal(a, b), f"{name} initialised differently from torch.nn"


@pytest.mark.parametrize("kind, backend", BACKENDS)
def test_state_dict_round_trips_with_torch_nn_and_every_backend(kind, backend):
    ours = make(kind, backend, **KW)
    ref = TORCH_NN[kind](5, 7, **KW)
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(3, 4, 5)
    ours.eval(), ref.eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(x)[0], ref(x)[0], rtol=1e-5, atol=1e-6)
    fresh = TORCH_NN[kind](5, 7, **KW)
    fresh.load_state_dict(ours.state_dict(), strict=True)
    for other in cells.backends(kind):
        make(kind, other, **KW).load_state_dict(ours.state_dict(), strict=True)


@pytest.mark.parametrize("kind, backend", BACKENDS)
def test_return_structure_matches_torch_nn(kind, backend):
    ours, ref = make(kind, backend, num_layers=2), TORCH_NN[kind](5, 7, num_layers=2)
    for x in (torch.randn(4, 3, 5), torch.randn(4, 5)):  # batched and unbatched
        a, b = ours(x), ref(x)
        assert a[0].shape == b[0].shape
        if kind == "lstm":
            assert isinstance(a[1], tuple) and [t.shape for t in a[1]] == [t.shape for t in b[1]]
        else:
            assert isinstance(a[1], torch.Tensor) and a[1].shape == b[1].shape


# --- bad input: the same clear errors on every backend ----------------------------------
@pytest.mark.parametrize("kind, backend", BACKENDS)
def test_wrong_feature_size_names_both_sizes(kind, backend):
    module = make(kind, backend, input_size=28, hidden_size=7)
    with pytest.raises(RuntimeError, match=r"Expected 28, got 10"):
        module(torch.randn(4, 3, 10))


@pytest.mark.parametrize("kind, backend", BACKENDS)
def test_wrong_rank_is_refused(kind, backend):
    module = make(kind, backend)
    for bad in (torch.randn(5), torch.randn(2, 3, 4, 5)):
        with pytest.raises(ValueError, match=r"Expected input to be 2D or 3D, got \dD"):
            module(bad)


@pytest.mark.parametrize("kind, backend", BACKENDS)
def test_hx_of_wrong_shape_is_refused(kind, backend):
    module = make(kind, backend, num_layers=2)
    x = torch.randn(4, 3, 5)
    with pytest.raises(RuntimeError, match=re.escape("size (2, 3, 7), got (1, 3, 7)")):
        module(x, state_tuple(kind, (1, 3, 7)))
    with pytest.raises(RuntimeError, match="should also be 3-D but got 2-D"):
        module(x, state_tuple(kind, (2, 7)))
    with pytest.raises(RuntimeError, match="should also be 2-D but got 3-D"):
        module(torch.randn(4, 5), state_tuple(kind, (2, 1, 7)))


@pytest.mark.parametrize("kind, backend", BACKENDS)
def test_dtype_and_device_mismatches_are_refused(kind, backend):
    module = make(kind, backend)
    with pytest.raises(
        TypeError, match="input must have the type torch.float32.*got type torch.float64"
    ):
        module(torch.randn(4, 3, 5, dtype=torch.float64))
    with pytest.raises(TypeError, match="must have the same dtype as input"):
        module(
            torch.randn(4, 3, 5),
            tuple(s.double() for s in state_tuple("lstm", (1, 3, 7)))
            if kind == "lstm"
            else torch.randn(1, 3, 7, dtype=torch.float64),
        )
    with pytest.raises(RuntimeError, match="input is on meta, but the parameters are on cpu"):
        module(torch.randn(4, 3, 5, device="meta"))


def test_lstm_needs_a_pair_of_states():
    for backend in cells.backends("lstm"):
        with pytest.raises(TypeError, match=r"tuple \(h_0, c_0\)"):
            make("lstm", backend)(torch.randn(4, 3, 5), torch.randn(1, 3, 7))


@pytest.mark.parametrize("kind, backend", BACKENDS)
def test_empty_sequence_is_refused(kind, backend):
    with pytest.raises(ValueError, match="sequence length must be at least 1"):
        make(kind, backend)(torch.randn(0, 3, 5))


@pytest.mark.parametrize("kind", KINDS)
def test_bad_constructor_arguments(kind):
    with pytest.raises(ValueError, match="hidden_size must be an integer >= 1, got 0"):
        cells.create(kind, "fused", 5, 0)
    with pytest.raises(ValueError, match="dropout should be a number in range"):
        cells.create(kind, "fused", 5, 7, dropout=1.5)
    with pytest.raises(TypeError, match="input_size should be of type int"):
        cells.create(kind, "fused", 5.0, 7)
    if kind == "rnn":
        with pytest.raises(ValueError, match="Unknown nonlinearity 'sigmoid'"):
            cells.create(kind, "fused", 5, 7, nonlinearity="sigmoid")
    else:
        with pytest.raises(TypeError, match="nonlinearity applies only to kind 'rnn'"):
            cells.create(kind, "fused", 5, 7, nonlinearity="relu")


def test_proj_size_is_refused_outside_native():
    with pytest.raises(ValueError, match="proj_size=3 is not supported"):
        cells.create("lstm", "numba", 5, 7, proj_size=3)
    native = cells.create("lstm", "native", 5, 7, proj_size=3)
    out, (h, c) = native(torch.randn(4, 2, 5))
    assert out.shape == (4, 2, 3) and h.shape == (1, 2, 3) and c.shape == (1, 2, 7)


# --- dropout ------------------------------------------------------------------------------
@pytest.mark.parametrize("kind, backend", BACKENDS)
def test_dropout_applies_between_layers_only_in_training(kind, backend):
    module = make(kind, backend, num_layers=2, dropout=0.5)
    x = torch.randn(6, 3, 5)
    module.eval()
    with torch.no_grad():
        a, b = module(x)[0], module(x)[0]
    assert torch.equal(a, b)
    module.train()
    torch.manual_seed(1)
    with torch.no_grad():
        c = module(x)[0]
    assert not torch.allclose(a, c), "dropout had no effect in training mode"


def test_dropout_with_one_layer_warns_like_torch_nn():
    with pytest.warns(UserWarning, match="non-zero dropout expects num_layers greater than 1"):
        cells.create("gru", "fused", 5, 7, dropout=0.2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cells.create("gru", "fused", 5, 7, num_layers=2, dropout=0.2)


# --- the registry ---------------------------------------------------------------------
def test_unknown_kind_and_backend_list_valid_names():
    with pytest.raises(
        ValueError, match="unknown cell kind 'transformer'; expected one of rnn, gru, lstm"
    ):
        cells.create("transformer", "fused", 5, 7)
    with pytest.raises(
        ValueError, match=r"unknown backend 'nope' for 'gru'; available: naive, fused"
    ):
        cells.create("gru", "nope", 5, 7)


def test_register_a_third_party_backend():
    class Doubled(cells.RecurrentBase):  # a one-file backend: only the time loop
        def run_layer(self, x, state, weights):
            w_ih, w_hh, b_ih, b_hh = weights
            return lstm_loop(x, state[0], state[1], w_ih, w_hh, b_ih, b_hh)[0], state

    cells.register("lstm", "third-party", Doubled)
    try:
        assert "third-party" in cells.backends("lstm")
        module = cells.create("lstm", "third-party", 5, 7, num_layers=2)
        assert type(module).kind == "lstm" and module(torch.randn(3, 2, 5))[0].shape == (3, 2, 7)
        with pytest.raises(ValueError, match="already registered"):
            cells.register("lstm", "third-party", Doubled)
    finally:
        cells.unregister("lstm", "third-party")
    assert "third-party" not in cells.backends("lstm")


def test_unavailable_backends_are_listed_with_a_reason(monkeypatch):
    from cells import registry

    monkeypatch.setitem(registry.BUILTIN, "ghost", "cells.kernels.does_not_exist:Ghost")
    monkeypatch.setattr(registry, "_table", {k: dict(v) for k, v in registry._table.items()})
    reasons = cells.unavailable("lstm")
    assert "ghost" in reasons and "does_not_exist" in reasons["ghost"]
    assert "ghost" not in cells.backends("lstm")
    with pytest.raises(RuntimeError, match="backend 'ghost' is unavailable"):
        cells.create("lstm", "ghost", 5, 7)
    registry._loaded_builtin.discard("ghost")


def test_the_four_builtin_backends_exist_for_every_kind():
    for kind in KINDS:
        assert {"naive", "fused", "scripted", "native"} <= set(cells.backends(kind))


def test_forward_flops_by_hand():
    # LSTM, I=28, H=256, B=32, T=35: 2 * 4 * 32 * 256 * (28 + 256) * 35
    assert cells.forward_flops("lstm", 28, 256, 32, 35) == 2 * 4 * 32 * 256 * 284 * 35
    # 2 layers, bidirectional GRU: layer 1 sees 2H inputs
    per_step = 2 * 3 * 4 * 8 * ((5 + 8) + (16 + 8)) * 2
    assert (
        cells.forward_flops("gru", 5, 8, 4, 10, num_layers=2, bidirectional=True) == per_step * 10
    )


@pytest.mark.parametrize("kind, backend", BACKENDS)
def test_modules_pickle_and_deepcopy(kind, backend):
    import copy
    import pickle

    module = make(kind, backend).eval()
    x = torch.randn(3, 2, 5)
    with torch.no_grad():
        expected = module(x)[0]
        for clone in (pickle.loads(pickle.dumps(module)), copy.deepcopy(module)):
            torch.testing.assert_close(clone(x)[0], expected, rtol=0, atol=0)


@pytest.mark.parametrize(
    "backend", [b for b in ("fused", "compiled") if b in cells.backends("gru")]
)
def test_parametrized_weight_is_used(backend):
    """The base reads weights from `_parameters` first (a fast path); a parametrized weight
    (a property, no longer in `_parameters`) is still read through getattr, with its value."""
    import torch.nn.utils.parametrize as parametrize

    class Half(nn.Module):
        def forward(self, w):
            return 0.5 * w

    torch.manual_seed(0)
    module = cells.create("gru", backend, 3, 4)
    reference = nn.GRU(3, 4)
    reference.load_state_dict(module.state_dict())
    parametrize.register_parametrization(module, "weight_hh_l0", Half())
    with torch.no_grad():
        reference.weight_hh_l0.mul_(0.5)
    for x in (torch.randn(5, 2, 3), torch.randn(1, 1, 3)):  # the general path, generation
        with torch.no_grad():
            torch.testing.assert_close(module(x)[0], reference(x)[0])
