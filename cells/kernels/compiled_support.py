"""What surrounds the `compiled` backend's compiled calls: the pre-packed recurrent GEMM
(float32 CPU) and the logging of compile time.

The packed GEMM. Per step the recurrence multiplies by the same W_hh (forward) / W_hh^T
(backward). oneDNN with the weight reordered once into its blocked layout (what Inductor's own
weight-prepack does for frozen inference graphs) beat aten addmm/mm (MKL) on the d2l-size step
GEMM (32 x 256 @ 256 x 1024; docs/compiled-and-triton.md). A blocked-layout tensor cannot be an
input of a compiled graph, so the compiled steps call `packed_mm(x, b)` (= x @ b, a custom op
taking the dense b) and the loops register the packed copy of b for the duration of one loop
(`packed_for`). The op looks it up by identity and version and falls back to the plain GEMM
when there is none, so a missing registration costs speed, never correctness.
CELLBENCH_COMPILED_PACKED=0 turns it off.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

_PACKED: dict[int, tuple[Tensor, int, Tensor]] = {}  # id(b) -> (b, b._version, packed b^T)
_PACKED_MM: Callable[[Tensor, Tensor], Tensor] | None = None  # the op, once defined
_PACKED_LIB: Any = None
PACKED = os.environ.get("CELLBENCH_COMPILED_PACKED", "1") != "0"


def _packed_mm_impl(x: Tensor, b: Tensor) -> Tensor:
    entry = _PACKED.get(id(b))
    if entry is not None and entry[0] is b and entry[1] == b._version:
        return torch.ops.mkldnn._linear_pointwise(x.contiguous(), entry[2], None, "none", [], "")
    return x.mm(b)


def _packed_mm_fake(x: Tensor, b: Tensor) -> Tensor:
    return x.new_empty((x.size(0), b.size(1)))


def define_packed_mm() -> Callable[[Tensor, Tensor], Tensor] | None:
    """The custom op `cellbench::packed_mm`, defined once per process; None when turned off or
    when oneDNN's packed linear is not in this torch build (then the steps use torch.mm)."""
    global _PACKED_MM, _PACKED_LIB
    if _PACKED_MM is not None or not PACKED:
        return _PACKED_MM
    try:
        if not torch.backends.mkldnn.is_available():
            return None
        torch.ops.mkldnn._linear_pointwise, torch.ops.mkldnn._reorder_linear_weight  # noqa: B018
        if not hasattr(torch.ops.cellbench, "packed_mm"):
            _PACKED_LIB = torch.library.Library("cellbench", "FRAGMENT")
            _PACKED_LIB.define("packed_mm(Tensor x, Tensor b) -> Tensor")
            _PACKED_LIB.impl("packed_mm", _packed_mm_impl, "CPU")
            torch.library.register_fake("cellbench::packed_mm", _packed_mm_fake, lib=_PACKED_LIB)
        _PACKED_MM = torch.ops.cellbench.packed_mm.default
    except (AttributeError, RuntimeError):  # pragma: no cover - depends on the torch build
        _PACKED_MM = None
    return _PACKED_MM


def gemm_for(t: Tensor) -> Callable[[Tensor, Tensor], Tensor] | None:
    """The GEMM for a step on tensors like t: packed_mm for float32 CPU, else None (torch.mm)."""
    if _PACKED_MM is not None and t.device.type == "cpu" and t.dtype == torch.float32:
        return _PACKED_MM
    return None


def with_packed_gemm(step: Callable) -> Callable:
    """step(*args, mm=...) with the GEMM chosen from args[0] (xw_t or dy_t). Decided when
    Dynamo traces (dtype and device are guarded anyway)."""

    def packed_step(*args: Any) -> Any:
        return step(*args, mm=gemm_for(args[0]))

    packed_step.__name__ = packed_step.__qualname__ = step.__name__
    return packed_step


class _Registered:
    """Context: while a loop runs, `packed_mm(x, b)` uses oneDNN's packed copy of b^T."""

    def __init__(self, b: Tensor, batch: int) -> None:
        weight = b.t().contiguous()  # (N, K): x @ b == linear(x, weight)
        self.key = id(b)
        _PACKED[self.key] = (b, b._version, torch.ops.mkldnn._reorder_linear_weight(weight, batch))

    def __enter__(self) -> _Registered:
        return self

    def __exit__(self, *exc: object) -> None:
        _PACKED.pop(self.key, None)


def packed_for(b: Tensor, batch: int) -> _Registered | None:
    """A context registering b's packed copy, or None where packed_mm does not apply to b
    (then the steps' GEMM is torch.mm)."""
    return _Registered(b, batch) if gemm_for(b) is not None else None


# --- compile time ---------------------------------------------------------------------------

_COMPILE_TIMES: dict[str, float] = {}


def graph_count() -> int:
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def no_duck_sizing() -> Any:
    """While compiling, do not assume that two sizes that happen to be equal (say T + 1 and H)
    are always equal: that guess costs a recompile when they differ."""
    from torch.fx.experimental import _config

    return _config.patch(use_duck_shape=False)  # type: ignore[attr-defined]


def log_compile(name: str, args: tuple[Any, ...], before: int, start: float) -> None:
    """Adds the call's wall time under `name[dtype, device]` if it compiled a graph."""
    if graph_count() != before:
        x = args[0]
        key = f"{name}[{x.dtype}, {x.device.type}]"
        _COMPILE_TIMES[key] = _COMPILE_TIMES.get(key, 0.0) + time.perf_counter() - start


def timed(direction: str, variant: str) -> Callable:
    """Call wrapper for the first step of a loop, where compilation happens: compiles without
    duck sizing and logs the wall time if it compiled a graph. (The config patch stays off
    the other steps: active, it costs ~35 us per compiled call.)"""

    def call(fn: Callable, *args: Any) -> Any:
        before, start = graph_count(), time.perf_counter()
        with no_duck_sizing():
            out = fn(*args)
        log_compile(f"{variant}.{direction}", args, before, start)
        return out

    return call


def compile_times() -> dict[str, float]:
    """Seconds spent in calls that compiled, per step function ("lstm.forward[float32, cpu]": s)."""
    return dict(_COMPILE_TIMES)
