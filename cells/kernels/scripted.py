"""`scripted`: the fused loops compiled with TorchScript (torch.jit.script).

Recent torch warns that TorchScript is deprecated; that one warning is silenced here, and
nowhere else. If scripting fails, `unavailable_reason()` says why and the registry lists the
backend as unavailable instead of raising at import.

CPU fusion: TorchScript's TensorExpr fuser is off for CPU by default. Setting
CELLBENCH_SCRIPTED_CPU_FUSION=1 turns it on (torch._C._jit_override_can_fuse_on_cpu) before
the first call, but only where torch was built with LLVM (torch._C._llvm_enabled()): the fuser
generates CPU code with LLVM only. The PyPI/CPU-index wheels (torch 2.13.0+cpu here) are built
without it; there, fused groups fail at run time with "LLVM Backend not found", or, with
must-use-LLVM off, run in TensorExpr's IR interpreter (>100x slower: one d2l-size LSTM
training step took minutes). So without LLVM the switch is ignored with a warning, and
`cpu_fusion_status()` says why. Measurements: docs/compiled-and-triton.md.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable

import torch

from .. import loops
from ..capabilities import Capabilities
from .fused import FusedLoop

_SCRIPTED: dict[str, Callable] = {}
_ERROR: str | None = None


def _script_all() -> None:
    global _ERROR
    if _SCRIPTED or _ERROR:
        return
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", message=r"`torch\.jit\.script` is deprecated", category=DeprecationWarning
            )
            for kind, fn in (
                ("rnn", loops.rnn_loop),
                ("gru", loops.gru_loop),
                ("lstm", loops.lstm_loop),
                ("lstmp", loops.lstmp_loop),
            ):
                _SCRIPTED[kind] = torch.jit.script(fn)
        if os.environ.get("CELLBENCH_SCRIPTED_CPU_FUSION") == "1":
            _enable_cpu_fusion()
    except Exception as exc:  # scripting is optional: report, don't crash the registry
        _SCRIPTED.clear()
        _ERROR = f"torch.jit.script failed: {type(exc).__name__}: {exc}".splitlines()[0]


_FUSION_STATUS = "off (set CELLBENCH_SCRIPTED_CPU_FUSION=1 to try the TensorExpr fuser on CPU)"


def _enable_cpu_fusion() -> None:
    global _FUSION_STATUS
    if not torch._C._llvm_enabled():
        _FUSION_STATUS = (
            "off: CELLBENCH_SCRIPTED_CPU_FUSION=1 ignored, this torch build has no LLVM, "
            "which TensorExpr needs to generate CPU code"
        )
        warnings.warn(f"cells 'scripted': {_FUSION_STATUS}", RuntimeWarning, stacklevel=3)
        return
    torch._C._jit_override_can_fuse_on_cpu(True)
    _FUSION_STATUS = "on (TensorExpr fuser, CPU, LLVM)"


def cpu_fusion_status() -> str:
    """Whether TorchScript's CPU fusion is on for this process, and why not if it is off."""
    return _FUSION_STATUS


def unavailable_reason() -> str | None:
    _script_all()
    return _ERROR


class ScriptedLoop(FusedLoop):
    # TorchScript's interpreter reads tensor data, which torch.func transforms forbid
    capabilities = Capabilities(proj_size=True, vmap=False)
    unavailable_reason = staticmethod(unavailable_reason)

    @property
    def loop_functions(self) -> dict[str, Callable]:  # type: ignore[override]
        # Graphs the profiling executor optimised for autograd save tensors for backward even
        # under inference_mode, which refuses that: run the same loops eagerly there.
        if torch.is_inference_mode_enabled():
            return FusedLoop.loop_functions
        _script_all()  # a module unpickled in a fresh process can get here before the registry
        return _SCRIPTED
