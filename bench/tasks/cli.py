"""`python -m bench train TASK ...`: train one textbook task (the task list: bench.tasks.TASKS)."""

from __future__ import annotations

import argparse
import sys

from bench.data import DataError

from . import TASKS, runner


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(
        dest="task", metavar="TASK", required=True, help="one of: " + ", ".join(TASKS)
    )
    for name in TASKS:
        task = runner.spec(name)
        p = sub.add_parser(name, help=task.description, description=task.description)
        runner.configure(p, task)
        p.set_defaults(task_main=p.get_default("func"), func=main)
    parser.set_defaults(func=main)


def main(args) -> int:
    task_main = getattr(args, "task_main", None)
    if task_main is None:
        print(f"error: expected a task, one of {', '.join(TASKS)}", file=sys.stderr)
        return 2
    try:
        return int(task_main(args) or 0)
    except (DataError, ValueError, RuntimeError, ImportError, argparse.ArgumentTypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
