"""`python -m bench tasks --short|--full --out DIR`: every textbook task in one go.

--short: small slices, a few epochs: about a minute on 2 CPU cores (CI, `nox -s bench`).
--full: every lab at its own settings (`nox -s textbook`): the lab's protocol with several seeds
where a lab's result depends on them, cellbench's held-out protocol beside it, and a short
naive/native pair for the speed ratio; within an hour on 2 CPU cores (docs/tasks.md).
Each task runs through its own CLI entry point with the argument lists below, so a run here is
reproducible by hand with `python -m bench train TASK ...`.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time

from . import TASKS, runner
from .common import check_kinds_backends, list_of, split_list

# --short: one to a few passes each, tuned so that the results mean something (docs/tasks.md,
# "Suite settings"): charlm with Adam (SGD at lr 1 sits on a plateau for its first ~20 epochs),
# names over all training names at lr 0.01 (at 3e-3 two epochs only learn the big classes: no
# diagonal in the confusion matrix), anbn with Adam at lr 0.03 (lr 1e-3 needs ~10x the steps).
Command = tuple[str, float]  # (arguments of `bench train TASK`, CPU minutes it takes, measured)
SHORT: dict[str, list[Command]] = {
    "charlm": [("--epochs 10 --val-every 5 --optimizer adam", 0.3)],
    "names": [("--epochs 2 --lr 0.01 --model cell", 0.2)],
    "anbn": [("--steps 1000 --lr 0.03 --seeds 0,1", 0.2)],
    "poems": [("--epochs 1 --max-poems 500 --lab-loop-poems 16", 0.1)],
}
# --full: per task, the lab's protocol at the lab's settings, cellbench's protocol (held-out
# figures) and a short naive/native pair at the lab's settings (the speed ratio). Main runs use
# FULL_BACKEND: native, the fastest correct backend for these labs' models on one CPU thread
# (measured per lab against fused, numba, scripted and naive: docs/tasks.md); every record names
# the backend that ran. The minutes are CPU minutes on one thread of the 2-core machine the suite
# is sized for; `--jobs 2` (the default for --full) runs the longest first, two at a time.
FULL_BACKEND = {"charlm": "native", "names": "native", "anbn": "native", "poems": "native"}
FULL: dict[str, list[Command]] = {
    "charlm": [
        ("--protocol lab --variant concise-lstm --epochs 500 --val-every 50", 1.8),
        ("--kind lstm --epochs 500 --val-every 10", 2.0),
        # the other 15 lab variants at 500 epochs, in three groups of about equal CPU time
        # (estimates from concise-lstm's 1.8: hidden 512 x3, batch 16 or 2 layers x2, RNN less)
        (
            "--protocol lab --variant scratch-lstm,scratch-lstm-adam-lr-0.001,"
            "scratch-lstm-xavier-init,scratch-lstm-kaiming-init,concise-lstm-batch-64,"
            "scratch-rnn-hidden-512 --epochs 500 --val-every 50",
            10.1,
        ),
        (
            "--protocol lab --variant concise-lstm-larger-hidden,concise-lstm-batch-16,"
            "concise-lstm-num_steps-60 --epochs 500 --val-every 50",
            10.8,
        ),
        (
            "--protocol lab --variant concise-lstm-lr-5,concise-lstm-lr-0.1,2-layer-lstm-lr-2,"
            "2-layer-gru-lr-2,concise-rnn,concise-rnn-2-layer --epochs 500 --val-every 50",
            11.7,
        ),
        (
            "--protocol lab --variant concise-lstm --epochs 3 --val-every 0 --backend naive,native",
            0.2,
        ),
    ],
    "names": [
        ("--protocol lab --model elman", 2.5),
        ("--protocol lab --model cell --kind lstm --layers 2", 5.5),
        ("--model cell,elman --kind lstm --layers 2 --epochs 10", 1.5),
        (
            "--protocol lab --model cell --kind lstm --layers 2 --steps 2000 --backend naive,native",
            1.0,
        ),
    ],
    "anbn": [
        ("--protocol lab --kind rnn --seeds 0,1,2,3,4", 16.0),
        ("--protocol lab --kind lstm --seeds 0,1,2,3,4", 6.0),
        ("--kind rnn,lstm --seeds 0,1,2,3,4 --steps 10000", 3.0),
        ("--protocol lab --kind rnn,lstm --seeds 0 --steps 2000 --backend naive,native", 0.4),
    ],
    "poems": [
        ("--protocol lab --corpus full --kind lstm --epochs 4 --seeds 5 --lab-loop-poems 0", 31.0),
        ("--corpus full --kind lstm --epochs 1 --lab-loop-poems 100", 5.5),
        (
            "--protocol lab --corpus full --max-poems 2000 --epochs 1 --seeds 5 "
            "--lab-loop-poems 0 --backend naive,native",
            1.5,
        ),
    ],
}
DEFAULTS = {"short": ("lstm", "native,fused"), "full": (None, None)}


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
        help="every lab at its own settings (within an hour on 2 CPU cores)",
    )
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--resume", action="store_true", help="skip runs already recorded in --out")
    parser.add_argument(
        "--kinds",
        "--kind",
        dest="kinds",
        default=None,
        help="cell kinds, comma list, replacing each run's own (short: lstm; full: the lab's)",
    )
    parser.add_argument(
        "--backends",
        "--backend",
        dest="backends",
        default=None,
        help="backends, comma list, replacing each run's own (short: native,fused; full: "
        "FULL_BACKEND, and naive,native for the speed ratio)",
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
    parser.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="runs at once, each in its own process on one thread (default: 2 for --full, "
        "the 2 cores it is sized for; 1 for --short)",
    )
    parser.set_defaults(func=main)


def task_argvs(
    task: str,
    mode: str,
    out: str,
    kinds: str | None,
    backends: str | None,
    resume: bool = False,
    data: str | None = None,
    threads: str = "1",
) -> list[list[str]]:
    """The argument lists of `python -m bench train TASK` that the suite runs for one task.
    kinds / backends (the suite's --kinds / --backends) replace each run's own when given;
    in --full a run that names no backend gets FULL_BACKEND's."""
    argvs = []
    for command, _ in (SHORT if mode == "short" else FULL)[task]:
        argv = shlex.split(command)
        if mode == "full" and "--backend" not in argv:
            argv += ["--backend", FULL_BACKEND[task]]
        argv += ["--kind", kinds] if kinds else []
        argv += ["--backend", backends] if backends else []
        argv += ["--out", out, "--threads", str(threads), "--suite", mode]
        argv += ["--resume"] if resume else []
        argv += ["--data", data] if data else []
        argvs.append(argv)
    return argvs


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


def _run_task(task: str, argv: list[str]) -> str | None:
    """Run one argument list of a task; the reason it failed, or None."""
    print(f"== {task}: python -m bench train {task} {shlex.join(argv)}", flush=True)
    parser = argparse.ArgumentParser(prog=f"python -m bench train {task}")
    runner.configure(parser, runner.spec(task))
    t0, reason = time.perf_counter(), None
    try:
        parsed = parser.parse_args(argv)
        status = int(parsed.func(parsed) or 0)
        reason = f"exit status {status}" if status else None
    except Exception as exc:  # one failed task is recorded; the others still run
        reason = f"{type(exc).__name__}: {exc}"
    except SystemExit as exc:  # argparse refusing the suite's own argument list
        reason = f"bad arguments for {task} (exit status {exc.code})"
    took = time.perf_counter() - t0
    print(f"== {task}: {'FAILED' if reason else 'ok'} in {took:.1f} s", flush=True)
    return reason


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
        if args.jobs is not None and args.jobs < 1:
            raise ValueError(f"--jobs must be an integer >= 1, got {args.jobs}")
        check_kinds_backends(
            split_list(kinds or "lstm", str, "--kinds"),
            split_list(backends or "native", str, "--backends"),
        )
    except (ValueError, RuntimeError, argparse.ArgumentTypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    jobs = args.jobs or (2 if args.mode == "full" else 1)
    started = time.perf_counter()
    commands = [
        (task, argv, minutes)
        for task in args.tasks
        for argv, (_, minutes) in zip(
            task_argvs(
                task, args.mode, args.out, kinds, backends, args.resume, args.data, str(threads)
            ),
            (SHORT if args.mode == "short" else FULL)[task],
        )
    ]
    total = sum(minutes for *_, minutes in commands)
    print(
        f"tasks ({args.mode}): {len(commands)} runs, about {total:.0f} CPU minutes, {jobs} at a time"
    )
    commands.sort(key=lambda c: -c[2])  # the longest first: two workers finish together
    if jobs > 1:  # each run one thread; spawn: a fresh interpreter per worker, safe with torch
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
            tasks, argvs = [c[0] for c in commands], [c[1] for c in commands]
            reasons = list(pool.map(_run_task, tasks, argvs))
    else:
        reasons = [_run_task(task, argv) for task, argv, _ in commands]
    failures = []
    for (task, *_), reason in zip(commands, reasons):
        if reason:
            print(f"error: {task}: {reason}", file=sys.stderr)
            failure = _failure_record(task, args.mode, kinds or "", backends or "", reason)
            runner.append(args.out, failure)
            failures += [] if task in failures else [task]
    print(
        f"tasks ({args.mode}): {len(args.tasks) - len(failures)}/{len(args.tasks)} ok in "
        f"{time.perf_counter() - started:.1f} s; records in {args.out}"
        + (f"; failed: {', '.join(failures)}" if failures else "")
    )
    return 1 if failures else 0
