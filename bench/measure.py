"""One case (kind, backend, mode, shape, device, dtype, threads, convention) -> numbers.

`run_case` builds a case's module in the worker, times its first call on its own (where
TorchScript, torch.compile and numba compile: `first_call_s`), passes it through the correctness
gate (bench.gate), warms it up and times one round with torch.utils.benchmark (bench.machine);
`retime` times further rounds of the kept workload for the engine (bench.timing).

Modes (the workload that is timed, one call = one sequence):
  train     module.train(); y, _ = module(x); y.sum().backward(); gradients cleared afterwards
            (the optimizer step is excluded unless optimizer_step=True, then a plain SGD step
            is included)
  infer     module.eval(); under torch.no_grad(): y, _ = module(x)
  generate  batch 1, module.eval(), under torch.no_grad(), one token at a time carrying the
            state: for t in range(T): y, state = module(x[t:t+1], state), state starting None

Conventions (what a train call computes and what its FLOPs count; docs/bench.md):
  full       x needs no gradient (one-hot or embedded tokens); backward computes the weight
             gradients and the state gradients. FLOPs `matmul-all`: every matrix multiply,
             input projection included; train = 3 x forward.
  recurrent  the parameters are frozen and x needs a gradient, so backward computes only the
             input and state gradients (cuDNN's backward-data, as DeepBench times it). FLOPs
             `matmul-recurrent`: only the multiplies by the recurrent weights W_hh; train =
             2 x that forward (h W_hh^T forward, dgates W_hh backward). The input projection is
             still computed and timed: torch.nn modules compute it inside their forward.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from .machine import (  # re-exported: the worker, the report and the tests import them here
    MEMORY_METHOD_CPU,
    MEMORY_METHOD_CUDA,
    cpu_peak_bytes,
    measure_peak,
    peak_memory,
    set_threads,
    sync,
    thread_env,
    time_calls,
)

__all__ = [
    "CASE_FIELDS",
    "CONVENTIONS",
    "DTYPES",
    "FLOP_CONVENTION",
    "FLOP_CONVENTIONS",
    "FLOP_NAMES",
    "MEMORY_METHOD_CPU",
    "MEMORY_METHOD_CUDA",
    "MODES",
    "NOISE_THRESHOLD",
    "Case",
    "Options",
    "build_workload",
    "cpu_peak_bytes",
    "derived",
    "error_message",
    "measure_peak",
    "mode_flops",
    "peak_memory",
    "retime",
    "run_case",
    "set_threads",
    "thread_env",
    "time_calls",
    "tokens_per_call",
]

MODES: tuple[str, ...] = ("train", "infer", "generate")
DTYPES: tuple[str, ...] = ("float32", "float64", "float16", "bfloat16")
NOISE_THRESHOLD = 0.10  # IQR / median above this flags a case as noisy
CONVENTIONS: tuple[str, ...] = ("full", "recurrent")
# the record's `flop_convention` of each measurement convention
FLOP_NAMES: dict[str, str] = {"full": "matmul-all", "recurrent": "matmul-recurrent"}
_PEAK_TEXT = (
    "GFLOP/s = FLOPs / median time; % of peak = GFLOP/s / the float32 GEMM peak measured at the "
    "start of the run with the best BLAS present (torch or numpy)."
)
FLOP_CONVENTIONS: dict[str, str] = {
    "matmul-all": "FLOPs count matrix multiplies only (2 per multiply-add), input projection "
    "included, pointwise gate work excluded: forward = sum over layers, directions and steps of "
    "2*G*B*H*(I_layer+H), G = 4 (LSTM), 3 (GRU), 1 (RNN). train = 3 x forward (backward ~ 2 x "
    "forward: weight and state gradients), optimizer step not counted; infer = forward; "
    "generate = forward at batch 1. " + _PEAK_TEXT,
    "matmul-recurrent": "FLOPs count only the multiplies by the recurrent weights (2 per "
    "multiply-add): forward = sum over layers, directions and steps of 2*G*B*H*H; the input "
    "projection and the weight gradients are not counted. train (weights frozen) = 2 x forward "
    "(the state-gradient GEMM); infer = forward; generate = forward at batch 1. The time still "
    "includes the input projection, which torch.nn modules compute inside their forward. "
    + _PEAK_TEXT,
}
FLOP_CONVENTION = FLOP_CONVENTIONS["matmul-all"]  # the default convention's text


@dataclass(unsafe_hash=True)
class Case:
    """One point of a sweep: the spec. Its identity (for --resume and for the report) is all its
    fields. bench.records.CaseRecord extends it with the outcome; treat a Case as immutable."""

    kind: str
    backend: str
    mode: str
    input_size: int
    hidden_size: int
    num_layers: int = 1
    batch: int = 1
    seq_len: int = 1
    device: str = "cpu"
    dtype: str = "float32"
    threads: int = 1
    optimizer_step: bool = False
    convention: str = "full"  # one of CONVENTIONS: what a train call computes and FLOPs count

    def key(self) -> tuple:
        return tuple(getattr(self, name) for name in CASE_FIELDS)

    def label(self) -> str:
        return (
            f"{self.kind}/{self.backend}/{self.mode} I{self.input_size} H{self.hidden_size} "
            f"L{self.num_layers} B{self.batch} T{self.seq_len} {self.device} {self.dtype} "
            f"t{self.threads}" + ("" if self.convention == "full" else f" {self.convention}")
        )

    def as_dict(self) -> dict:
        return {name: getattr(self, name) for name in CASE_FIELDS}


CASE_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Case))


# --- the FLOP model ------------------------------------------------------------------------
def mode_flops(case: Case) -> int:
    """FLOPs of one timed call of `case` (its mode, shape and convention; any backend), as
    FLOP_CONVENTIONS[FLOP_NAMES[case.convention]] defines them."""
    from cells.kinds import forward_flops, spec

    if case.mode not in MODES:
        raise ValueError(f"unknown mode {case.mode!r}; expected one of {', '.join(MODES)}")
    if case.convention not in CONVENTIONS:
        raise ValueError(
            f"unknown convention {case.convention!r}; expected one of {', '.join(CONVENTIONS)}"
        )
    b = 1 if case.mode == "generate" else case.batch
    h, t, layers = case.hidden_size, case.seq_len, case.num_layers
    if case.convention == "recurrent":  # h W_hh^T per step; its backward: dgates W_hh (no dW)
        forward = layers * 2 * spec(case.kind).gates * b * h * h * t
        return 2 * forward if case.mode == "train" else forward
    forward = forward_flops(case.kind, case.input_size, h, b, t, layers)
    return 3 * forward if case.mode == "train" else forward


def tokens_per_call(mode: str, batch: int, seq_len: int) -> int:
    return seq_len if mode == "generate" else batch * seq_len


def derived(case: Case, median_s: float | None, peak_gflops: float | None) -> dict:
    """tokens/s, FLOPs, GFLOP/s and % of peak from a median time (None where undefined)."""
    flops = mode_flops(case)
    out: dict[str, Any] = {
        "flops": flops,
        "tokens_per_s": None,
        "gflops": None,
        "pct_of_peak": None,
    }
    if median_s and median_s > 0:
        out["tokens_per_s"] = tokens_per_call(case.mode, case.batch, case.seq_len) / median_s
        out["gflops"] = flops / median_s / 1e9
        if peak_gflops:
            out["pct_of_peak"] = 100.0 * out["gflops"] / peak_gflops
    return out


# --- workloads -------------------------------------------------------------------------------
def build_workload(case: Case) -> tuple[Callable[[], Any], Any]:
    """The module for `case` and a zero-argument callable doing one timed call of its mode."""
    import torch

    import cells

    dtype = getattr(torch, case.dtype)
    device = torch.device(case.device)
    module = cells.create(
        case.kind,
        case.backend,
        case.input_size,
        case.hidden_size,
        num_layers=case.num_layers,
        device=device,
        dtype=dtype,
    )
    gen = torch.Generator().manual_seed(0)
    if case.mode == "generate":
        x = torch.randn(case.seq_len, 1, case.input_size, generator=gen).to(
            device=device, dtype=dtype
        )
        module.eval()

        def generate_call() -> Any:
            with torch.no_grad():
                state = None
                y = None
                for t in range(case.seq_len):
                    y, state = module(x[t : t + 1], state)
                return y

        return generate_call, module

    x = torch.randn(case.seq_len, case.batch, case.input_size, generator=gen).to(
        device=device, dtype=dtype
    )
    if case.mode == "infer":
        module.eval()

        def infer_call() -> Any:
            with torch.no_grad():
                return module(x)[0]

        return infer_call, module

    module.train()
    if case.convention == "recurrent":
        # frozen weights: autograd computes no weight gradient; x's gradient is what remains
        # of backward (with the state gradients), as cuDNN's backward-data
        module.requires_grad_(False)
        x.requires_grad_(True)
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=1e-6) if case.optimizer_step and params else None

    def train_call() -> Any:
        y, _ = module(x)
        y.sum().backward()
        if optimizer is not None:
            optimizer.step()
        for p in params:  # cleared here, not at the start, so a call frees what it allocates
            p.grad = None
        x.grad = None
        return y

    return train_call, module


@dataclass
class Options:
    """How to measure (not what): shared by every case of a run; the one set of defaults that
    `run`, `compare` and `validate` use (a preset or the command line overrides fields)."""

    min_run_time: float = 0.05  # seconds of timed calls per case and round
    min_repeats: int = 2  # at least this many timed blocks per case and round
    warmup: int = 2  # untimed calls after the first call
    min_rounds: int = 5  # before the ratio intervals are trusted
    max_rounds: int = 40
    ci_target: float = 0.05  # stop once every ratio's 95% CI half-width is within this fraction
    group_time_cap: float = 20.0  # seconds of rounds per comparison group (compilation excluded)
    time_limit: float = 300.0  # seconds per worker call (build + first call, or one round)
    budget: float | None = None  # seconds for the whole run; no group starts after it
    noise_threshold: float = NOISE_THRESHOLD
    memory: bool = True
    check: bool = True  # the correctness gate (bench.gate) before any timing

    def __post_init__(self) -> None:
        problems = [
            f"{name} must be > 0, got {getattr(self, name)}"
            for name in (
                "min_run_time",
                "time_limit",
                "group_time_cap",
                "ci_target",
                "noise_threshold",
            )
            if not getattr(self, name) > 0
        ]
        problems += [
            f"{name} must be >= {low}, got {getattr(self, name)}"
            for name, low in (
                ("min_repeats", 1),
                ("warmup", 0),
                ("min_rounds", 2),
                ("max_rounds", 2),
            )
            if not getattr(self, name) >= low
        ]
        if self.budget is not None and not self.budget > 0:
            problems.append(f"budget must be > 0, got {self.budget}")
        if self.max_rounds < self.min_rounds:
            problems.append(
                f"max_rounds ({self.max_rounds}) must be >= min_rounds ({self.min_rounds})"
            )
        if problems:
            raise ValueError("; ".join(problems))


def run_case(
    case: Case,
    options: Options | None = None,
    peak_gflops: float | None = None,
    timer: Callable[[], float] | None = None,
    keep: dict | None = None,
) -> dict:
    """Build, check, first-call, warm up and time one round of one case.

    Raises whatever the backend raises (the caller records it), except cells.errors.Unsupported:
    then {"status": "unsupported", "error": reason}. A module that fails the correctness gate
    returns {"status": "incorrect", "error": reason} after its first call and is never timed. Otherwise the result holds the first round's block times in "times"; with
    `keep` (a dict), the workload stays in it under the case's key for `retime` rounds."""
    from cells.errors import Unsupported

    from .gate import check

    options = options or Options()
    clock = timer or time.perf_counter
    try:
        fn, module = build_workload(case)
        sync(case.device)
        t0 = clock()
        fn()
        sync(case.device)
    except Unsupported as exc:  # a declared limit of the backend (ORT cannot train), not a fault
        return {"status": "unsupported", "error": error_message(exc)}
    result: dict[str, Any] = {
        "status": "ok",
        "first_call_s": clock() - t0,
        "param_count": sum(p.numel() for p in module.parameters()),
        "check_s": None,
        "check_error": None,
    }
    if options.check:
        frozen = [p for p in module.parameters() if not p.requires_grad]
        for p in frozen:  # the gate checks every gradient, also under the recurrent convention
            p.requires_grad_(True)
        try:
            verdict = check(module, case)
        finally:
            for p in frozen:
                p.requires_grad_(False)
        result["check_s"], result["check_error"] = verdict.seconds, verdict.worst
        if not verdict.passed:
            return {**result, "status": "incorrect", "error": verdict.reason}
    for _ in range(options.warmup):
        fn()
    result["times"] = time_calls(
        fn, case.threads, options.min_run_time, options.min_repeats, timer=timer
    )
    if options.memory:
        result["peak_mem_bytes"], result["mem_method"] = peak_memory(fn, case.device)
    else:
        result["peak_mem_bytes"], result["mem_method"] = None, "not measured"
    if keep is not None:
        keep[case.key()] = fn
    return result


def retime(
    case: Case, options: Options, keep: dict, timer: Callable[[], float] | None = None
) -> list[float]:
    """One more round of per-call block times of a workload kept by run_case(..., keep=)."""
    fn = keep.get(case.key())
    if fn is None:
        raise KeyError(f"no kept workload for {case.label()}")
    fn()  # one untimed call: caches and thread pools after the other backends' rounds
    return time_calls(fn, case.threads, options.min_run_time, options.min_repeats, timer=timer)


def error_message(exc: BaseException) -> str:
    """One line naming the exception, for a failed record."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")
