"""The contract checks about the module's own state: train/eval mode with dropout, thread count,
determinism, state_dict round trips and copies (.double(), deepcopy, pickle). Each takes a
Context and returns its measurements, or raises ContractFailure.
"""

from __future__ import annotations

import copy
import pickle
import sys

import torch

from cells.equivalence import _relative, reference_module
from cells.tolerances import tolerance

from .contract_support import (
    F64,
    Context,
    ContractFailure,
    call,
    data,
    expect_fresh,
    fail_if,
    leaves,
    many_threads,
    mismatches,
    results,
    threads,
    use,
)


def train_eval(ctx: Context) -> str:
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


def thread_count(ctx: Context) -> str:
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


def determinism(ctx: Context) -> str:
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


def state_dict(ctx: Context) -> str:
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


def module_copies(ctx: Context) -> str:
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
    return (
        ".double(), .to(float64) after float32 use; "
        "deepcopy and pickle copies correct and independent"
    )
