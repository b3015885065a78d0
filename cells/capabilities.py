"""What each backend supports beyond the equivalence suite, declared once and tested.

A backend declares a `Capabilities` as the class attribute `capabilities` (RecurrentBase's
defaults describe what the shared base gives every `run_layer` backend). Backends whose files
declare nothing are listed in `DECLARED`, keyed by registry name. The shared base refuses, with
a clear message, whatever a backend does not declare (packed input, proj_size, a dtype, torch.func
transforms, ONNX export, torch.jit.script), and `tests/test_capabilities.py` checks every
declared capability numerically and every refusal's message, so a backend that loses a
capability fails a test instead of silently degrading.

`python -m cells.capabilities --markdown` prints the matrix published in docs/capabilities.md;
the test suite checks that the committed file is in sync.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Capabilities:
    """Integrations a backend supports. Devices and dtypes list what the time loop runs on."""

    devices: tuple[str, ...] = ("cpu", "cuda")
    dtypes: tuple[torch.dtype, ...] = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
    packed: bool = True  # PackedSequence input: the base runs it through run_layer
    proj_size: bool = False  # LSTM with projections: run_layer must apply weight_hr
    compile_in_model: bool = True  # torch.compile of a model that contains the module
    vmap: bool = True  # torch.func transforms (vmap, grad, jacrev)
    double_backward: bool = True  # autograd.grad(..., create_graph=True), then again
    script_in_model: bool = False  # torch.jit.script of a model that contains the module
    onnx_export: bool = False  # torch.onnx.export of a model that contains the module
    meta_init: bool = True  # device='meta', then to_empty() and reset_parameters()
    serialization: bool = True  # deepcopy, pickle, torch.save + torch.load in a fresh process

    def refuses(self, what: str) -> bool:
        return not getattr(self, what)


BASE = Capabilities()
_CPU_FLOAT = (torch.float64, torch.float32)


# what a hand-written autograd.Function around kernels outside torch cannot offer
_REFUSED_BY_OWN_BACKWARD = ("vmap", "double_backward", "compile_in_model", "meta_init")


def _kernels_with_own_backward(
    devices: tuple[str, ...], dtypes: tuple[torch.dtype, ...]
) -> Capabilities:
    """No torch.func, no double backward, no torch.compile of a model through the kernels, no
    meta-device construction."""
    refused: dict[str, Any] = dict.fromkeys(_REFUSED_BY_OWN_BACKWARD, False)
    return dataclasses.replace(Capabilities(devices=devices, dtypes=dtypes), **refused)


# Backends whose own files declare nothing (other owners); keyed by registry name.
DECLARED: dict[str, Capabilities] = {
    # numpy kernels (numba) and a Triton kernel, each with a hand-written backward
    "numba": _kernels_with_own_backward(("cpu",), _CPU_FLOAT),
    "triton": _kernels_with_own_backward(("cuda",), (torch.float32,)),
    # its own torch.compile'd steps and a hand-written backward
    "compiled": Capabilities(dtypes=_CPU_FLOAT, vmap=False, double_backward=False),
}

# Column -> (header, what a ✔ means). The matrix and the docs use this order.
COLUMNS: dict[str, tuple[str, str]] = {
    "compile_in_model": (
        "compile in a model",
        "torch.compile (aot_eager) of a model holding the module: "
        "output and gradients equal eager's; *graph break*: "
        "Dynamo does not trace the module, the base runs it "
        "eagerly between two graphs",
    ),
    "vmap": ("vmap", "torch.func.vmap over unbatched sequences equals the batched call"),
    "double_backward": ("double backward", "gradient of a gradient equals torch.nn's (float64)"),
    "script_in_model": (
        "jit.script in a model",
        "torch.jit.script of a model holding the module runs and equals eager",
    ),
    "onnx_export": ("ONNX export", "torch.onnx.export, run by onnxruntime, equals eager"),
    "meta_init": (
        "meta-device init",
        "device='meta' + to_empty() + reset_parameters() gives a working module",
    ),
    "serialization": (
        "deepcopy / pickle / torch.save",
        "a torch.save'd module loads in a fresh process and gives the same output",
    ),
    "bf16": ("CPU bf16", "bfloat16 module on CPU within tolerances.py of float64 torch.nn"),
    "fp16": ("CPU fp16", "float16 module on CPU within tolerances.py of float64 torch.nn"),
    "packed": ("packed", "PackedSequence in, PackedSequence out, equal to float64 torch.nn"),
    "proj_size": ("proj_size", "LSTM with projections equal to float64 torch.nn"),
}


_RECURRENT_BASE: type | None = None


def capabilities_of(cls: type, backend: str | None = None) -> Capabilities:
    """The capabilities `cls` declares: its own attribute (or a base's below RecurrentBase's),
    else the DECLARED entry for its registry name, else the shared defaults."""
    global _RECURRENT_BASE
    if _RECURRENT_BASE is None:  # imported once: this runs at every forward call
        from .base import RecurrentBase

        _RECURRENT_BASE = RecurrentBase
    for klass in cls.__mro__:
        if klass is _RECURRENT_BASE:
            break
        if "capabilities" in klass.__dict__:
            return klass.__dict__["capabilities"]
    name = str(backend or getattr(cls, "backend", ""))
    declared = DECLARED.get(name)
    return declared if declared is not None else getattr(cls, "capabilities", BASE)


def supports(caps: Capabilities, column: str) -> bool:
    """Whether one matrix column is ✔ for these capabilities (CPU dtypes included)."""
    if column in ("bf16", "fp16"):
        dtype = torch.bfloat16 if column == "bf16" else torch.float16
        return "cpu" in caps.devices and dtype in caps.dtypes
    return bool(getattr(caps, column))


def backends_with(column: str, kind: str = "lstm") -> list[str]:
    """Registered backends of `kind` that support `column` (for refusal messages)."""
    from . import registry

    return [
        name
        for name in registry.backends(kind)
        if supports(capabilities_of(type_of(kind, name), name), column)
    ]


def type_of(kind: str, backend: str) -> type:
    from . import registry

    factory = registry.get(kind, backend)
    return factory if isinstance(factory, type) else type(factory)


def declared(kind: str, backend: str) -> Capabilities:
    """A built-in backend's declaration, read from its class even where it cannot run here."""
    import importlib

    from . import registry

    if backend not in registry.BUILTIN:
        return capabilities_of(type_of(kind, backend), backend)
    module_name, attribute = registry.BUILTIN[backend].split(":")
    try:
        target = getattr(importlib.import_module(module_name), attribute)
    except ImportError:
        return DECLARED.get(backend, BASE)
    if isinstance(target, dict):
        target = target[kind]
    return capabilities_of(target, backend)


def matrix(kind: str = "lstm") -> dict[str, dict[str, bool]]:
    """backend -> column -> supported, for every built-in backend (available here or not)."""
    from . import registry

    return {
        name: {column: supports(declared(kind, name), column) for column in COLUMNS}
        for name in registry.BUILTIN
    }


def markdown(kind: str = "lstm") -> str:
    """The capability matrix as a markdown table, with the meaning of each column."""
    headers = [header for header, _ in COLUMNS.values()]
    lines = ["| backend | " + " | ".join(headers) + " |", "|---|" + "---|" * len(headers)]
    for name, row in matrix(kind).items():
        lines.append(f"| `{name}` | " + " | ".join(_cell(c, row[c]) for c in COLUMNS) + " |")
    legend = [f"- **{header}**: {meaning}." for header, meaning in COLUMNS.values()]
    return "\n".join(lines + [""] + legend) + "\n"


def _cell(column: str, supported: bool) -> str:
    if column == "compile_in_model" and not supported:
        return "✔ graph break"  # the base runs the module outside Dynamo's graph
    return "✔" if supported else "refused"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m cells.capabilities", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--markdown", action="store_true", help="print the capability matrix as markdown"
    )
    args = parser.parse_args(argv)
    if args.markdown:
        print(markdown(), end="")
    else:
        for name, row in matrix().items():
            print(name, " ".join(c for c, ok in row.items() if ok))


if __name__ == "__main__":
    main()
