"""What the machine offers and what a call costs on it: thread settings, the GEMM peak,
per-call times (torch.utils.benchmark) and the peak memory of one call. Used by bench.measure
inside the worker process; nothing here knows about cases.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

MEMORY_METHOD_CPU = "torch.profiler CPU allocator: peak live bytes allocated during one call"
MEMORY_METHOD_CUDA = (
    "torch.cuda.max_memory_allocated during one call, minus the bytes allocated before"
)


# --- threads -----------------------------------------------------------------------------------
def set_threads(threads: int) -> dict:
    """Set torch's and numba's thread counts; returns what each library reports afterwards."""
    import torch

    torch.set_num_threads(threads)
    got = {"torch_threads": torch.get_num_threads(), "numba_threads": None}
    try:
        import numba

        config: Any = numba.config  # its settings are set at import: mypy cannot see them
        numba.set_num_threads(min(threads, config.NUMBA_NUM_THREADS))
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
def measure_peak(device: str = "cpu", size: int = 2048, repeats: int = 5) -> dict:
    """float32 GEMM size^3 through torch and (on CPU) numpy; the fastest call of the faster
    library is the peak. The fastest, not the median: another tenant of a shared machine only
    ever slows a call, and a median of 3 taken in a busy moment once gave half the peak (217
    against 434 GFLOP/s), so that cases reported over 100% of it."""
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
        return flops / min(times) / 1e9

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
    best = max(valid, key=lambda name: valid[name]) if valid else None
    return {
        "peak_gflops": valid.get(best) if best else None,
        "peak_source": best,
        "peak_by_library": results,
        "peak_gemm": f"float32 {size}x{size}x{size}",
        "peak_device": device,
    }


def sync(device: str) -> None:
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

    kwargs: dict[str, Any] = {"timer": timer} if timer is not None else {}
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
