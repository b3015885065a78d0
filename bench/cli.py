"""`python -m bench COMMAND`: each command lives in its own module, imported only when used.

A command module defines `configure(parser)`, which adds its arguments and sets
`func=main` via parser.set_defaults; `main(args)` returns the exit status.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional

COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("bench.sweep", "measure a grid of kinds x backends x modes x shapes"),
    "report": ("bench.report", "render markdown tables and plots from record directories"),
    "train": ("bench.tasks.cli", "train one textbook task (charlm, names, anbn, poems)"),
    "tasks": ("bench.tasks.suite", "run all four textbook tasks (--short or --full settings)"),
    "validate": ("bench.validate", "check a new kernel against torch.nn and the built-ins"),
    "compare": ("bench.compare", "speed-regression gate: compare a run with a baseline"),
}


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    wanted = next((a for a in argv if not a.startswith("-")), None)
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == wanted:  # import only the command in use: numba, matplotlib etc. are slow
            importlib.import_module(module_name).configure(p)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted: records written so far are kept", file=sys.stderr)
        return 130
