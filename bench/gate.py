"""The correctness gate: every module is checked at its case's shape before it is timed.

A benchmark of correct kernels must not time what it has not checked: a backend that returns
the wrong shape, NaN, or another function would otherwise be ranked by its speed. The check
compares the module with torch.nn in float64 on the same weights (cells.equivalence), within
cells/tolerances.py's tolerance for its dtype:
  train     outputs, final states and the gradients of every parameter, the input and the
            initial states, with random upstream gradients (cells.equivalence.compare)
  infer     outputs and final states under no_grad, in eval mode
  generate  the outputs of the step-by-step loop the workload times (batch 1, state carried)
It runs once per module, never per round; its cost goes into the record as `check_s`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from cells.equivalence import ShapeMismatch
from cells.errors import Unsupported


@dataclass
class Verdict:
    passed: bool
    reason: str  # '' when passed
    worst: float | None  # worst relative error / tolerance
    seconds: float


def _reference(module: nn.Module, kind: str) -> nn.Module:
    from cells.equivalence import Config, reference_module

    # torch.nn's constructor arguments, which every backend keeps as attributes
    shape: Any = module
    ref = reference_module(
        Config(
            kind,
            int(shape.input_size),
            int(shape.hidden_size),
            num_layers=int(shape.num_layers),
            bias=bool(shape.bias),
            bidirectional=bool(shape.bidirectional),
            nonlinearity=getattr(module, "nonlinearity", None) or "tanh",
        )
    )
    ref.load_state_dict(
        {k: v.detach().to(torch.float64).cpu() for k, v in module.state_dict().items()}
    )
    return ref.eval()


def _forward_errors(module: nn.Module, case, tol: float) -> list:
    """(name, rel error) of the forward pass of `case`'s mode against float64 torch.nn."""
    from cells.equivalence import _relative, _states, forward_pair

    ref = _reference(module, case.kind)
    param = next(module.parameters())
    gen = torch.Generator().manual_seed(1)
    batch = 1 if case.mode == "generate" else case.batch
    x = torch.randn(case.seq_len, batch, case.input_size, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        ref_out, ref_final = ref(x)
        xc = x.to(device=param.device, dtype=param.dtype)
        if case.mode == "generate":
            state, steps = None, []
            for t in range(case.seq_len):
                y, state = forward_pair(module, xc[t : t + 1], state)
                steps.append(y)
            out, final = torch.cat(steps), state
        else:
            out, final = forward_pair(module, xc)
    names = ["output", "h_n", "c_n"]
    pairs = list(zip(names, [out, *_states(final)], [ref_out, *_states(ref_final)]))
    errors = []
    for name, got, want in pairs:
        if tuple(got.shape) != tuple(want.shape):
            raise ShapeMismatch(
                f"{name} has shape {tuple(got.shape)}, torch.nn gives {tuple(want.shape)}"
            )
        errors.append(_relative(got, want, name, tol))
    return errors


def check(module: nn.Module, case) -> Verdict:
    """Check `module` (built for `case`) in `case.mode`; never raises for the module's sake."""
    from cells.equivalence import Config, compare
    from cells.tolerances import tolerance

    start = time.perf_counter()
    param = next(module.parameters(), None)
    if param is None:
        return Verdict(False, "the module has no parameters", None, time.perf_counter() - start)
    tol = tolerance(param.dtype)
    was_training = module.training
    try:
        if case.mode == "train":
            config = Config(
                case.kind,
                case.input_size,
                case.hidden_size,
                num_layers=case.num_layers,
                batch=case.batch,
                seq_len=case.seq_len,
                nonlinearity=getattr(module, "nonlinearity", None) or "tanh",
            )
            result = compare(module, config, seed=1)
            if result.problem or result.missing_gradients:
                reason = result.problem or f"no gradient for {', '.join(result.missing_gradients)}"
                return Verdict(
                    False, f"train check failed: {reason}", None, time.perf_counter() - start
                )
            errors = result.errors
        else:
            module.eval()
            errors = _forward_errors(module, case, tol)
    except ShapeMismatch as exc:
        return Verdict(False, f"{case.mode} check failed: {exc}", None, time.perf_counter() - start)
    except Unsupported:
        raise  # a declared limit, not a wrong result: the caller records it as unsupported
    except Exception as exc:  # noqa: BLE001 - whatever the module raises is its verdict
        text = str(exc).strip().splitlines()
        return Verdict(
            False,
            f"{case.mode} check failed: {type(exc).__name__}: {text[0] if text else ''}",
            None,
            time.perf_counter() - start,
        )
    finally:
        module.train(was_training)
        module.zero_grad(set_to_none=True)
    worst = max(errors, key=lambda e: (e.rel_error != e.rel_error, e.rel_error / e.tolerance))
    ratio = worst.rel_error / worst.tolerance
    if not worst.passed:
        what = (
            "is not finite"
            if ratio != ratio
            else f"differs from float64 torch.nn by {worst.rel_error:.2e} (tolerance {worst.tolerance:.0e})"
        )
        return Verdict(
            False,
            f"{case.mode} check failed: {worst.name} {what}",
            ratio if ratio == ratio else None,
            time.perf_counter() - start,
        )
    return Verdict(True, "", ratio, time.perf_counter() - start)
