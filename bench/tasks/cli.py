"""`python -m bench train TASK ...`: train one textbook task (charlm, names, anbn, poems)."""

from __future__ import annotations

import argparse
import importlib
import sys

from bench.data import DataError

TASKS = {
    "charlm": "character language model on The Time Machine (d2l ch. 8-9)",
    "names": "names -> language classification (PyTorch char-RNN tutorial)",
    "anbn": "a^n b^n next-symbol prediction, memory capacity over seeds",
    "poems": "Tang poetry generation (embedding + 2-layer cell)",
}


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(
        dest="task", metavar="TASK", required=True, help="one of: " + ", ".join(TASKS)
    )
    for name, help_text in TASKS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        importlib.import_module(f"bench.tasks.{name}").configure(p)
        p.set_defaults(task_main=p.get_default("func"), func=main)
    parser.set_defaults(func=main)


def main(args) -> int:
    task_main = getattr(args, "task_main", None)
    if task_main is None:
        print(f"error: expected a task, one of {', '.join(TASKS)}", file=sys.stderr)
        return 2
    try:
        return int(task_main(args) or 0)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, RuntimeError, argparse.ArgumentTypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
