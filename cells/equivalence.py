"""Check a recurrent module against torch.nn run in float64 on the same weights.

Used by the test suite and by `bench validate`. The check covers the output, the final
state(s), and the gradients of every parameter, the input and the initial state(s), driven by
random non-zero data and random upstream gradients (not `.sum()`, whose uniform gradient hides
transposed or permuted results).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .kinds import spec
from .tolerances import tolerance


@dataclass(frozen=True)
class Config:
    """One configuration of the matrix: module arguments plus the data's shape."""

    kind: str
    input_size: int = 5
    hidden_size: int = 7
    num_layers: int = 1
    bias: bool = True
    batch_first: bool = False
    bidirectional: bool = False
    nonlinearity: str = "tanh"
    batch: int | None = 3  # None: unbatched 2-D input
    seq_len: int = 6
    with_hx: bool = True
    proj_size: int = 0  # LSTM only
    # packed input: one length per batch entry (max == seq_len), fed through
    # pack_padded_sequence(enforce_sorted=False); outputs compared after pad_packed_sequence
    lengths: tuple[int, ...] | None = None

    def nn_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = dict(
            num_layers=self.num_layers,
            bias=self.bias,
            batch_first=self.batch_first,
            bidirectional=self.bidirectional,
        )
        if self.kind == "rnn":
            kw["nonlinearity"] = self.nonlinearity
        if self.proj_size:
            kw["proj_size"] = self.proj_size
        return kw

    def label(self) -> str:
        parts = [
            self.kind,
            f"I{self.input_size}",
            f"H{self.hidden_size}",
            f"L{self.num_layers}",
            f"T{self.seq_len}",
            "unbatched" if self.batch is None else f"B{self.batch}",
        ]
        parts += [
            flag
            for flag, on in (
                ("bidir", self.bidirectional),
                ("batch_first", self.batch_first),
                ("no-bias", not self.bias),
                ("hx", self.with_hx),
                (self.nonlinearity, self.kind == "rnn"),
                (f"P{self.proj_size}", self.proj_size > 0),
                ("packed" + ",".join(map(str, self.lengths or ())), self.lengths),
            )
            if on
        ]
        return " ".join(parts)


@dataclass
class TensorError:
    name: str
    rel_error: float
    max_abs_error: float
    where: tuple  # index of the largest absolute error
    tolerance: float

    @property
    def passed(self) -> bool:
        return self.rel_error <= self.tolerance  # NaN fails


@dataclass
class Result:
    config: Config
    dtype: str
    errors: list[TensorError] = field(default_factory=list)
    missing_gradients: list[str] = field(default_factory=list)
    problem: str = ""  # set when the comparison could not be made at all

    @property
    def passed(self) -> bool:
        return (
            not self.problem and not self.missing_gradients and all(e.passed for e in self.errors)
        )

    def worst(self) -> TensorError | None:
        return max(self.errors, key=lambda e: e.rel_error / e.tolerance, default=None)

    def summary(self) -> str:
        if self.problem:
            return f"{self.config.label()} [{self.dtype}]: {self.problem}"
        failed = [e for e in self.errors if not e.passed]
        parts = [
            f"{e.name}: rel. error {e.rel_error:.2e} > {e.tolerance:.0e} "
            f"(max abs {e.max_abs_error:.2e} at {e.where})"
            for e in failed
        ]
        parts += [f"{n}: received no gradient" for n in self.missing_gradients]
        return f"{self.config.label()} [{self.dtype}]: " + ("; ".join(parts) if parts else "ok")

    def to_dict(self) -> dict:
        return {
            "config": asdict(self.config),
            "dtype": self.dtype,
            "passed": self.passed,
            "problem": self.problem,
            "missing_gradients": self.missing_gradients,
            "errors": [dict(asdict(e), passed=e.passed) for e in self.errors],
        }


def reference_module(config: Config) -> nn.Module:
    """torch.nn's own module for `config`, in float64 on the CPU."""
    cls = getattr(nn, spec(config.kind).torch_class)
    return cls(config.input_size, config.hidden_size, dtype=torch.float64, **config.nn_kwargs())


def _relative(candidate: Tensor, reference: Tensor, name: str, tol: float) -> TensorError:
    diff = (candidate.detach().to(torch.float64).cpu() - reference.detach()).abs()
    ref_norm = reference.detach().norm().item()
    rel = diff.norm().item() / max(ref_norm, 1e-300)
    if diff.isnan().any():
        rel = float("nan")
    flat = int(torch.nan_to_num(diff, nan=float("inf")).argmax()) if diff.numel() else 0
    where = (
        tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), diff.shape))
        if diff.dim()
        else ()
    )
    return TensorError(name, rel, float(diff.max()) if diff.numel() else 0.0, where, tol)


def _states(hx) -> tuple[Tensor, ...]:
    return tuple(hx) if isinstance(hx, (tuple, list)) else (hx,)


def state_dict_mismatch(reference: nn.Module, candidate: nn.Module, most: int = 4) -> str:
    """'' if the candidate's state_dict has torch.nn's names and shapes, else one whole line
    saying what is missing, unexpected or of the wrong shape (a few names of each)."""
    want = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in candidate.state_dict().items()}
    parts = []
    for label, names in (
        ("missing", [k for k in want if k not in got]),
        ("unexpected", [k for k in got if k not in want]),
        (
            "wrong shape",
            [f"{k} {got[k]} (torch.nn {want[k]})" for k in want if k in got and got[k] != want[k]],
        ),
    ):
        if names:
            more = f" and {len(names) - most} more" if len(names) > most else ""
            parts.append(f"{label}: {', '.join(names[:most])}{more}")
    return (
        ("parameters do not match torch.nn's names and shapes: " + "; ".join(parts))
        if parts
        else ""
    )


class ShapeMismatch(ValueError):
    """An output or state whose shape differs from torch.nn's (or a forward of another form)."""


def forward_pair(module: nn.Module, *args):
    """module(*args), which must return torch.nn's (output, h_n) or (output, (h_n, c_n))."""
    returned = module(*args)
    if not isinstance(returned, (tuple, list)) or len(returned) != 2:
        what = type(returned).__name__ + (
            f" of length {len(returned)}" if isinstance(returned, (tuple, list)) else ""
        )
        raise ShapeMismatch(
            f"forward returned a {what}; torch.nn returns (output, h_n) or (output, (h_n, c_n))"
        )
    return returned


def _run(
    module: nn.Module,
    x: Tensor,
    hx: tuple[Tensor, ...] | None,
    upstream: list[Tensor],
    config: Config,
):
    """Forward, then backward of <outputs, upstream>; returns outputs and gradients by name."""
    params = dict(module.named_parameters())
    leaves = [x] + list(hx or ())
    for leaf in leaves:
        leaf.requires_grad_(True)
    arg = None if hx is None else (hx if len(hx) == 2 else hx[0])
    if config.lengths is None:
        output, final = forward_pair(module, x, arg)
    else:
        packed = pack_padded_sequence(
            x, torch.tensor(config.lengths), batch_first=config.batch_first, enforce_sorted=False
        )
        output, final = forward_pair(module, packed, arg)
        output = pad_packed_sequence(
            output, batch_first=config.batch_first, total_length=config.seq_len
        )[0]
    outs = [output, *_states(final)]
    for name, out, grad in zip(("output", "h_n", "c_n"), outs, upstream):
        if tuple(out.shape) != tuple(grad.shape):  # before backward, which would fail cryptically
            raise ShapeMismatch(
                f"{name} has shape {tuple(out.shape)}, torch.nn gives {tuple(grad.shape)}"
            )
    loss = sum((o.to(torch.float64) * g.to(o.device)).sum() for o, g in zip(outs, upstream))
    grads = torch.autograd.grad(loss, leaves + list(params.values()), allow_unused=True)
    names = (
        ["grad_input"]
        + [f"grad_hx[{i}]" for i in range(len(hx or ()))]
        + [f"grad_{n}" for n in params]
    )
    return outs, dict(zip(names, grads))


def compare(
    candidate: nn.Module, config: Config, *, seed: int = 0, tol: float | None = None
) -> Result:
    """Compare `candidate` (built for `config`, any dtype and device) with float64 torch.nn."""
    param = next(candidate.parameters(), None)
    if param is None:
        return Result(config, "?", problem="the module has no parameters")
    dtype, device = param.dtype, param.device
    result = Result(config, str(dtype).replace("torch.", ""))
    tol = tolerance(dtype) if tol is None else tol
    reference = reference_module(config)
    problem = state_dict_mismatch(reference, candidate)
    if problem:
        result.problem = problem
        return result
    reference.load_state_dict(
        {k: v.detach().to(torch.float64).cpu() for k, v in candidate.state_dict().items()},
        strict=True,
    )

    gen = torch.Generator().manual_seed(seed)
    d = 2 if config.bidirectional else 1
    n_states = spec(config.kind).states
    widths = [config.proj_size or config.hidden_size, config.hidden_size][:n_states]  # h, c
    x_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    h_shapes: list[tuple[int, ...]]
    if config.batch is None:
        x_shape, out_shape = (config.seq_len, config.input_size), (config.seq_len, d * widths[0])
        h_shapes = [(config.num_layers * d, w) for w in widths]
    else:
        t, b = config.seq_len, config.batch
        x_shape = (b, t, config.input_size) if config.batch_first else (t, b, config.input_size)
        out_shape = (b, t, d * widths[0]) if config.batch_first else (t, b, d * widths[0])
        h_shapes = [(config.num_layers * d, b, w) for w in widths]
    x = torch.randn(x_shape, generator=gen, dtype=torch.float64)
    hx = (
        tuple(torch.randn(s, generator=gen, dtype=torch.float64) for s in h_shapes)
        if config.with_hx
        else None
    )
    upstream = [torch.randn(out_shape, generator=gen, dtype=torch.float64)] + [
        torch.randn(s, generator=gen, dtype=torch.float64) for s in h_shapes
    ]

    ref_outs, ref_grads = _run(
        reference, x.clone(), None if hx is None else tuple(s.clone() for s in hx), upstream, config
    )
    prev_tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        cand_outs, cand_grads = _run(
            candidate,
            x.to(device=device, dtype=dtype),
            None if hx is None else tuple(s.to(device=device, dtype=dtype) for s in hx),
            upstream,
            config,
        )
    except ShapeMismatch as exc:
        result.problem = str(exc)
        return result
    except Exception as exc:
        result.problem = f"raised {type(exc).__name__}: {exc}".splitlines()[0]
        return result
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = prev_tf32

    state_names = ["h_n", "c_n"][:n_states]
    for name, cand, ref in zip(["output"] + state_names, cand_outs, ref_outs):
        if tuple(cand.shape) != tuple(ref.shape):
            result.problem = (
                f"{name} has shape {tuple(cand.shape)}, torch.nn gives {tuple(ref.shape)}"
            )
            return result
        result.errors.append(_relative(cand, ref, name, tol))
    for name, ref in ref_grads.items():
        cand = cand_grads.get(name)
        if cand is None:
            result.missing_gradients.append(name.removeprefix("grad_"))
        else:
            result.errors.append(_relative(cand, ref, name, tol))
    return result
