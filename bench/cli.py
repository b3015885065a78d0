"""`python -m bench COMMAND`: each command lives in its own module, imported only when used.

A command module defines `configure(parser)`, which adds its arguments and sets
`func=main` via parser.set_defaults; `main(args)` returns the exit status.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("bench.sweep", "measure a grid of kinds x backends x modes x shapes"),
    "report": ("bench.report", "render markdown tables and plots from record directories"),
    "train": ("bench.tasks.cli", "train one textbook task (charlm, names, anbn, poems)"),
    "tasks": ("bench.tasks.suite", "run all four textbook tasks (--short or --full settings)"),
    "validate": ("bench.validate", "check a new kernel against torch.nn and the built-ins"),
    "compare": ("bench.compare", "speed-regression gate: compare a run with a baseline"),
}


class UsageError(ValueError):
    """Bad command-line input: one line on stderr, exit status 2, before any measurement."""


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error (naming the option and the valid range) and exit 2."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


# --- option types shared by every command ------------------------------------------------------
def number(
    kind: type = float, low: float | None = None, high: float | None = None, low_open: bool = False
) -> Callable[[str], float]:
    """An argparse type: a number of `kind` within [low, high] (low excluded if low_open)."""
    bound = "" if low is None else (f"> {low:g}" if low_open else f">= {low:g}")
    if high is not None:
        bound = (bound + " and " if bound else "") + f"<= {high:g}"
    what = ("an integer" if kind is int else "a number") + (f" {bound}" if bound else "")

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if (
            value != value
            or (low is not None and (value <= low if low_open else value < low))
            or (high is not None and value > high)
        ):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


def split_list(value: str | Sequence, cast: Callable = str, name: str = "") -> list:
    """'a,b,c' -> [cast(a), cast(b), cast(c)], with an error naming the option."""
    if isinstance(value, (list, tuple)):
        items = [str(v) for v in value]
    else:
        items = [v.strip() for v in str(value).split(",") if v.strip()]
    if not items:
        prefix = f"{name}: " if name else ""
        raise argparse.ArgumentTypeError(f"{prefix}expected a comma-separated list, got {value!r}")
    out = []
    for v in items:
        try:
            out.append(cast(v))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{name or 'value'}: {v!r} is not a valid {getattr(cast, '__name__', 'value')}"
            ) from None
    return out


def list_of(cast: Callable, name: str) -> Callable[[str], list]:
    def parse(value: str) -> list:
        return split_list(value, cast, name)

    parse.__name__ = f"list of {getattr(cast, '__name__', 'value')}"
    return parse


def csv(kind: type = str, low: int | None = 1) -> Callable[[str], list]:
    """An argparse type: a comma-separated list (of integers >= low when kind is int)."""

    def parse(text: str) -> list:
        items = split_list(text)
        if kind is int:
            check = number(int, low)
            return [check(t) for t in items]
        return items

    return parse


def import_modules(names: list[str]) -> None:
    """Import `--import` modules (they register third-party backends); UsageError if one fails.
    Modules are looked up relative to the working directory too, as `python -m` users expect."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as exc:
            raise UsageError(
                f"--import {name}: {type(exc).__name__}: {exc}".splitlines()[0]
            ) from None


def add_import_option(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE",
        help="import MODULE first (it registers third-party backends); repeatable",
    )


def check_names(values, valid, what: str) -> None:
    """UsageError naming the valid choices for the first value not among them."""
    valid = list(valid)
    for v in values:
        if v not in valid:
            raise UsageError(f"unknown {what} {v!r}; valid: {', '.join(valid)}")


def warn_threads(threads: list[int]) -> None:
    """A thread count above the machine's cores oversubscribes them: times become meaningless."""
    cores = os.cpu_count() or 1
    too_many = [t for t in threads if t > cores]
    if too_many:
        print(
            f"warning: --threads {max(too_many)} exceeds this machine's {cores} cores: threads will "
            "compete for cores and the timings will not mean much",
            file=sys.stderr,
        )


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = Parser(prog="python -m bench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=Parser
    )
    wanted = next((a for a in argv if not a.startswith("-")), None)
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == wanted:  # import only the command in use: numba, matplotlib etc. are slow
            importlib.import_module(module_name).configure(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = build_parser(argv).parse_args(argv)
    except SystemExit as exc:  # usage errors (2) and --help (0), already printed
        return exc.code if isinstance(exc.code, int) else 2
    try:
        return int(args.func(args) or 0)
    except UsageError as exc:
        print(f"python -m bench {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: records written so far are kept", file=sys.stderr)
        return 130
