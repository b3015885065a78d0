"""The torch.nn contract beyond one forward and backward pass: the checks of `bench validate`.

Equivalence (cells.equivalence) proves the math on a fresh module called once. A kernel can pass
it and still break a user's model: dropout in eval mode, a mutated input, `.grad` that does not
accumulate, state kept between calls, results that change with the thread count, a wrong answer
on a transposed view, a state_dict that does not load, float64 out for float32 in, a module that
breaks after `.double()`, deepcopy or pickle. Each check in CONTRACT exercises one of these on
small shapes, against torch.nn in float64 on the same weights, with the tolerances of
cells/tolerances.py (bitwise where the contract is exact). `run_contract` runs them all.

Every check builds its own modules (the factory takes torch.nn's constructor arguments), so one
failure cannot hide or cause another. Checks run at one thread, except the two about threads.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from cells.kinds import spec

from . import contract_calls as calls
from . import contract_module as state
from .contract_support import Context, ContractFailure, Unsupported, threads

# Options a contract check may need that the candidate may leave unsupported (--require NAME).
CONTRACT_OPTIONS = ("dropout", "cuda")


@dataclass
class ContractVerdict:
    name: str
    condition: str
    criterion: str
    status: str  # pass | fail | unsupported
    detail: str  # measurements on pass, the reason otherwise
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return dict(name=self.name, status=self.status, detail=self.detail, seconds=self.seconds)


@dataclass(frozen=True)
class ContractCheck:
    """One clause of the contract: its name, the condition exercised, the pass criterion."""

    name: str
    condition: str
    criterion: str
    body: Callable[[Context], str] = field(repr=False)  # measurements, or raises ContractFailure

    def run(
        self, factory: Callable[..., nn.Module], kind: str, required=(), device: str = "cpu"
    ) -> ContractVerdict:
        ctx = Context(factory, kind, frozenset(required), device)
        started = time.perf_counter()
        status = "pass"
        try:
            with threads(1):
                detail = self.body(ctx)
        except ContractFailure as exc:
            status, detail = "fail", str(exc)
        except Unsupported as exc:
            status, detail = "unsupported", str(exc)
        except Exception as exc:
            status = "fail"
            detail = (
                f"{ctx.step}: " if ctx.step else ""
            ) + f"raised {type(exc).__name__}: {exc}".splitlines()[0]
        return ContractVerdict(
            self.name, self.condition, self.criterion, status, detail, time.perf_counter() - started
        )


CONTRACT: tuple[ContractCheck, ...] = (
    ContractCheck(
        "dtype-device",
        "float32 and float64 input, hx given and None (and CUDA with --device cuda)",
        "output, final states and every gradient have the input's dtype and device",
        calls.dtype_device,
    ),
    ContractCheck(
        "inputs-unchanged",
        "forward and backward with input and hx in each requires_grad combination",
        "input, hx and parameters bitwise unchanged, their "
        "version counters untouched (no in-place write)",
        calls.inputs_unchanged,
    ),
    ContractCheck(
        "non-contiguous",
        "input and hx as transposed and strided views (one at a storage offset)",
        "output, states and gradients match torch.nn float64",
        calls.non_contiguous,
    ),
    ContractCheck(
        "requires-grad",
        "input and hx each with and without requires_grad; frozen "
        "parameters; torch.no_grad and torch.inference_mode (also T1 B1)",
        "outputs and the gradients that exist match torch.nn float64",
        calls.requires_grad,
    ),
    ContractCheck(
        "grad-accumulation",
        "two torch.autograd.grad calls, then two .backward() calls on one module",
        "autograd.grad matches torch.nn per call; .grad after the "
        "second .backward() is the sum of both",
        calls.grad_accumulation,
    ),
    ContractCheck(
        "same-call-twice",
        "the same call three times on one module, hx None and given",
        "every call matches torch.nn float64 (nothing carried between calls)",
        calls.same_call_twice,
    ),
    ContractCheck(
        "new-shapes",
        "one module called with a new batch size or length each time "
        "(B 3, 5, 1, 2, unbatched, 4; T 1-9)",
        "every call matches torch.nn float64",
        calls.new_shapes,
    ),
    ContractCheck(
        "train-eval",
        "num_layers=2, dropout=0.5, in eval then train then eval mode",
        "eval equals torch.nn without dropout; train changes the output but not the first "
        "layer's states nor zeroes the last layer's output",
        state.train_eval,
    ),
    ContractCheck(
        "thread-count",
        "I16 H64 B16 T8 at 1 thread and at 2-4 threads (torch and numba)",
        "both match torch.nn float64 and differ by at most the float64 tolerance",
        state.thread_count,
    ),
    ContractCheck(
        "determinism",
        "the same call twice at a fixed thread count (1, and 2-4)",
        "outputs and gradients bitwise identical",
        state.determinism,
    ),
    ContractCheck(
        "state-dict",
        "state_dict of a used candidate into torch.nn, torch.nn's into a new "
        "candidate, the candidate's into itself",
        "same keys as torch.nn, all loads "
        "succeed with strict=True, the loaded weights give torch.nn's results",
        state.state_dict,
    ),
    ContractCheck(
        "module-copies",
        ".double() and .to(float64) after float32 use; deepcopy and "
        "pickle of a used module, then new weights on the copy",
        "each module matches torch.nn float64 with its own weights; the original is untouched",
        state.module_copies,
    ),
)


def run_contract(
    factory: Callable[..., nn.Module],
    kind: str,
    required=(),
    device: str = "auto",
    progress: Callable[[str], None] = lambda s: None,
    checks: tuple[ContractCheck, ...] | None = None,
) -> list[ContractVerdict]:
    """Every contract check (or `checks`) on the candidate; one verdict each, in order."""
    spec(kind)
    device = "cuda" if device == "auto" and torch.cuda.is_available() else device
    verdicts = []
    for check in CONTRACT if checks is None else checks:
        verdicts.append(check.run(factory, kind, required, device))
        progress(f"  {verdicts[-1].status:11s} {check.name}")
    return verdicts


def failure_reason(verdicts: list[ContractVerdict]) -> str:
    """One line: the first failed check with its detail, then the names of the others."""
    failed = [v for v in verdicts if v.status == "fail"]
    if not failed:
        return ""
    others = f" (also failed: {', '.join(v.name for v in failed[1:])})" if failed[1:] else ""
    return f"contract: {failed[0].name}: {failed[0].detail}{others}"


def render(verdicts: list[ContractVerdict]) -> list[str]:
    """The contract section of validate.md."""
    counts = {s: sum(v.status == s for v in verdicts) for s in ("pass", "fail", "unsupported")}
    lines = [
        "## Contract",
        "",
        f"{len(verdicts)} checks of torch.nn's behaviour beyond one forward and backward pass "
        f"(bench/contract.py): {counts['pass']} passed, {counts['fail']} failed, "
        f"{counts['unsupported']} unsupported; {sum(v.seconds for v in verdicts):.1f} s.",
        "",
        "| check | condition | pass criterion | verdict | detail |",
        "|---|---|---|---|---|",
    ]
    for v in verdicts:
        lines.append(
            f"| {v.name} | {v.condition} | {v.criterion} | "
            f"{'**FAIL**' if v.status == 'fail' else v.status} | "
            f"{v.detail.replace('|', '/')[:300]} |"
        )
    return lines + [""]
