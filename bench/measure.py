"""The measurement engine: one case (kind, backend, mode, shape, device, dtype, threads) -> numbers.

Timing uses torch.utils.benchmark.Timer.blocked_autorange: it synchronises CUDA around each
block, pins torch's thread count for the measurement, picks a block size large enough that the
timer overhead is negligible, and reports per-call times per block. We take the median and the
inter-quartile range (IQR) over the blocks; a case with IQR / median above a threshold is
flagged `noisy`. The first call (where TorchScript, torch.compile and numba pay their
compilation) is timed on its own as `first_call_s`, and a few warm-up calls follow it before
timing starts, so neither enters the median.

Modes (the workload that is timed, one call = one sequence):
  train     module.train(); grads cleared; y, _ = module(x); y.sum().backward()
            (x needs no gradient, as with one-hot or embedded tokens; the optimizer step is
            excluded unless optimizer_step=True, then a plain SGD step is included)
  infer     module.eval(); under torch.no_grad(): y, _ = module(x)
  generate  batch 1, module.eval(), under torch.no_grad(), one token at a time carrying the
            state: for t in range(T): y, state = module(x[t:t+1], state), state starting None

FLOP convention (2 FLOPs per multiply-add, matrix multiplies only, pointwise work excluded,
input projection included): forward = cells.kinds.forward_flops; train = 3 x forward
(backward ~ 2 x forward: gradients of the weights and of the states); generate = forward at
batch 1. The optimizer step is not counted.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

MODES: tuple[str, ...] = ("train", "infer", "generate")
DTYPES: tuple[str, ...] = ("float32", "float64", "float16", "bfloat16")
NOISE_THRESHOLD = 0.10  # IQR / median above this flags a case as noisy
FLOP_CONVENTION = (
    "FLOPs count matrix multiplies only (2 per multiply-add), input projection included, "
    "pointwise gate work excluded: forward = sum over layers, directions and steps of "
    "2*G*B*H*(I_layer+H), G = 4 (LSTM), 3 (GRU), 1 (RNN). train = 3 x forward (backward ~ 2 x "
    "forward), optimizer step not counted; infer = forward; generate = forward at batch 1. "
    "GFLOP/s = FLOPs / median time; % of peak = GFLOP/s / the float32 GEMM peak measured at the "
    "start of the run with the best BLAS present (torch or numpy)."
)
MEMORY_METHOD_CPU = "torch.profiler CPU allocator: peak live bytes allocated during one call"
MEMORY_METHOD_CUDA = (
    "torch.cuda.max_memory_allocated during one call, minus the bytes allocated before"
)


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

    def key(self) -> tuple:
        return tuple(getattr(self, name) for name in CASE_FIELDS)

    def label(self) -> str:
        return (
            f"{self.kind}/{self.backend}/{self.mode} I{self.input_size} H{self.hidden_size} "
            f"L{self.num_layers} B{self.batch} T{self.seq_len} {self.device} {self.dtype} "
            f"t{self.threads}"
        )

    def as_dict(self) -> dict:
        return {name: getattr(self, name) for name in CASE_FIELDS}


CASE_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Case))


# --- the FLOP model ------------------------------------------------------------------------
def mode_flops(
    kind: str,
    mode: str,
    input_size: int,
    hidden_size: int,
    batch: int,
    seq_len: int,
    num_layers: int = 1,
    bidirectional: bool = False,
) -> int:
    """FLOPs of one timed call in `mode`, under the convention in FLOP_CONVENTION."""
    from cells.kinds import forward_flops

    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
    b = 1 if mode == "generate" else batch
    forward = forward_flops(kind, input_size, hidden_size, b, seq_len, num_layers, bidirectional)
    return 3 * forward if mode == "train" else forward


def tokens_per_call(mode: str, batch: int, seq_len: int) -> int:
    return seq_len if mode == "generate" else batch * seq_len


def derived(case: Case, median_s: float | None, peak_gflops: float | None) -> dict:
    """tokens/s, FLOPs, GFLOP/s and % of peak from a median time (None where undefined)."""
    flops = mode_flops(
        case.kind,
        case.mode,
        case.input_size,
        case.hidden_size,
        case.batch,
        case.seq_len,
        case.num_layers,
    )
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


# --- threads -----------------------------------------------------------------------------------
def set_threads(threads: int) -> dict:
    """Set torch's and numba's thread counts; returns what each library reports afterwards."""
    import torch

    torch.set_num_threads(threads)
    got = {"torch_threads": torch.get_num_threads(), "numba_threads": None}
    try:
        import numba

        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        got["numba_threads"] = numba.get_num_threads()
    except Exception:  # numba absent or its threading layer unusable: torch still counts
        pass
    return got


def thread_env(threads: int) -> dict[str, str]:
    """Environment for a fresh process: BLAS libraries read these at load time."""
    n = str(threads)
    return {
        "OMP_NUM_THREADS": n,
        "MKL_NUM_THREADS": n,
        "OPENBLAS_NUM_THREADS": n,
        "NUMBA_NUM_THREADS": str(max(threads, 1)),
    }


# --- the machine's peak ----------------------------------------------------------------------
def measure_peak(device: str = "cpu", size: int = 2048, repeats: int = 3) -> dict:
    """float32 GEMM size^3 through torch and (on CPU) numpy; the best median GFLOP/s is the peak."""
    import torch

    flops = 2.0 * size**3
    results: dict[str, float | None] = {}

    def best_of(fn: Callable[[], Any], sync: Callable[[], None]) -> float:
        fn()
        sync()  # warm-up: thread pools, page faults
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - t0)
        return flops / sorted(times)[len(times) // 2] / 1e9

    dev = torch.device(device)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    a = torch.randn(size, size, device=dev)
    b = torch.randn(size, size, device=dev)
    try:
        results["torch"] = best_of(lambda: torch.mm(a, b), sync)
    except Exception:
        results["torch"] = None
    if dev.type == "cpu":
        try:
            an, bn = a.numpy(), b.numpy()
            results["numpy"] = best_of(lambda: an @ bn, lambda: None)
        except Exception:
            results["numpy"] = None
    valid = {k: v for k, v in results.items() if v}
    best = max(valid, key=valid.get) if valid else None
    return {
        "peak_gflops": valid.get(best) if best else None,
        "peak_source": best,
        "peak_by_library": results,
        "peak_gemm": f"float32 {size}x{size}x{size}",
        "peak_device": device,
    }


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

        def call():
            with torch.no_grad():
                state = None
                y = None
                for t in range(case.seq_len):
                    y, state = module(x[t : t + 1], state)
                return y

        return call, module

    x = torch.randn(case.seq_len, case.batch, case.input_size, generator=gen).to(
        device=device, dtype=dtype
    )
    if case.mode == "infer":
        module.eval()

        def call():
            with torch.no_grad():
                return module(x)[0]

        return call, module

    module.train()
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=1e-6) if case.optimizer_step else None

    def call():
        y, _ = module(x)
        y.sum().backward()
        if optimizer is not None:
            optimizer.step()
        for p in params:  # cleared here, not at the start, so a call frees what it allocates
            p.grad = None
        return y

    return call, module


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize(torch.device(device))


def cpu_peak_bytes(fn: Callable[[], Any]) -> int | None:
    """Peak live bytes that torch's CPU allocator hands out during one call of fn (allocations
    made before the call are not counted; memory allocated outside torch, e.g. numpy arrays
    inside a numba kernel, is not seen)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [
        (e.start_ns(), e.nbytes())
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]" and str(e.device_type()).endswith("CPU")
    ]
    if not events:
        return None
    events.sort()
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return int(peak)


def peak_memory(fn: Callable[[], Any], device: str) -> tuple[int | None, str]:
    """Peak memory of one call and the name of the method used."""
    import torch

    if device.startswith("cuda"):
        dev = torch.device(device)
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        before = torch.cuda.memory_allocated(dev)
        fn()
        torch.cuda.synchronize(dev)
        return int(torch.cuda.max_memory_allocated(dev) - before), MEMORY_METHOD_CUDA
    try:
        return cpu_peak_bytes(fn), MEMORY_METHOD_CPU
    except Exception as exc:  # the profiler is optional machinery: never fail a case over it
        return None, f"unavailable ({type(exc).__name__}: {exc})"


def time_calls(
    fn: Callable[[], Any],
    threads: int,
    min_run_time: float,
    min_repeats: int = 5,
    timer: Callable[[], float] | None = None,
    max_extra_s: float | None = None,
) -> list[float]:
    """Per-call times from torch.utils.benchmark's blocked_autorange, topped up with single
    blocks until there are at least `min_repeats` of them (so that an IQR exists even for
    calls longer than min_run_time)."""
    from torch.utils.benchmark import Timer

    kwargs = {"timer": timer} if timer is not None else {}
    t = Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads, **kwargs)
    m = t.blocked_autorange(min_run_time=min_run_time)
    times = list(m.times)
    clock = timer or time.perf_counter
    start = clock()
    while len(times) < min_repeats:
        times.append(t.timeit(m.number_per_run).times[0])
        if max_extra_s is not None and clock() - start > max_extra_s:
            break
    return times


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
        _sync(case.device)
        t0 = clock()
        fn()
        _sync(case.device)
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
        verdict = check(module, case)
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
