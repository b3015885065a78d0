"""Helpers for the textbook-task tests: `python -m bench train` with options as keywords, and the
records a run wrote."""

from __future__ import annotations

import json
from pathlib import Path

from bench.cli import main as bench_main


def argv(**options: object) -> list[str]:
    """--option value pairs from keywords (underscores become dashes; True: a bare flag)."""
    out: list[str] = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            out.append(flag)
        elif value is not None and value is not False:
            out += [flag, str(value)]
    return out


def train(task: str, out: Path, **options: object) -> int:
    """The exit status of `python -m bench train TASK --out OUT --OPTION VALUE ...`."""
    return bench_main(["train", task, "--out", str(out), *argv(**options)])


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(out) / "records.jsonl").read_text().splitlines()]
