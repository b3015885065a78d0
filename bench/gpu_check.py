"""`python -m bench.gpu_check`: the one prepared GPU check, sized to finish within 8 minutes.

On a machine with a CUDA GPU it runs, each step in its own subprocess with its own time allowance:

1. the CUDA tests (`pytest -m cuda`: the equivalence matrix in float32, float16 and bfloat16,
   and the Triton kernel on the GPU);
2. `python -m bench run --device cuda` sweeps: the d2l size (I28 H256 B32 T35) for native
   (cuDNN), triton and fused, and for native and compiled (train, infer, generate); the
   fastrnns size (I512 H512 B64 T100); FlashRNN's bf16 shape (batch 16, hidden 768, T 1024);
   and batch 1-16 at hidden 64, where a persistent kernel keeps its weights on chip;

then ALWAYS writes the report (default `reports/gpu.md`): which steps ran and how they ended,
the test results per dtype, and each sweep rendered by `bench.report.render`. A step that fails
or runs out of time is listed with its reason; the exit status is 1 then (2 for usage errors,
including a machine without CUDA), after the report is written. `--dry-run` prints the plan.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .cli import Parser, number
from .gpu_report import DTYPES, PROG, _dtype_of, pytest_section, read_test_results, render

# re-exported: the tests and docs name them as bench.gpu_check's
__all__ = [
    "DTYPES",
    "_dtype_of",
    "PROG",
    "Outcome",
    "Step",
    "main",
    "pytest_section",
    "read_test_results",
    "render",
]

GRACE_S = 20.0  # after SIGINT at the deadline: pytest writes its XML, a sweep its records
# quick rounds: enough for ratios with intervals on a GPU, small enough for the 8 minutes
SWEEP_SETTINGS = [
    "--min-run-time",
    "0.02",
    "--min-repeats",
    "2",
    "--warmup",
    "2",
    "--min-rounds",
    "3",
    "--max-rounds",
    "10",
    "--group-time-cap",
    "4",
]


@dataclass
class Step:
    """One subprocess of the check. `share`: its part of the time budget; `sweep`: its records
    go to OUT/name (rendered in the report); otherwise it is the test run (JUnit XML in OUT)."""

    name: str
    title: str
    args: list  # after `python -m`
    share: float
    sweep: bool = True


@dataclass
class Outcome:
    step: Step
    allowance_s: float
    command: list
    returncode: int | None = None
    seconds: float = 0.0
    timed_out: bool = False
    tail: list = field(default_factory=list)  # last lines of its output, kept when it failed

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out

    def verdict(self) -> str:
        if self.timed_out:
            return f"stopped at its time allowance ({self.allowance_s:.0f} s)"
        if self.returncode == 0:
            return "ok"
        if self.returncode == 1 and self.step.sweep:
            return "exit 1: some cases not ok (listed in its section)"
        if self.returncode == 1:
            return "exit 1: some tests failed"
        return f"exit {self.returncode}"


def sweep(
    name: str,
    title: str,
    share: float,
    kinds: str,
    backends: str,
    modes: str,
    input_size: int,
    hidden: int,
    batch: str,
    seq_len: int,
    dtype: str = "float32",
) -> Step:
    return Step(
        name,
        title,
        [
            "bench",
            "run",
            "--device",
            "cuda",
            "--kinds",
            kinds,
            "--backends",
            backends,
            "--modes",
            modes,
            "--input-size",
            str(input_size),
            "--hidden-size",
            str(hidden),
            "--batch",
            batch,
            "--seq-len",
            str(seq_len),
            "--dtype",
            dtype,
            "--threads",
            "1",
            *SWEEP_SETTINGS,
        ],
        share,
    )


def steps() -> list[Step]:
    """The plan; shares add up to 1."""
    return [
        Step(
            "cuda-tests",
            "CUDA equivalence tests (float32, float16, bfloat16) and Triton on the GPU",
            ["pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider"],
            0.25,
            sweep=False,
        ),
        sweep(
            "d2l",
            "d2l size (I28 H256 B32 T35): cuDNN vs triton vs fused",
            0.13,
            "lstm,gru,rnn",
            "native,triton,fused",
            "train,infer",
            28,
            256,
            "32",
            35,
        ),
        # compiled: Inductor generates and compiles its kernels in the first call (cold cache)
        sweep(
            "d2l-compiled",
            "d2l size: cuDNN vs compiled (torch.compile, Inductor's Triton)",
            0.22,
            "lstm",
            "native,compiled",
            "train,infer,generate",
            28,
            256,
            "32",
            35,
        ),
        sweep(
            "fastrnns",
            "fastrnns size (I512 H512 B64 T100)",
            0.12,
            "lstm,gru",
            "native,triton,fused",
            "train,infer",
            512,
            512,
            "64",
            100,
        ),
        sweep(
            "flashrnn-bf16",
            "FlashRNN's shape in bfloat16 (I768 H768 B16 T1024)",
            0.13,
            "lstm",
            "native,triton",
            "train,infer",
            768,
            768,
            "16",
            1024,
            "bfloat16",
        ),
        sweep(
            "small-batch",
            "batch 1-16 at hidden 64 (I64 T100): persistent kernel vs cuDNN",
            0.15,
            "lstm,gru",
            "native,triton",
            "infer,train",
            64,
            64,
            "1,2,4,8,16",
            100,
        ),
    ]


def command(step: Step, out: Path, allowance_s: float) -> list:
    """The argv of a step. A sweep stops starting comparison groups at 80% of its allowance, so the
    group in flight can finish; its worker calls are limited to the same."""
    argv = [sys.executable, "-m", *step.args]
    if step.sweep:
        limit = f"{max(10.0, 0.8 * allowance_s):.0f}"
        return argv + ["--out", str(out / step.name), "--budget", limit, "--time-limit", limit]
    return argv + [f"--junitxml={out / (step.name + '.xml')}"]


def run_step(argv: list, timeout_s: float, log: Path) -> tuple[int | None, bool, list]:
    """Run argv in its own process group, output to `log`. At the deadline: SIGINT (pytest and
    `bench run` both stop cleanly and keep what they have), then SIGKILL after GRACE_S.
    Returns (exit status, timed out, last lines of the output)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as f:
        proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        timed_out = False
        try:
            proc.wait(timeout=max(1.0, timeout_s))
        except subprocess.TimeoutExpired:
            timed_out = True
            _signal_group(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=GRACE_S)
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait()
    tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-15:]
    return proc.returncode, timed_out, tail


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:  # it ended in the meantime
        pass


def run_all(
    plan: list[Step],
    out: Path,
    budget_s: float,
    runner: Callable[[list, float, Path], tuple] | None = None,
) -> list[Outcome]:
    """Run the steps in order. Each gets its share of the time still left (time a step leaves
    unused goes to the later ones); a step's failure never stops the others."""
    runner = runner or run_step
    deadline = time.monotonic() + budget_s
    outcomes = []
    for i, step in enumerate(plan):
        left = max(0.0, deadline - time.monotonic())
        allowance = left * step.share / sum(s.share for s in plan[i:])
        if step.sweep:  # a fresh record directory: no stale cases from an earlier check
            shutil.rmtree(out / step.name, ignore_errors=True)
        argv = command(step, out, allowance)
        outcome = Outcome(step, allowance, argv)
        start = time.monotonic()
        print(
            f"[{i + 1}/{len(plan)}] {step.name}: up to {allowance:.0f} s",
            file=sys.stderr,
            flush=True,
        )
        try:
            outcome.returncode, outcome.timed_out, outcome.tail = runner(
                argv, allowance, out / f"{step.name}.log"
            )
        except OSError as exc:  # the command could not start
            outcome.returncode, outcome.tail = -1, [f"{type(exc).__name__}: {exc}"]
        outcome.seconds = time.monotonic() - start
        print(
            f"    {step.name}: {outcome.verdict()} in {outcome.seconds:.0f} s",
            file=sys.stderr,
            flush=True,
        )
        outcomes.append(outcome)
    return outcomes


# --- command line -------------------------------------------------------------------------------
def parse(argv: list) -> argparse.Namespace:
    p = Parser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument(
        "--out", default="runs/gpu", help="records and logs of every step (default runs/gpu)"
    )
    p.add_argument(
        "--report", default="reports/gpu.md", help="markdown report (default reports/gpu.md)"
    )
    p.add_argument(
        "--budget-s",
        type=number(float, 60, 3600),
        default=420.0,
        help="seconds for all steps together (default 420; the report takes a few more)",
    )
    p.add_argument("--no-plots", action="store_true", help="tables only")
    p.add_argument(
        "--dry-run", action="store_true", help="print the commands and their time allowances"
    )
    return p.parse_args(argv)


def cuda_refusal() -> str | None:
    import torch

    if not torch.cuda.is_available():
        return (
            f"{PROG}: error: expected a CUDA GPU, got none (torch {torch.__version__}: "
            "torch.cuda.is_available() is False); --dry-run prints the plan"
        )
    return None


def main(argv: list | None = None) -> int:
    try:
        args = parse(sys.argv[1:] if argv is None else argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    out, report = Path(args.out), Path(args.report)
    plan = steps()
    if args.dry_run:
        for s in plan:
            allowance = args.budget_s * s.share
            print(f"# {s.name} (up to {allowance:.0f} s): {s.title}")
            print(shlex.join(["python"] + command(s, out, allowance)[1:]))
        return 0
    refusal = cuda_refusal()
    if refusal:
        print(refusal, file=sys.stderr)
        return 2
    outcomes = run_all(plan, out, args.budget_s)
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(render(outcomes, out, report, plots=not args.no_plots), encoding="utf-8")
    print(f"report written to {report}", file=sys.stderr)
    return 0 if all(o.ok for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
