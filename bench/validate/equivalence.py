"""Equivalence: the candidate against float64 torch.nn over a matrix of configurations.

Every check goes through cells.equivalence.compare (output, final states, and the gradients of
every parameter, the input and hx, norm-wise, with the tolerance of cells/tolerances.py). A
constructor that raises for an option marks that option "unsupported" rather than failed,
unless the option is required.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection
from dataclasses import dataclass

import torch
from torch import nn

from bench.contract_support import threads
from cells.equivalence import Config, Result, compare
from cells.matrix import low_precision_matrix, matrix
from cells.tolerances import tolerance

# Constructor options a candidate may leave unsupported (it must raise at construction).
OPTIONS = ("multilayer", "bidirectional", "batch_first", "no-bias", "relu")
HALF = {"float16": torch.float16, "bfloat16": torch.bfloat16}
# The one-option configuration that tells which option of a failing construction is at fault.
SINGLE_OPTION: dict[str, dict] = {
    "multilayer": dict(num_layers=2),
    "bidirectional": dict(bidirectional=True),
    "batch_first": dict(batch_first=True),
    "no-bias": dict(bias=False),
    "relu": dict(nonlinearity="relu"),
}


def config_options(config: Config) -> frozenset[str]:
    """The optional constructor features a configuration uses."""
    used = {
        option
        for option, on in (
            ("multilayer", config.num_layers > 1),
            ("bidirectional", config.bidirectional),
            ("batch_first", config.batch_first),
            ("no-bias", not config.bias),
            ("relu", config.kind == "rnn" and config.nonlinearity == "relu"),
        )
        if on
    }
    return frozenset(used)


@dataclass
class Check:
    """One equivalence check: a configuration in one dtype on one device."""

    config: Config
    dtype: str
    device: str
    status: str = "pass"  # pass | fail | unsupported | skipped
    reason: str = ""
    result: Result | None = None

    def where(self) -> str:
        """The dtype, and the device unless it is the CPU."""
        return self.dtype + ("" if self.device == "cpu" else " " + self.device)

    def label(self) -> str:
        return f"{self.config.label()} [{self.where()}]"


def build(factory: Callable[..., nn.Module], config: Config, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    module = factory(config.input_size, config.hidden_size, **config.nn_kwargs())
    if not isinstance(module, nn.Module):
        raise TypeError(f"the factory returned a {type(module).__name__}, not an nn.Module")
    return module


def unsupported_options(factory: Callable[..., nn.Module], config: Config) -> frozenset[str]:
    """Which of a failing configuration's options raise at construction on their own."""
    culprits = set()
    for option in config_options(config):
        try:
            build(factory, Config(config.kind, **SINGLE_OPTION[option]), seed=0)
        except Exception:
            culprits.add(option)
    return frozenset(culprits)


def _first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0]


def check_one(
    factory: Callable[..., nn.Module],
    config: Config,
    dtype: torch.dtype,
    device: str,
    required: Collection[str],
    seed: int = 0,
) -> Check:
    """Build the candidate for `config`, move it to dtype and device, compare it with torch.nn."""
    name = str(dtype).replace("torch.", "")
    check = Check(config, name, device)
    options = config_options(config)
    try:
        module = build(factory, config, seed)
    except Exception as exc:
        message = _first_line(exc)
        culprits = unsupported_options(factory, config) or options
        needed = sorted(culprits & set(required))
        if not options:
            check.status, check.reason = "fail", f"construction raised {message}"
        elif needed:
            check.status = "fail"
            check.reason = (
                f"required option {', '.join(needed)} is unsupported (construction raised "
                f"{message})"
            )
        else:
            check.status, check.reason = "unsupported", f"{', '.join(sorted(culprits))}: {message}"
        return check
    try:
        module = module.to(device=device, dtype=dtype)
    except Exception as exc:
        check.status, check.reason = "fail", f"cannot move to {device}/{name}: {_first_line(exc)}"
        return check
    result = compare(module, config, seed=seed, tol=tolerance(dtype))
    check.result = result
    if result.passed:
        return check
    if name in HALF and result.problem.startswith("raised") and name not in required:
        check.status, check.reason = "unsupported", f"{name}: {result.problem}"
        return check
    check.status, check.reason = "fail", failure_detail(result)
    return check


def failure_detail(result: Result, most: int = 3) -> str:
    """One line: the problem, or the tensors without gradient, then the worst errors."""
    if result.problem:
        return result.problem
    parts = (
        [f"no gradient for {', '.join(result.missing_gradients)}"]
        if result.missing_gradients
        else []
    )
    most += len(parts)
    failed = sorted(
        (e for e in result.errors if not e.passed),
        key=lambda e: -(e.rel_error / e.tolerance) if not math.isnan(e.rel_error) else -math.inf,
    )
    parts += [
        f"{e.name} rel. error {e.rel_error:.2e} > {e.tolerance:.0e} (max abs "
        f"{e.max_abs_error:.2e} at {e.where})"
        for e in failed
    ]
    more = len(parts) - most
    return "; ".join(parts[:most]) + (f"; and {more} more" if more > 0 else "")


def _half_check(
    factory: Callable[..., nn.Module],
    config: Config,
    name: str,
    gpu: bool,
    required: Collection[str],
) -> Check:
    """float16/bfloat16 on the GPU; without one, skipped (or failed when the dtype is required)."""
    if gpu and torch.cuda.is_available():
        return check_one(factory, config, HALF[name], "cuda", required)
    why = "no CUDA GPU" if not torch.cuda.is_available() else "--device cpu"
    if name in required:
        return Check(config, name, "cuda", "fail", f"{why} ({name} is required)")
    return Check(config, name, "cuda", "skipped", why)


def check_equivalence(
    factory: Callable[..., nn.Module],
    kind: str,
    quick: bool,
    required: Collection[str],
    device: str = "auto",
    progress: Callable[[str], None] = lambda s: None,
) -> list[Check]:
    """float64 over `matrix`, float32 over `low_precision_matrix`, then the half dtypes."""
    checks: list[Check] = []

    def done(check: Check) -> None:
        checks.append(check)
        progress(f"  {check.status:11s} {check.label()}")

    with threads(1):  # tiny shapes: threads only add contention on shared machines
        for config in matrix(kind, quick):
            done(check_one(factory, config, torch.float64, "cpu", required))
        for config in low_precision_matrix(kind, quick):
            done(check_one(factory, config, torch.float32, "cpu", required))
    gpu = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    for name in HALF:
        for config in low_precision_matrix(kind, quick)[:2]:
            done(_half_check(factory, config, name, gpu, required))
    return checks


def worst_errors(checks: list[Check]) -> list[dict]:
    """Per tensor name: the worst error (relative to its tolerance) over all checks; a tensor
    that received no gradient counts as infinitely bad."""
    worst: dict[str, dict] = {}

    def offer(tensor: str, score: float, **fields: object) -> None:
        if tensor not in worst or score > worst[tensor]["score"]:
            worst[tensor] = dict(tensor=tensor, score=score, **fields)

    for check in checks:
        if check.result is None:
            continue
        for e in check.result.errors:
            offer(
                e.name,
                e.rel_error / e.tolerance if not math.isnan(e.rel_error) else math.inf,
                rel_error=e.rel_error,
                tolerance=e.tolerance,
                max_abs_error=e.max_abs_error,
                where=e.where,
                passed=e.passed,
                config=check.label(),
            )
        for n in check.result.missing_gradients:
            offer(
                f"grad_{n}",
                math.inf,
                rel_error=math.nan,
                tolerance=math.nan,
                max_abs_error=math.nan,
                where="received no gradient",
                passed=False,
                config=check.label(),
            )
    return sorted(worst.values(), key=lambda w: -w["score"])
