"""`python -m bench tasks --short|--full --out DIR`: all four textbook tasks in one go.

--short: small slices, a few epochs: minutes in total on 2 CPU cores (CI, `nox -s bench`).
--full: the textbook settings (`nox -s textbook`): hours on 2 CPU cores.
Each task runs through its own CLI entry point with the argument lists below, so a run here is
reproducible by hand with `python -m bench train TASK ...`.
"""

from __future__ import annotations

import argparse
import sys
import time

from bench import records

from . import TASKS, runner
from .common import check_kinds_backends, list_of, split_list

# --short: one to a few passes each, tuned so that the results mean something (docs/tasks.md,
# "Suite settings"): charlm with Adam (SGD at lr 1 sits on a plateau for its first ~20 epochs),
# names over all training names at lr 0.01 (at 3e-3 two epochs only learn the big classes: no
# diagonal in the confusion matrix), anbn with Adam at lr 0.03 (lr 1e-3 needs ~10x the steps).
SHORT: dict[str, list[str]] = {
    "charlm": ["--epochs", "10", "--val-every", "5", "--optimizer", "adam"],
    "names": ["--epochs", "2", "--lr", "0.01", "--model", "cell"],
    "anbn": ["--steps", "1000", "--lr", "0.03", "--seeds", "0,1"],
    "poems": ["--epochs", "1", "--max-poems", "500", "--lab-loop-poems", "16"],
}
FULL: dict[str, list[str]] = {
    "charlm": ["--epochs", "500"],  # d2l: 500 epochs, 10k chars, H 256, b 32, T 35
    "names": ["--epochs", "10", "--layers", "1,2", "--model", "cell,elman"],
    "anbn": ["--steps", "10000", "--seeds", "0,1,2,3,4,5,6,7,8,9"],
    "poems": ["--epochs", "10", "--corpus", "full"],
}
DEFAULTS = {
    "short": ("lstm", "native,fused"),
    "full": ("rnn,gru,lstm", "naive,fused,scripted,native"),
}


def configure(parser: argparse.ArgumentParser) -> None:
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument(
        "--short",
        dest="mode",
        action="store_const",
        const="short",
        help="small slices, a few epochs (minutes)",
    )
    mode.add_argument(
        "--full",
        dest="mode",
        action="store_const",
        const="full",
        help="the textbook settings (hours on 2 CPU cores)",
    )
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--resume", action="store_true", help="skip runs already recorded in --out")
    parser.add_argument(
        "--kinds",
        "--kind",
        dest="kinds",
        default=None,
        help="cell kinds, comma list (short: lstm; full: rnn,gru,lstm)",
    )
    parser.add_argument(
        "--backends",
        "--backend",
        dest="backends",
        default=None,
        help="backends, comma list (short: native,fused; full: naive,fused,scripted,native)",
    )
    parser.add_argument(
        "--tasks",
        type=list_of(str, "--tasks"),
        default=list(TASKS),
        help=f"which tasks, comma list of {', '.join(TASKS)} (default all)",
    )
    parser.add_argument(
        "--data", default=None, help="data directory (else $CELLBENCH_DATA, cache, download)"
    )
    parser.add_argument(
        "--threads", default="1", help="torch threads per task (0: torch's default)"
    )
    parser.set_defaults(func=main)


def task_argv(
    task: str,
    mode: str,
    out: str,
    kinds: str,
    backends: str,
    resume: bool = False,
    data: str | None = None,
    threads: str = "1",
) -> list[str]:
    argv = list((SHORT if mode == "short" else FULL)[task])
    argv += [
        "--kind",
        kinds,
        "--backend",
        backends,
        "--out",
        out,
        "--threads",
        str(threads),
        "--suite",
        mode,
    ]
    if resume:
        argv.append("--resume")
    if data:
        argv += ["--data", data]
    return argv


def _threads(value: str) -> int:
    try:
        threads = int(value)
    except ValueError:
        threads = -1
    if threads < 0:
        raise ValueError(f"--threads must be an integer >= 0 (0: torch's default), got {value!r}")
    return threads


def _failure_record(task: str, mode: str, kinds: str, backends: str, reason: str) -> dict:
    return {
        "type": "task",
        "status": "failed",
        "task": task,
        "mode": mode,
        "kind": kinds,
        "backend": backends,
        "reason": reason,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def main(args) -> int:
    """Exit 2 for bad options (before any run); else run every task, record a failed one
    (status 'failed' and the reason) and go on; exit 1 at the end if any failed."""
    unknown = [t for t in args.tasks if t not in TASKS]
    kinds, backends = DEFAULTS[args.mode]
    kinds, backends = args.kinds or kinds, args.backends or backends
    try:
        if unknown:
            raise ValueError(
                f"--tasks: unknown task(s) {', '.join(unknown)}; expected any of {', '.join(TASKS)}"
            )
        threads = _threads(args.threads)
        check_kinds_backends(
            split_list(kinds, str, "--kinds"), split_list(backends, str, "--backends")
        )
    except (ValueError, RuntimeError, argparse.ArgumentTypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    failures = []
    started = time.perf_counter()
    for task in args.tasks:
        parser = argparse.ArgumentParser(prog=f"python -m bench train {task}")
        runner.configure(parser, runner.spec(task))
        argv = task_argv(
            task, args.mode, args.out, kinds, backends, args.resume, args.data, str(threads)
        )
        print(f"== {task}: python -m bench train {task} {' '.join(argv)}", flush=True)
        t0 = time.perf_counter()
        reason = None
        try:
            parsed = parser.parse_args(argv)
            status = int(parsed.func(parsed) or 0)
            if status:
                reason = f"exit status {status}"
        except Exception as exc:  # one failed task is recorded; the others still run
            reason = f"{type(exc).__name__}: {exc}"
        except SystemExit as exc:  # argparse refusing the suite's own argument list
            reason = f"bad arguments for {task} (exit status {exc.code})"
        if reason:
            print(f"error: {task}: {reason}", file=sys.stderr)
            records.append(args.out, _failure_record(task, args.mode, kinds, backends, reason))
            failures.append(task)
        print(
            f"== {task}: {'FAILED' if reason else 'ok'} in {time.perf_counter() - t0:.1f} s",
            flush=True,
        )
    print(
        f"tasks ({args.mode}): {len(args.tasks) - len(failures)}/{len(args.tasks)} ok in "
        f"{time.perf_counter() - started:.1f} s; records in {args.out}"
        + (f"; failed: {', '.join(failures)}" if failures else "")
    )
    return 1 if failures else 0
