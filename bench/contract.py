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

import copy
import pickle
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from cells.equivalence import _relative, reference_module
from cells.kinds import spec
from cells.tolerances import tolerance

from .contract_support import (
    F64,
    Context,
    ContractFailure,
    Unsupported,
    call,
    data,
    expect,
    expect_fresh,
    fail_if,
    leaf,
    leaves,
    loss,
    many_threads,
    mismatches,
    reference,
    results,
    threads,
    use,
)

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


# --- the checks: each returns its measurements or raises ContractFailure --------------------
def _dtype_device(ctx: Context) -> str:
    for dtype in (torch.float32, F64):
        for with_hx in (True, False):
            cfg = ctx.config(with_hx=with_hx)
            ctx.step = f"{str(dtype)[6:]} input, hx {'given' if with_hx else 'None'}"
            module = ctx.build(cfg, dtype)
            x, hx, up = leaves(cfg, dtype)
            outs, grads = call(module, x, hx, up)
            wrong = [
                f"{n} is {t.dtype} on {t.device}"
                for n, t in outs.items()
                if t.dtype != dtype or t.device != x.device
            ]
            wrong += [
                f"{n} is {g.dtype}" for n, g in grads.items() if g is not None and g.dtype != dtype
            ]
            if wrong:
                raise ContractFailure(
                    f"{ctx.step}: {', '.join(wrong)} (expected {dtype} on {x.device})"
                )
    if ctx.device != "cuda":
        return "float32 and float64 on cpu"
    ctx.step = "cuda float32"
    prev = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        module = ctx.build(ctx.config(), torch.float32).to("cuda")
        outs, _ = call(module, *leaves(ctx.config(), torch.float32, device="cuda"))
        wrong = [
            f"{n} is {t.dtype} on {t.device}"
            for n, t in outs.items()
            if t.dtype != torch.float32 or t.device.type != "cuda"
        ]
        wrong += expect_fresh(
            module, ctx.config(), "cuda float32", dtype=torch.float32, device="cuda"
        )
    except Exception as exc:
        if "cuda" in ctx.required:
            raise
        return f"float32 and float64 on cpu; cuda unsupported ({type(exc).__name__}: {exc})".splitlines()[
            0
        ]
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = prev
    fail_if(wrong)
    return "float32 and float64 on cpu, float32 on cuda"


def _inputs_unchanged(ctx: Context) -> str:
    cfg = ctx.config()
    for x_grad, hx_grad in ((False, False), (True, True), (True, False), (False, True)):
        ctx.step = f"input requires_grad={x_grad}, hx requires_grad={hx_grad}"
        module = ctx.build(cfg)
        params = {n: p.detach().clone() for n, p in module.named_parameters()}
        x, hx, up = data(cfg)
        tensors = {
            "input": leaf(x, F64, x_grad),
            **{f"hx[{i}]": leaf(s, F64, hx_grad) for i, s in enumerate(hx)},
        }
        saved = {n: (t.detach().clone(), t._version) for n, t in tensors.items()}
        call(module, tensors["input"], tuple(tensors.values())[1:], up)
        changed = [n for n, t in tensors.items() if not torch.equal(t.detach(), saved[n][0])]
        written = [n for n, t in tensors.items() if t._version != saved[n][1] and n not in changed]
        changed += [
            n for n, p in module.named_parameters() if not torch.equal(p.detach(), params[n])
        ]
        if changed or written:
            raise ContractFailure(
                f"{ctx.step}: forward and backward changed the caller's "
                + ", ".join(changed + [f"{n} (written in place)" for n in written])
            )
    return "input, hx and parameters bitwise unchanged, no in-place writes, in 4 requires_grad combinations"


def _strided(s: Tensor) -> Tensor:
    """The same values as every other element of a wider buffer, at storage offset 1."""
    wide = torch.zeros(*s.shape[:-1], 2 * s.shape[-1], dtype=s.dtype)
    wide[..., 1::2] = s
    return wide[..., 1::2]


def _swapped(dims: tuple[int, int]) -> Callable[[Tensor], Tensor]:
    """The same values with two dimensions swapped in memory (as x.transpose(0, 1) of
    batch-first data gives)."""
    return lambda s: s.transpose(*dims).contiguous().transpose(*dims)


def _non_contiguous(ctx: Context) -> str:
    cfg, problems = ctx.config(), []
    x, hx, up = data(cfg)
    for label, fx, fh in (
        ("transposed input, strided hx", _swapped((0, 1)), _strided),
        ("strided input, transposed hx", _strided, _swapped((1, 2))),
    ):
        ctx.step = label
        vx, vh = fx(x).requires_grad_(), tuple(fh(s).requires_grad_() for s in hx)
        if vx.is_contiguous() or any(s.is_contiguous() for s in vh):
            raise AssertionError(f"{label}: a view meant to be non-contiguous is contiguous")
        problems += expect(ctx.build(cfg), cfg, label, x=vx, hx=vh, upstream=up)
    fail_if(problems)
    return "transposed and strided views of input and hx"


def _requires_grad(ctx: Context) -> str:
    cfg, problems = ctx.config(), []
    for x_grad in (True, False):
        for hx_grad in (True, False):
            ctx.step = label = f"input requires_grad={x_grad}, hx requires_grad={hx_grad}"
            x, hx, up = data(cfg)
            problems += expect(
                ctx.build(cfg),
                cfg,
                label,
                x=leaf(x, F64, x_grad),
                upstream=up,
                hx=tuple(leaf(s, F64, hx_grad) for s in hx),
            )
    ctx.step = "frozen parameters"
    problems += expect_fresh(ctx.build(cfg).requires_grad_(False), cfg, ctx.step)
    for name, mode in (
        ("torch.no_grad()", torch.no_grad),
        ("torch.inference_mode()", torch.inference_mode),
    ):
        for c in (cfg, ctx.config(seq_len=1, batch=1)):  # T1 B1: a generation step
            ctx.step = f"{name} {c.label()}"
            problems += expect_fresh(ctx.build(c), c, ctx.step, grads=False, mode=mode)
    fail_if(problems)
    return "input and hx with and without grad, frozen parameters, no_grad, inference_mode"


def _grad_accumulation(ctx: Context) -> str:
    cfg = ctx.config()
    module = ctx.build(cfg)
    ref, tol = reference(module, cfg), tolerance(F64)
    x, hx, up1 = leaves(cfg)
    ups = (up1, data(cfg, seed=1)[2])  # the same input, two upstream gradients
    wants = [call(ref, *leaves(cfg)[:2], up)[1] for up in ups]
    problems = []
    for n, (up, want) in enumerate(zip(ups, wants), 1):
        ctx.step = f"torch.autograd.grad, call {n}"
        problems += mismatches(ctx.step, call(module, x, hx, up)[1], want, tol)
    grad_of = {
        "grad_input": x,
        **{f"grad_hx[{i}]": s for i, s in enumerate(hx)},
        **{f"grad_{n}": p for n, p in module.named_parameters()},
    }
    total: dict = {}
    for n, (up, want) in enumerate(zip(ups, wants), 1):
        ctx.step = f".backward() {n}"
        loss(call(module, x, hx, up, grads=False)[0], up).backward()
        total = {k: want[k] + total.get(k, 0) for k in want}
        problems += mismatches(
            f".grad after {n} backward pass{'es' if n > 1 else ''}",
            {k: t.grad for k, t in grad_of.items()},
            total,
            tol,
        )
    fail_if(problems)
    return "autograd.grad twice; .grad after two .backward() is the sum"


def _same_call_twice(ctx: Context) -> str:
    problems = []
    for with_hx in (False, True):
        cfg = ctx.config(with_hx=with_hx)
        module = ctx.build(cfg)
        for n in (1, 2, 3):
            ctx.step = f"call {n} with hx {'given' if with_hx else 'None'}"
            problems += expect_fresh(module, cfg, ctx.step)
    fail_if(problems)
    return "3 identical calls, hx None and given"


# Every call on one module; all shapes differ, each call changes batch or length.
NEW_SHAPES = (
    dict(with_hx=False),
    dict(seq_len=9, batch=5),
    dict(seq_len=2, batch=1, with_hx=False),
    dict(seq_len=3, batch=2, with_hx=False),
    dict(seq_len=4, batch=None, with_hx=False),
    dict(seq_len=1, batch=4),
)


def _new_shapes(ctx: Context) -> str:
    module, problems = ctx.build(ctx.config()), []
    for n, shape in enumerate(NEW_SHAPES):
        cfg = ctx.config(**shape)
        ctx.step = f"call {n + 1}: {cfg.label()}"
        problems += expect_fresh(module, cfg, ctx.step, seed=n)
    fail_if(problems)
    return f"{len(NEW_SHAPES)} calls on one module: " + ", ".join(
        f"T{c.seq_len} {'unbatched' if c.batch is None else f'B{c.batch}'}{' hx' if c.with_hx else ''}"
        for c in (ctx.config(**shape) for shape in NEW_SHAPES)
    )


def _train_eval(ctx: Context) -> str:
    cfg = ctx.config(num_layers=2, with_hx=False)
    module = ctx.build(cfg, dropout=0.5)
    if not module.training:
        raise ContractFailure("a new module is not in training mode (torch.nn's default)")
    problems = expect_fresh(module.eval(), cfg, "eval mode, dropout=0.5")
    fail_if(problems)
    x, _, up = data(cfg)
    with torch.no_grad():
        evaluated = call(module, x, None, up, grads=False)[0]
        trained = call(module.train(), x, None, up, grads=False)[0]
    # not a tolerance: dropout 0.5 between layers moves the output by ~0.1-1 (relative)
    moved = _relative(trained["output"], evaluated["output"], "output", 1e-3)
    if moved.passed:
        raise ContractFailure(
            f"train mode with dropout=0.5 gives the eval-mode output (rel. "
            f"difference {moved.rel_error:.1e}): no dropout between layers"
        )
    first = [
        n
        for n in list(trained)[1:]
        if not _relative(trained[n][0], evaluated[n][0], n, tolerance(F64)).passed
    ]
    if first:
        raise ContractFailure(
            f"train mode changes the first layer's {', '.join(first)}: dropout "
            "is applied before or inside the first layer, not only between layers"
        )
    zeros = float((trained["output"] == 0).double().mean())
    if zeros:
        raise ContractFailure(
            f"train mode zeroes {zeros:.0%} of the last layer's output: dropout "
            "is applied after the last layer"
        )
    fail_if(expect_fresh(module.eval(), cfg, "eval mode again after train mode"))
    return f"eval = torch.nn without dropout; train output moved by {moved.rel_error:.2f} (rel.)"


THREAD_CONFIG = dict(input_size=16, hidden_size=64, batch=16, seq_len=8)  # big enough to split


def _thread_count(ctx: Context) -> str:
    cfg, n, found, problems = ctx.config(**THREAD_CONFIG), many_threads(), {}, []
    for k in (1, n):
        with threads(k):
            ctx.step = f"{k} thread{'s' if k > 1 else ''}"
            module = ctx.build(cfg)
            problems += expect_fresh(module, cfg, ctx.step)
            found[k] = results(module, *leaves(cfg))
    fail_if(problems)
    tol = tolerance(F64)
    worst = max(
        (_relative(found[n][k], found[1][k], k, tol) for k in found[1]), key=lambda e: e.rel_error
    )
    if not worst.passed:
        raise ContractFailure(
            f"1 vs {n} threads: {worst.name} differs by {worst.rel_error:.2e} > {tol:.0e}"
        )
    numba = sys.modules.get("numba")
    return (
        f"1 vs {n} threads{f' (numba: up to {numba.config.NUMBA_NUM_THREADS})' if numba else ''}: "
        f"largest rel. difference {worst.rel_error:.1e} ({worst.name})"
    )


def _determinism(ctx: Context) -> str:
    cfg, problems = ctx.config(**THREAD_CONFIG), []
    for k in (1, many_threads()):
        with threads(k):
            ctx.step = f"{k} thread{'s' if k > 1 else ''}"
            module = ctx.build(cfg)
            a, b = (results(module, *leaves(cfg)) for _ in range(2))
            differ = [n for n in a if not torch.equal(a[n], b[n])]
            if differ:
                problems.append(
                    f"{ctx.step}: {', '.join(differ[:4])}{' ...' if len(differ) > 4 else ''} "
                    f"differ between two identical calls (max abs. "
                    f"{max(float((a[n] - b[n]).abs().max()) for n in differ):.1e})"
                )
    fail_if(problems)
    return f"bitwise identical repeated calls at 1 and {many_threads()} threads"


def _state_dict(ctx: Context) -> str:
    cfg = ctx.config()
    ctx.step = "candidate -> torch.nn"
    module = ctx.build(cfg)
    use(module, cfg)  # a module that has been used, as saved models are
    mine, ref = module.state_dict(), reference_module(cfg)
    extra, missing = (
        sorted(set(mine) - set(ref.state_dict())),
        sorted(set(ref.state_dict()) - set(mine)),
    )
    if extra or missing:
        raise ContractFailure(
            "state_dict keys differ from torch.nn's: "
            + "; ".join(
                f"{w} {', '.join(ks)}" for w, ks in (("extra", extra), ("missing", missing)) if ks
            )
        )
    ref.load_state_dict(mine, strict=True)
    ctx.step = "torch.nn -> candidate"
    torch.manual_seed(1)
    other = reference_module(cfg)  # weights the candidate has never seen
    fresh = ctx.build(cfg)
    try:
        fresh.load_state_dict(other.state_dict(), strict=True)
    except Exception as exc:
        raise ContractFailure(
            f"torch.nn's state_dict does not load with strict=True: "
            f"{type(exc).__name__}: {exc}".splitlines()[0]
        ) from exc
    problems = mismatches(
        "after loading torch.nn's state_dict",
        results(fresh, *leaves(cfg)),
        results(other, *leaves(cfg)),
        tolerance(F64),
    )
    ctx.step = "candidate -> candidate"
    fresh.load_state_dict(fresh.state_dict(), strict=True)
    fail_if(problems)
    return "both ways with strict=True; loaded weights are the ones used"


def _module_copies(ctx: Context) -> str:
    cfg, problems = ctx.config(), []
    for label, convert in (
        (".double()", lambda m: m.double()),
        (".to(torch.float64)", lambda m: m.to(torch.float64)),
    ):
        ctx.step = f"{label} after a float32 call"
        module = ctx.build(cfg, torch.float32)
        use(module, cfg, torch.float32)
        problems += expect_fresh(convert(module), cfg, ctx.step)
    gen = torch.Generator().manual_seed(2)
    for label, clone in (
        ("copy.deepcopy", copy.deepcopy),
        ("pickle", lambda m: pickle.loads(pickle.dumps(m))),
    ):
        ctx.step = f"{label} of a used module"
        module = ctx.build(cfg)
        use(module, cfg)
        copied = clone(module)
        problems += expect_fresh(copied, cfg, f"{label} copy")
        before = {n: p.detach().clone() for n, p in module.named_parameters()}
        with torch.no_grad():
            for p in copied.parameters():
                p.add_(0.1 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
        problems += expect_fresh(copied, cfg, f"{label} copy with new weights", seed=1)
        if any(not torch.equal(p.detach(), before[n]) for n, p in module.named_parameters()):
            problems.append(f"{label}: changing the copy's weights changed the original's")
        problems += expect_fresh(
            module, cfg, f"the original after its {label} copy changed", seed=1
        )
    fail_if(problems)
    return ".double(), .to(float64) after float32 use; deepcopy and pickle copies correct and independent"


CONTRACT: tuple[ContractCheck, ...] = (
    ContractCheck(
        "dtype-device",
        "float32 and float64 input, hx given and None (and CUDA with --device cuda)",
        "output, final states and every gradient have the input's dtype and device",
        _dtype_device,
    ),
    ContractCheck(
        "inputs-unchanged",
        "forward and backward with input and hx in each requires_grad combination",
        "input, hx and parameters bitwise unchanged, their "
        "version counters untouched (no in-place write)",
        _inputs_unchanged,
    ),
    ContractCheck(
        "non-contiguous",
        "input and hx as transposed and strided views (one at a storage offset)",
        "output, states and gradients match torch.nn float64",
        _non_contiguous,
    ),
    ContractCheck(
        "requires-grad",
        "input and hx each with and without requires_grad; frozen "
        "parameters; torch.no_grad and torch.inference_mode (also T1 B1)",
        "outputs and the gradients that exist match torch.nn float64",
        _requires_grad,
    ),
    ContractCheck(
        "grad-accumulation",
        "two torch.autograd.grad calls, then two .backward() calls on one module",
        "autograd.grad matches torch.nn per call; .grad after the "
        "second .backward() is the sum of both",
        _grad_accumulation,
    ),
    ContractCheck(
        "same-call-twice",
        "the same call three times on one module, hx None and given",
        "every call matches torch.nn float64 (nothing carried between calls)",
        _same_call_twice,
    ),
    ContractCheck(
        "new-shapes",
        "one module called with a new batch size or length each time "
        "(B 3, 5, 1, 2, unbatched, 4; T 1-9)",
        "every call matches torch.nn float64",
        _new_shapes,
    ),
    ContractCheck(
        "train-eval",
        "num_layers=2, dropout=0.5, in eval then train then eval mode",
        "eval equals torch.nn without dropout; train changes the output but not the first "
        "layer's states nor zeroes the last layer's output",
        _train_eval,
    ),
    ContractCheck(
        "thread-count",
        "I16 H64 B16 T8 at 1 thread and at 2-4 threads (torch and numba)",
        "both match torch.nn float64 and differ by at most the float64 tolerance",
        _thread_count,
    ),
    ContractCheck(
        "determinism",
        "the same call twice at a fixed thread count (1, and 2-4)",
        "outputs and gradients bitwise identical",
        _determinism,
    ),
    ContractCheck(
        "state-dict",
        "state_dict of a used candidate into torch.nn, torch.nn's into a new "
        "candidate, the candidate's into itself",
        "same keys as torch.nn, all loads "
        "succeed with strict=True, the loaded weights give torch.nn's results",
        _state_dict,
    ),
    ContractCheck(
        "module-copies",
        ".double() and .to(float64) after float32 use; deepcopy and "
        "pickle of a used module, then new weights on the copy",
        "each module matches torch.nn float64 with its own weights; the original is untouched",
        _module_copies,
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
