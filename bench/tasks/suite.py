"""`python -m bench tasks --short|--full --out DIR`: all four textbook tasks in one go.

--short: small slices, a few epochs: minutes in total on 2 CPU cores (CI, `nox -s bench`).
--full: the textbook settings (`nox -s textbook`): hours on 2 CPU cores.
Each task runs through its own CLI entry point with the argument lists below, so a run here is
reproducible by hand with `python -m bench train TASK ...`.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import time

from bench.data import DataError

from .common import check_kinds_backends, list_of, split_list

SHORT: dict[str, list[str]] = {
    "charlm": ["--epochs", "10", "--val-every", "5"],
    "names": ["--epochs", "2", "--max-train", "3000", "--model", "cell"],
    "anbn": ["--steps", "1000", "--seeds", "0,1"],
    "poems": ["--epochs", "1", "--max-poems", "500", "--lab-loop-poems", "16"],
}
FULL: dict[str, list[str]] = {
    "charlm": ["--epochs", "500"],                       # d2l: 500 epochs, 10k chars, H 256, b 32, T 35
    "names": ["--epochs", "10", "--layers", "1,2", "--model", "cell,elman"],
    "anbn": ["--steps", "10000", "--seeds", "0,1,2,3,4,5,6,7,8,9"],
    "poems": ["--epochs", "10"],
}
DEFAULTS = {"short": ("lstm", "native,fused"), "full": ("rnn,gru,lstm", "naive,fused,scripted,native")}


def configure(parser: argparse.ArgumentParser) -> None:
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--short", dest="mode", action="store_const", const="short",
                      help="small slices, a few epochs (minutes)")
    mode.add_argument("--full", dest="mode", action="store_const", const="full",
                      help="the textbook settings (hours on 2 CPU cores)")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--resume", action="store_true", help="skip runs already recorded in --out")
    parser.add_argument("--kinds", "--kind", dest="kinds", default=None,
                        help="cell kinds, comma list (short: lstm; full: rnn,gru,lstm)")
    parser.add_argument("--backends", "--backend", dest="backends", default=None,
                        help="backends, comma list (short: native,fused; full: naive,fused,scripted,native)")
    parser.add_argument("--tasks", type=list_of(str, "--tasks"), default=["charlm", "names", "anbn", "poems"],
                        help="which tasks, comma list (default all four)")
    parser.add_argument("--data", default=None, help="data directory (else $CELLBENCH_DATA, cache, download)")
    parser.add_argument("--threads", default="1", help="torch threads per task (0: torch's default)")
    parser.set_defaults(func=main)


def task_argv(task: str, mode: str, out: str, kinds: str, backends: str, resume: bool = False,
              data: str | None = None, threads: str = "1") -> list[str]:
    argv = list((SHORT if mode == "short" else FULL)[task])
    argv += ["--kind", kinds, "--backend", backends, "--out", out, "--threads", str(threads)]
    if resume:
        argv.append("--resume")
    if data:
        argv += ["--data", data]
    return argv


def main(args) -> int:
    unknown = [t for t in args.tasks if t not in SHORT]
    if unknown:
        raise SystemExit(f"error: unknown task(s) {', '.join(unknown)}; expected charlm, names, anbn, poems")
    kinds, backends = DEFAULTS[args.mode]
    kinds, backends = args.kinds or kinds, args.backends or backends
    try:
        check_kinds_backends(split_list(kinds, str, "--kinds"), split_list(backends, str, "--backends"))
    except (ValueError, RuntimeError, argparse.ArgumentTypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    failures = []
    started = time.perf_counter()
    for task in args.tasks:
        module = importlib.import_module(f"bench.tasks.{task}")
        parser = argparse.ArgumentParser(prog=f"python -m bench train {task}")
        module.configure(parser)
        argv = task_argv(task, args.mode, args.out, kinds, backends, args.resume, args.data, args.threads)
        print(f"== {task}: python -m bench train {task} {' '.join(argv)}", flush=True)
        t0 = time.perf_counter()
        try:
            status = int(module.main(parser.parse_args(argv)) or 0)
        except (DataError, ValueError, RuntimeError) as exc:
            print(f"error: {task}: {exc}", file=sys.stderr)
            status = 2
        print(f"== {task}: {'ok' if status == 0 else f'FAILED ({status})'} in "
              f"{time.perf_counter() - t0:.1f} s", flush=True)
        if status:
            failures.append(task)
    print(f"tasks ({args.mode}): {len(args.tasks) - len(failures)}/{len(args.tasks)} ok in "
          f"{time.perf_counter() - started:.1f} s; records in {args.out}")
    return 1 if failures else 0
