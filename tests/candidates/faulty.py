"""Faulty backends for the fault-injection tests: each one fails in one way a real kernel can.

Importing this module registers them for rnn, gru and lstm (`--import candidates.faulty` with
`PYTHONPATH=tests`). All are the `fused` loop with one thing broken:

| backend | fault | what should catch it |
|---|---|---|
| `wrongshape` | the output is one time step short | a shape check against torch.nn |
| `nan` | output and final states are all NaN | a finiteness / equivalence check |
| `linear` | a linear map of the input (the input-gate rows of `weight_ih`): right shapes, wrong function | the equivalence check |
| `raises` | forward raises RuntimeError | the worker's exception handling |
| `hangs` | sleeps forever from call `CELLBENCH_FAULTY_HANG_AT` on | the time limit; the exit handlers |
| `segfault` | SIGSEGV to its own process at call `CELLBENCH_FAULTY_SEGFAULT_AT` | the worker's restart |
| `hog` | allocates `CELLBENCH_FAULTY_HOG_GIB` GiB (default 64) at once | the allocator's error |

Run `hog` only under an address-space limit (`resource.setrlimit(RLIMIT_AS)`, as the tests do):
the allocation then fails at once instead of pushing a shared machine into its OOM killer.

Call counts (`hangs`, `segfault`) are per process, over all their instances, one per forward
call. Each counted call first sleeps `CELLBENCH_FAULTY_CALL_S` seconds (default 0.005): longer
than the tests' `--min-run-time 0.001`, so torch's timer makes every timed block one call and
the count per round is fixed. With `--warmup 0 --min-repeats 2`, round 1 is the first call,
the correctness gate's call, the block-size probe, one block and one topping-up block (torch's
`Timer.timeit` warms up with 2 calls): calls 1-7, plus one with the memory call; round 2 is the
next 6 (an untimed call, then the same), so the default trigger, call 10, is in round 2 either way.
`CELLBENCH_FAULTY_HANG_FILE` names a file created when the hang starts (so that a
test knows when to act), and `CELLBENCH_FAULTY_HANG_CHILD=1` makes `hangs` start a sleeping
child process first, a stand-in for a compiler's worker processes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

import cells
from cells.kernels.fused import FusedLoop

DEFAULT_AT = 10
_calls = 0  # counted forward calls of `hangs` and `segfault` in this process


def _env_number(name: str, default: float, kind: type = float) -> float:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = kind(text)
    except ValueError:
        raise ValueError(f"${name} must be a {kind.__name__}, got {text!r}") from None
    if value < 0:
        raise ValueError(f"${name} must be >= 0, got {text!r}")
    return value


class WrongShape(FusedLoop):
    def run_layer(self, x, state, weights):
        y, final = super().run_layer(x, state, weights)
        return y[:-1], final


class NaNs(FusedLoop):
    def run_layer(self, x, state, weights):
        y, final = super().run_layer(x, state, weights)
        nan = float("nan")
        return y + nan, tuple(s + nan for s in final)  # still in the graph: backward runs


class Linear(FusedLoop):
    def run_layer(self, x, state, weights):
        w_ih, _, b_ih, _ = weights
        h = self.hidden_size
        y = x @ w_ih[:h].t()
        if b_ih is not None:
            y = y + b_ih[:h]
        return y, tuple(y[-1] for _ in state)


class Raises(FusedLoop):
    def run_layer(self, x, state, weights):
        raise RuntimeError("faulty backend 'raises': forward failed on purpose")


class _Counted(FusedLoop):
    """Counts forward calls (after a short sleep) and calls `fault()` from call number AT on."""

    AT_VARIABLE = ""

    def forward(self, input, hx=None):
        global _calls
        delay = _env_number("CELLBENCH_FAULTY_CALL_S", 0.005)
        at = int(_env_number(self.AT_VARIABLE, DEFAULT_AT, int))
        _calls += 1
        if delay:
            time.sleep(delay)
        if _calls >= at:
            self.fault()
        return super().forward(input, hx)

    def fault(self) -> None:
        raise NotImplementedError


class Hangs(_Counted):
    AT_VARIABLE = "CELLBENCH_FAULTY_HANG_AT"

    def fault(self) -> None:
        if os.environ.get("CELLBENCH_FAULTY_HANG_CHILD") == "1":
            subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
        flag = os.environ.get("CELLBENCH_FAULTY_HANG_FILE")
        if flag:
            Path(flag).write_text(str(os.getpid()))
        while True:
            time.sleep(3600)


class Segfault(_Counted):
    AT_VARIABLE = "CELLBENCH_FAULTY_SEGFAULT_AT"

    def fault(self) -> None:
        try:
            import resource

            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file for a planted crash
        except (ImportError, ValueError, OSError):
            pass
        sys.stdout.flush()
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGSEGV)


class Hog(FusedLoop):
    def forward(self, input, hx=None):
        gib = _env_number("CELLBENCH_FAULTY_HOG_GIB", 64.0)
        torch.zeros(int(gib * 2**30), dtype=torch.uint8)  # zeros, not empty: pages are touched
        return super().forward(input, hx)


FAULTY: dict[str, type] = {
    "wrongshape": WrongShape,
    "nan": NaNs,
    "linear": Linear,
    "raises": Raises,
    "hangs": Hangs,
    "segfault": Segfault,
    "hog": Hog,
}


def register() -> None:
    """Register every faulty backend for every kind (again, if a test replaced one)."""
    for kind in ("rnn", "gru", "lstm"):
        for name, cls in FAULTY.items():
            cells.register(kind, name, cls, replace=True)


def reset_calls() -> None:
    """Start the call count again (for tests that run the backends in their own process)."""
    global _calls
    _calls = 0


register()
