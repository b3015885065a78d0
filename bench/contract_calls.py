"""The contract checks about how the module is called: dtypes and devices, the caller's tensors,
non-contiguous views, requires_grad combinations, gradient accumulation, repeated calls and new
shapes. Each takes a Context and returns its measurements, or raises ContractFailure.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from cells.tolerances import tolerance

from .contract_support import (
    F64,
    Context,
    ContractFailure,
    call,
    data,
    expect,
    expect_fresh,
    fail_if,
    leaf,
    leaves,
    loss,
    mismatches,
    reference,
)


def dtype_device(ctx: Context) -> str:
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
        why = f"{type(exc).__name__}: {exc}".splitlines()[0]
        return f"float32 and float64 on cpu; cuda unsupported ({why})"
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = prev
    fail_if(wrong)
    return "float32 and float64 on cpu, float32 on cuda"


def inputs_unchanged(ctx: Context) -> str:
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
    return (
        "input, hx and parameters bitwise unchanged, no in-place writes, "
        "in 4 requires_grad combinations"
    )


def _strided(s: Tensor) -> Tensor:
    """The same values as every other element of a wider buffer, at storage offset 1."""
    wide = torch.zeros(*s.shape[:-1], 2 * s.shape[-1], dtype=s.dtype)
    wide[..., 1::2] = s
    return wide[..., 1::2]


def _swapped(dims: tuple[int, int]) -> Callable[[Tensor], Tensor]:
    """The same values with two dimensions swapped in memory (as x.transpose(0, 1) of
    batch-first data gives)."""
    return lambda s: s.transpose(*dims).contiguous().transpose(*dims)


def non_contiguous(ctx: Context) -> str:
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


def requires_grad(ctx: Context) -> str:
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


def grad_accumulation(ctx: Context) -> str:
    cfg = ctx.config()
    module = ctx.build(cfg)
    ref, tol = reference(module, cfg), tolerance(F64)
    x, hx, up1 = leaves(cfg)
    ups = (up1, data(cfg, seed=1)[2])  # the same input, two upstream gradients
    x0, hx0, _ = leaves(cfg)  # fresh leaves for torch.nn
    wants = [call(ref, x0, hx0, up)[1] for up in ups]
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


def same_call_twice(ctx: Context) -> str:
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
NEW_SHAPES: tuple[dict[str, Any], ...] = (
    dict(with_hx=False),
    dict(seq_len=9, batch=5),
    dict(seq_len=2, batch=1, with_hx=False),
    dict(seq_len=3, batch=2, with_hx=False),
    dict(seq_len=4, batch=None, with_hx=False),
    dict(seq_len=1, batch=4),
)


def new_shapes(ctx: Context) -> str:
    module, problems = ctx.build(ctx.config()), []
    for n, shape in enumerate(NEW_SHAPES):
        cfg = ctx.config(**shape)
        ctx.step = f"call {n + 1}: {cfg.label()}"
        problems += expect_fresh(module, cfg, ctx.step, seed=n)
    fail_if(problems)
    return f"{len(NEW_SHAPES)} calls on one module: " + ", ".join(
        f"T{c.seq_len} {'unbatched' if c.batch is None else f'B{c.batch}'}"
        + (" hx" if c.with_hx else "")
        for c in (ctx.config(**shape) for shape in NEW_SHAPES)
    )
