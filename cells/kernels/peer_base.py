"""What the peer backends (`ort`, `openvino`, `jax`) share.

A peer runs another runtime on the module's own torch parameters. It keeps torch.nn's
parameters, so state_dict moves between it and every other backend, and builds the runtime's
engine from them on first use. The engine is cached under a key made of each parameter's data
pointer and `_version` counter (bumped by every in-place write: an optimizer step,
`load_state_dict`, `with torch.no_grad(): p.add_(...)`), the thread count and whether dropout
masks are fed; any change rebuilds it.

Inter-layer dropout (training mode, dropout > 0) is applied inside the engine by multiplying
with masks drawn from torch's generator, so `torch.manual_seed` governs it as for torch.nn.

A peer class names the packages it needs (`requires`) and its engine (`engine_class`); its
`unavailable_reason()` names whichever of those packages is missing.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..base import RecurrentBase, State
from ..capabilities import Capabilities
from ..errors import Unsupported


def missing_packages(*packages: str) -> str | None:
    """Why a peer cannot run here: the packages of `packages` that are not installed, or None."""
    absent = [p for p in packages if importlib.util.find_spec(p) is None]
    if absent:
        return f"needs {' and '.join(absent)}: pip install cellbench[peers]"
    return None


def contiguous(t: Tensor) -> Tensor:
    return t if t.is_contiguous() else t.contiguous()


def empty_outputs(
    dims: tuple[int, int, int], x: Tensor, n_states: int
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """float32 output (T, B, D*H) and final states (L*D, B, H) for a runtime to write into;
    dims = (layers L, directions D, hidden H), x (T, B, I)."""
    L, D, H = dims
    T, B = x.shape[:2]
    return torch.empty(T, B, D * H), tuple(torch.empty(L * D, B, H) for _ in range(n_states))


class PeerBase(RecurrentBase):
    """A RecurrentBase whose whole stack runs in a peer runtime (subclasses: `requires`,
    `engine_class`)."""

    # float32 on the CPU, the module's own forward only: no packed input, no torch.func,
    # torch.compile, jit.script or ONNX export through it, no meta-device construction
    capabilities: ClassVar[Any] = Capabilities(
        devices=("cpu",),
        dtypes=(torch.float32,),
        packed=False,
        compile_in_model=False,
        vmap=False,
        double_backward=False,
        script_in_model=False,
        onnx_export=False,
        meta_init=False,
    )
    inference_only: ClassVar[bool] = True  # False where the peer computes gradients too
    requires: ClassVar[tuple[str, ...]] = ()  # the packages the runtime needs
    # called as engine_class(module, threads, masked): an object with run(x, states, masks)
    engine_class: ClassVar[Callable[..., Any]]

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return missing_packages(*cls.requires)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._engine: tuple[tuple, Any] | None = None
        self.check_dtype_device()

    # pickling and deepcopy: the engine is native state, rebuilt on first use
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_engine"] = None
        return state

    def check_dtype_device(self) -> None:
        param = next(self.parameters())
        if param.dtype != torch.float32:
            raise TypeError(
                f"backend {self.backend!r} runs float32 only, got parameters of dtype "
                f"{param.dtype} (float64 and half precision are not offered; use "
                ".float() or another backend)"
            )
        if param.device.type != "cpu":
            raise Unsupported(
                f"backend {self.backend!r} runs on the CPU only, got parameters on {param.device}"
            )

    def flat_parameters(self) -> list[Tensor]:
        """Per layer and direction: w_ih, w_hh (, b_ih, b_hh), torch.nn's order."""
        return [
            w
            for layer in range(self.num_layers)
            for d in range(self.num_directions)
            for w in self.layer_weights(layer, d)
            if w is not None
        ]

    def engine(self, masked: bool) -> Any:
        """The engine for the current parameters, thread count and dropout use (cached)."""
        threads = torch.get_num_threads()
        key = (tuple((p.data_ptr(), p._version) for p in self.parameters()), threads, masked)
        if self._engine is None or self._engine[0] != key:
            self._engine = None  # free the old one before building
            self._engine = (key, self.build_engine(threads, masked))
        return self._engine[1]

    def build_engine(self, threads: int, masked: bool) -> Any:
        return self.engine_class(self, threads, masked)

    def dims(self) -> tuple[int, int, int]:
        """(layers, directions, hidden size): the shape of the stack's outputs."""
        return self.num_layers, self.num_directions, self.hidden_size

    def dropout_masks(self, x: Tensor) -> list[Tensor]:
        """Masks between layers, as nn.functional.dropout draws them (scaled by 1 / (1 - p))."""
        if not (self.training and self.dropout > 0 and self.num_layers > 1):
            return []
        keep = 1.0 - self.dropout
        shape = (x.size(0), x.size(1), self.hidden_size * self.num_directions)
        return [
            torch.empty(shape, dtype=x.dtype).bernoulli_(keep).div_(keep)
            if keep > 0
            else torch.zeros(shape, dtype=x.dtype)
            for _ in range(self.num_layers - 1)
        ]

    def needs_grad(self, x: Tensor, states: State) -> bool:
        return torch.is_grad_enabled() and (
            x.requires_grad
            or any(s.requires_grad for s in states)
            or any(p.requires_grad for p in self.parameters())
        )

    def run_stack(
        self, x: Tensor, states: State, lengths: list[int] | None = None
    ) -> tuple[Tensor, State]:
        if lengths is not None:  # capabilities say packed=False, so the base never passes it
            raise Unsupported(f"backend {self.backend!r} does not accept PackedSequence input")
        self.check_dtype_device()
        masks = self.dropout_masks(x)
        engine = self.engine(bool(masks))
        if not self.needs_grad(x, states):
            return engine.run(x, states, masks)
        if self.inference_only:
            # Forward works (a drop-in may be called outside no_grad); backward refuses.
            message = (
                f"{self.backend} supports inference only (infer, generate); use jax, numba "
                "or native for training"
            )
            outs = _Refused.apply(
                lambda: _flatten(engine.run(x, states, masks)),
                message,
                x,
                *states,
                *self.flat_parameters(),
            )
            return outs[0], tuple(outs[1:])
        return self.run_with_grad(engine, x, states, masks)

    def run_with_grad(
        self, engine: Any, x: Tensor, states: State, masks: list[Tensor]
    ) -> tuple[Tensor, State]:
        raise NotImplementedError


def _flatten(result: tuple[Tensor, State]) -> tuple[Tensor, ...]:
    return (result[0], *result[1])


class _Refused(torch.autograd.Function):
    """Outputs of an inference-only runtime: backward raises Unsupported, never a silent gap."""

    @staticmethod
    def forward(ctx, run: Callable[[], tuple[Tensor, ...]], message: str, *inputs: Tensor):
        ctx.message = message
        return run()

    @staticmethod
    def backward(ctx, *grads: Tensor):
        raise Unsupported(ctx.message)
