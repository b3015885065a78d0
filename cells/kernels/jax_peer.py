"""`jax`: the stack written with `jax.lax.scan`, jit-compiled by XLA (infer, generate, train).

Per layer and direction: the input projection of all steps as one matmul, then a `lax.scan`
over time carrying (h,) or (h, c); the reverse direction scans with `reverse=True`, which
keeps outputs in time order as torch.nn does. The whole stack is one jitted function per
module configuration (kind, layers, directions, bias, nonlinearity, dropout masks), cached
per process, so a parameter change costs only a copy of the parameters, not a recompile. XLA
compiles per input shape on the first call, which the bench times as `first_call_s`.

Training: a torch.autograd.Function whose forward runs a jitted `jax.vjp` of the stack (the
residuals stay inside XLA's buffers) and whose backward runs the jitted pullback, returning
the gradients of the input, the initial state(s) and every parameter as torch tensors.

float32 only: JAX's default (x64 off) is kept, and float64 modules are refused at
construction rather than flipping `jax_enable_x64` for the whole process.

Threads: XLA reads its CPU thread settings once, when JAX's CPU backend starts. The first
engine built in a process sets `XLA_FLAGS` to torch's thread count
(`--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1` for one thread) unless the
user already set those flags; a later, different thread count gets a warning, as it cannot
be applied. Copies: input, states and parameters are copied into JAX (parameters only when
they change); outputs come back without a copy (DLPack) in inference, copied in training.
"""

from __future__ import annotations

import functools
import os
import warnings
from typing import Any

import torch
from torch import Tensor

from ..base import State
from .peer_base import PeerBase

_PINNED: dict[str, Any] = {"threads": None}


def pin_threads(threads: int) -> int | None:
    """Set XLA's CPU threads before JAX starts its backend; return the count in force (None:
    the user's own XLA_FLAGS decide)."""
    from jax._src import xla_bridge

    if _PINNED["threads"] is None and not xla_bridge.backends_are_initialized():
        flags = os.environ.get("XLA_FLAGS", "")
        if "intra_op_parallelism_threads" in flags or "xla_cpu_multi_thread_eigen" in flags:
            _PINNED["threads"] = "user"
        else:
            eigen = "true" if threads > 1 else "false"
            os.environ["XLA_FLAGS"] = (
                f"{flags} --xla_cpu_multi_thread_eigen={eigen} "
                f"intra_op_parallelism_threads={threads}"
            ).strip()
            _PINNED["threads"] = threads
    elif _PINNED["threads"] is None:
        _PINNED["threads"] = "started"  # JAX was started by someone else: its own defaults
    pinned = _PINNED["threads"]
    if isinstance(pinned, int) and pinned != threads:
        warnings.warn(
            f"jax: XLA's CPU threads were fixed at {pinned} when JAX started; "
            f"{threads} requested now cannot be applied in this process",
            stacklevel=3,
        )
    return pinned if isinstance(pinned, int) else None


@functools.cache
def stack_functions(kind: str, num_layers: int, directions: int, nonlinearity: str | None):
    """Jitted (forward, forward-with-pullback, pullback) of the stack for one configuration."""
    import jax
    import jax.numpy as jnp
    from jax import lax

    act = jax.nn.relu if nonlinearity == "relu" else jnp.tanh

    def step(w_hh, b_hh):
        def lstm(carry, xw):
            h, c = carry
            i, f, g, o = jnp.split(xw + h @ w_hh.T + b_hh, 4, axis=-1)
            c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
            h = jax.nn.sigmoid(o) * jnp.tanh(c)
            return (h, c), h

        def gru(carry, xw):
            (h,) = carry
            xr, xz, xn = jnp.split(xw, 3, axis=-1)
            hr, hz, hn = jnp.split(h @ w_hh.T + b_hh, 3, axis=-1)
            r, z = jax.nn.sigmoid(xr + hr), jax.nn.sigmoid(xz + hz)
            h = (1 - z) * jnp.tanh(xn + r * hn) + z * h
            return (h,), h

        def rnn(carry, xw):
            h = act(xw + carry[0] @ w_hh.T + b_hh)
            return (h,), h

        return {"lstm": lstm, "gru": gru, "rnn": rnn}[kind]

    def stack(params: list, x: Any, states: tuple, masks: list) -> tuple:
        finals: list[list] = [[] for _ in states]
        for layer in range(num_layers):
            outs = []
            for d in range(directions):
                index = layer * directions + d
                w_ih, w_hh, *biases = params[index]
                b_ih, b_hh = biases if biases else (0.0, 0.0)
                xw = x @ w_ih.T + b_ih
                carry, y = lax.scan(
                    step(w_hh, b_hh), tuple(s[index] for s in states), xw, reverse=bool(d)
                )
                outs.append(y)
                for store, s in zip(finals, carry):
                    store.append(s)
            x = outs[0] if directions == 1 else jnp.concatenate(outs, axis=-1)
            if masks and layer < num_layers - 1:
                x = x * masks[layer]
        return (x, *(jnp.stack(f) for f in finals))

    forward = jax.jit(stack)
    with_pullback = jax.jit(lambda *args: jax.vjp(stack, *args))
    pullback = jax.jit(lambda fn, cotangents: fn(cotangents))
    return forward, with_pullback, pullback


def _to_jax(t: Tensor):
    import jax.numpy as jnp

    return jnp.array(t.detach().numpy())  # a copy: JAX's buffers are immutable


class JaxEngine:
    """The jitted functions of the configuration and JAX copies of the current parameters."""

    def __init__(self, module: PeerBase, threads: int, masked: bool) -> None:
        # `masked` needs nothing here: the masks are arguments of the jitted stack
        self.threads = pin_threads(threads)
        D = module.num_directions
        self.forward, self.with_pullback, self.pullback = stack_functions(
            module.kind, module.num_layers, D, module.nonlinearity
        )
        self.params = [
            tuple(_to_jax(w) for w in module.layer_weights(layer, d) if w is not None)
            for layer in range(module.num_layers)
            for d in range(D)
        ]

    def run(self, x: Tensor, states: State, masks: list[Tensor]) -> tuple[Tensor, State]:
        outs = self.forward(
            self.params, _to_jax(x), tuple(_to_jax(s) for s in states), [_to_jax(m) for m in masks]
        )
        outs = [torch.from_dlpack(o) for o in outs]
        return outs[0], tuple(outs[1:])


class _JaxStack(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx, engine: JaxEngine, masks: list[Tensor], n_states: int, x: Tensor, *rest: Tensor
    ):
        states = rest[:n_states]
        outs, ctx.pullback_fn = engine.with_pullback(
            engine.params,
            _to_jax(x),
            tuple(_to_jax(s) for s in states),
            [_to_jax(m) for m in masks],
        )
        ctx.engine, ctx.n_params = engine, len(rest) - n_states
        # copied out: a caller's in-place edit must not reach buffers the pullback may share
        return tuple(torch.tensor(o.__array__()) for o in outs)

    @staticmethod
    def backward(ctx, *grads: Tensor):
        cotangents = tuple(_to_jax(g.contiguous()) for g in grads)
        g_params, g_x, g_states, _ = ctx.engine.pullback(ctx.pullback_fn, cotangents)
        to_torch = lambda a: torch.tensor(a.__array__())  # noqa: E731
        flat = [to_torch(g) for per_direction in g_params for g in per_direction]
        return (None, None, None, to_torch(g_x), *(to_torch(g) for g in g_states), *flat)


class JaxLoop(PeerBase):
    """The stack as jitted jax.lax.scan loops; infer, generate and train."""

    inference_only = False
    requires = ("jax",)
    engine_class = JaxEngine

    def run_with_grad(
        self, engine: JaxEngine, x: Tensor, states: State, masks: list[Tensor]
    ) -> tuple[Tensor, State]:
        outs = _JaxStack.apply(engine, masks, len(states), x, *states, *self.flat_parameters())
        return outs[0], tuple(outs[1:])
