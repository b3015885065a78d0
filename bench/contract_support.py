"""Helpers of the contract checks (bench/contract.py): the candidate's construction, thread
settings, random data, one forward-and-backward run, and comparison with torch.nn in float64."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from cells.equivalence import Config, _relative, reference_module
from cells.kinds import spec
from cells.tolerances import tolerance

STATE_NAMES = ("h_n", "c_n")
F64 = torch.float64


class ContractFailure(Exception):
    """A contract check failed; the message is the one-line detail."""


class Unsupported(Exception):
    """The candidate raised at construction for an option the check needs."""


@dataclass
class Context:
    factory: Callable[..., nn.Module]
    kind: str
    required: frozenset
    device: str
    step: str = ""  # what the check was doing, for the message of an unexpected exception

    def config(self, **kw) -> Config:
        return Config(self.kind, **kw)

    def build(
        self, config: Config, dtype: torch.dtype = torch.float64, seed: int = 0, **extra
    ) -> nn.Module:
        """The candidate for `config` (torch.nn's arguments plus `extra`), moved to `dtype`."""
        options = ({"multilayer"} if config.num_layers > 1 else set()) | (
            {"dropout"} if extra.get("dropout") else set()
        )
        torch.manual_seed(seed)
        try:
            module = self.factory(
                config.input_size, config.hidden_size, **config.nn_kwargs(), **extra
            )
        except Exception as exc:
            message = f"construction raised {type(exc).__name__}: {exc}".splitlines()[0]
            if not options:
                raise ContractFailure(message) from exc
            if "dropout" in options and options != {"dropout"}:
                try:  # which option is it? dropout alone, if the rest builds
                    self.factory(config.input_size, config.hidden_size, **config.nn_kwargs())
                    options = {"dropout"}
                except Exception:
                    pass
            needed = sorted(options & self.required)
            if needed:
                raise ContractFailure(
                    f"required option {', '.join(needed)} is unsupported ({message})"
                ) from exc
            raise Unsupported(f"{', '.join(sorted(options))}: {message}") from exc
        if not isinstance(module, nn.Module):
            raise ContractFailure(
                f"the factory returned a {type(module).__name__}, not an nn.Module"
            )
        return module.to(dtype)


def many_threads() -> int:
    """The thread count compared with one thread: 2 to 4, as the machine has cores."""
    return max(2, min(4, os.cpu_count() or 2))


@contextlib.contextmanager
def threads(n: int) -> Iterator[None]:
    """torch's intra-op threads, and numba's where a kernel already imported it (the numba
    backend splits work over numba's threads, not torch's)."""
    numba = sys.modules.get("numba")
    old = torch.get_num_threads(), numba.get_num_threads() if numba else None
    torch.set_num_threads(n)
    if numba:
        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    try:
        yield
    finally:
        torch.set_num_threads(old[0])
        if numba:
            numba.set_num_threads(old[1])


# --- data, runs and comparisons --------------------------------------------------------------
def data(config: Config, seed: int = 0):
    """float64 CPU input, initial state(s) (None if not config.with_hx) and upstream gradients."""
    gen = torch.Generator().manual_seed(seed)
    d, h = (2 if config.bidirectional else 1), config.hidden_size
    t, b = config.seq_len, config.batch
    x_shape: tuple[int, ...]
    h_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    if b is None:
        x_shape, h_shape, out_shape = (t, config.input_size), (config.num_layers * d, h), (t, d * h)
    else:
        x_shape = (b, t, config.input_size) if config.batch_first else (t, b, config.input_size)
        out_shape = (b, t, d * h) if config.batch_first else (t, b, d * h)
        h_shape = (config.num_layers * d, b, h)
    n = spec(config.kind).states
    randn = lambda shape: torch.randn(shape, generator=gen, dtype=torch.float64)  # noqa: E731
    x = randn(x_shape)
    hx = tuple(randn(h_shape) for _ in range(n)) if config.with_hx else None
    return x, hx, [randn(out_shape)] + [randn(h_shape) for _ in range(n)]


def leaf(t: Tensor, dtype: torch.dtype, grad: bool, device="cpu") -> Tensor:
    return t.detach().to(device=device, dtype=dtype).clone().requires_grad_(grad)


def call(module: nn.Module, x: Tensor, hx, upstream, grads: bool = True):
    """Forward, then the gradients of <outputs, upstream> w.r.t. every parameter and input that
    requires grad (torch.autograd.grad: .grad is untouched). Returns (outputs, grads) by name."""
    output, final = module(x, None if hx is None else (hx if len(hx) == 2 else hx[0]))
    finals = tuple(final) if isinstance(final, (tuple, list)) else (final,)
    outs = {"output": output, **dict(zip(STATE_NAMES, finals))}
    if not grads or not torch.is_grad_enabled():
        return outs, {}
    wrt = {"grad_input": x} if x.requires_grad else {}
    wrt.update({f"grad_hx[{i}]": s for i, s in enumerate(hx or ()) if s.requires_grad})
    wrt.update({f"grad_{n}": p for n, p in module.named_parameters() if p.requires_grad})
    got = (
        torch.autograd.grad(loss(outs, upstream), list(wrt.values()), allow_unused=True)
        if wrt
        else ()
    )
    return outs, dict(zip(wrt, got))


def reference(module: nn.Module, config: Config) -> nn.Module:
    """torch.nn in float64 with the candidate's parameters (by name; not via its state_dict, which
    the state-dict check judges on its own), mirroring which parameters require grad."""
    ref = reference_module(config)
    params = dict(module.named_parameters())
    try:
        ref.load_state_dict(
            {n: p.detach().to("cpu", torch.float64) for n, p in params.items()}, strict=True
        )
    except RuntimeError as exc:
        raise ContractFailure(
            "parameters do not match torch.nn's names and shapes: " + str(exc).splitlines()[0]
        ) from exc
    for n, p in ref.named_parameters():
        p.requires_grad_(params[n].requires_grad)
    return ref


def mismatches(label: str, cand: dict, ref: dict, tol: float, most: int = 3) -> list[str]:
    """Each tensor of `ref` against `cand` (norm-wise relative error): [] or one line naming the
    worst `most` tensors that are off."""
    off = []
    for name, r in ref.items():
        c = cand.get(name)
        if c is None:
            off.append((float("inf"), f"no {name.replace('grad_', 'gradient for ', 1)}"))
        elif tuple(c.shape) != tuple(r.shape):
            off.append(
                (
                    float("inf"),
                    f"{name} has shape {tuple(c.shape)}, torch.nn gives {tuple(r.shape)}",
                )
            )
        else:
            e = _relative(c, r, name, tol)
            if not e.passed:
                off.append(
                    (
                        e.rel_error if e.rel_error == e.rel_error else float("inf"),
                        f"{name} rel. error {e.rel_error:.2e} > {tol:.0e}",
                    )
                )
    if not off:
        return []
    off.sort(key=lambda o: -o[0])
    more = f" and {len(off) - most} more" if len(off) > most else ""
    return [f"{label}: " + ", ".join(text for _, text in off[:most]) + more]


def expect(
    module: nn.Module,
    config: Config,
    label: str,
    *,
    x: Tensor,
    hx,
    upstream,
    grads: bool = True,
    mode: Callable = contextlib.nullcontext,
) -> list[str]:
    """Run the candidate on exactly these tensors (inside `mode()`, e.g. torch.no_grad) and
    torch.nn in float64 on copies; what is off. grads=False: outputs only."""
    ref = reference(module, config)
    rx = leaf(x, F64, x.requires_grad)
    rhx = None if hx is None else tuple(leaf(s, F64, s.requires_grad) for s in hx)
    with contextlib.nullcontext() if grads else torch.no_grad():
        ref_outs, ref_grads = call(ref, rx, rhx, upstream, grads)
    with mode():
        outs, got = call(module, x, hx, upstream, grads)
    tol = tolerance(next(module.parameters()).dtype)
    return mismatches(label, outs, ref_outs, tol) + mismatches(label, got, ref_grads, tol)


def expect_fresh(
    module: nn.Module,
    config: Config,
    label: str,
    seed: int = 0,
    dtype: torch.dtype = F64,
    device="cpu",
    grads: bool = True,
    mode: Callable = contextlib.nullcontext,
) -> list[str]:
    """`expect` on new random data for `config`, every input requiring grad (if grads)."""
    x, hx, up = leaves(config, dtype, grads, seed, device)
    return expect(module, config, label, x=x, hx=hx, upstream=up, grads=grads, mode=mode)


def fail_if(found: list[str], most: int = 3) -> None:
    """Raise ContractFailure naming the first `most` problems, if there are any."""
    if found:
        more = len(found) - most
        raise ContractFailure("; ".join(found[:most]) + (f"; and {more} more" if more > 0 else ""))


def results(module: nn.Module, x: Tensor, hx, upstream) -> dict:
    """Outputs and gradients of one call, detached copies by name."""
    outs, grads = call(module, x, hx, upstream)
    return {
        **{k: v.detach().clone() for k, v in outs.items()},
        **{k: v.clone() for k, v in grads.items() if v is not None},
    }


def loss(outs: dict, upstream) -> Tensor:
    """<outputs, upstream>: random upstream gradients, not .sum(), which hides permutations."""
    return sum((o * g.to(o.device, o.dtype)).sum() for o, g in zip(outs.values(), upstream))


def leaves(config: Config, dtype=F64, grad: bool = True, seed: int = 0, device="cpu"):
    """(input, hx or None, upstream): new leaves of `dtype` on `device`."""
    x, hx, up = data(config, seed)
    return (
        leaf(x, dtype, grad, device),
        None if hx is None else tuple(leaf(s, dtype, grad, device) for s in hx),
        up,
    )


def use(module: nn.Module, config: Config, dtype=F64) -> None:
    """One forward and backward, as a model in use has had (caches get built)."""
    call(module, *leaves(config, dtype))
