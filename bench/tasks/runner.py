"""The one task protocol and the one grid runner.

A lab module (charlm, names, anbn, poems) describes itself with a `TaskSpec`: its options, how it
loads its data, the grid of runs a command line asks for, one run, a line per record, its plots
and its report section. Everything else is here, once: option checks, threads, the device,
resume, appending records, printing and plotting; `python -m bench train TASK` calls `main`.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch

from bench import records

from . import TASKS
from .common import (
    Rule,
    add_common_arguments,
    apply_threads,
    check_device,
    check_kinds_backends,
    check_options,
)


def run_key(task: str, kind: str, backend: str, seed: int, settings: dict) -> str:
    """A stable id of one run's configuration, for --resume."""
    blob = json.dumps(
        {"task": task, "kind": kind, "backend": backend, "seed": seed, "settings": settings},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def done_keys(out_dir: str | os.PathLike) -> set[str]:
    if not Path(out_dir).exists():
        return set()
    return {
        str(r["run_key"])
        for r in records.iter_records([out_dir])
        if r.get("type") == "task" and r.get("run_key")
    }


def environment() -> dict[str, Any]:
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "host": platform.node(),
    }


def provenance(record: dict, args, data_source: str | None = None) -> dict:
    """Add where the data came from (bench.data.SOURCES) and the suite mode, if any."""
    if data_source is not None:
        record["data_source"] = data_source
    if getattr(args, "suite", None):
        record["suite"] = args.suite
    return record


def task_record(
    task: str, run: Run, metrics: dict, curves: dict, timings: dict, **extra: Any
) -> dict:
    """The record of one finished run (extra: the task's own fields)."""
    kind, backend, seed, settings = run.kind, run.backend, run.seed, run.settings
    record = {
        "type": "task",
        "status": "ok",
        "task": task,
        "kind": kind,
        "backend": backend,
        "seed": seed,
        "run_key": run_key(task, kind, backend, seed, settings),
        "settings": settings,
        "metrics": metrics,
        "curves": curves,
        "timings": timings,
        "env": environment(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    record.update(extra)
    return record


def append(out_dir: str | os.PathLike, record: dict) -> None:
    """records.append under an exclusive lock on OUT/.records.lock: `tasks --jobs 2` runs two
    grids that write one records.jsonl, and a long record is more than one write() call."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    with open(Path(out_dir) / ".records.lock", "a") as lock:
        try:
            import fcntl

            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        except ImportError:  # Windows: no fcntl; the suite runs one job there
            pass
        records.append(out_dir, record)


class Loaded(NamedTuple):
    """A task's data and which copy it came from (bench.data's source; None for generated data)."""

    data: Any
    source: str | None = None


@dataclass(frozen=True)
class Run:
    """One run of the grid: the kind and backend it is recorded under, its seed, its settings
    (every hyper-parameter, the protocol among them: they make its resume key)."""

    kind: str
    backend: str
    seed: int
    settings: dict


@dataclass(frozen=True)
class TaskSpec:
    name: str
    description: str
    configure: Callable[[argparse.ArgumentParser], None]  # the task's own options
    rules: Sequence[Rule]
    load: Callable[[argparse.Namespace], Loaded]
    runs: Callable[[argparse.Namespace, Any], list[Run]]
    run: Callable[..., dict]  # (Run, data, device=, show_progress=) -> record
    line: Callable[[dict], str]  # one printed line per record
    plot: Callable[[list[dict], Path, str], Any]  # (records, out_dir, stem)
    section: Callable[[list[dict], Path], str]  # markdown for the report
    # lab vs cellbench: (record metric, lab_numbers metric) of the lab's headline figure,
    # (record metric, label) of cellbench's held-out figure, and the lab protocol's flaws
    lab_metric: tuple[str, str] = ("", "")
    heldout_metric: tuple[str, str] = ("", "")
    flaws: str = ""
    summary: Callable[[list[dict]], list[str]] = lambda runs: []
    defaults: dict = field(default_factory=lambda: {"kinds": "lstm", "backends": "native"})


def task_spec(module: str, **fields: Any) -> TaskSpec:
    """The TaskSpec of a lab module, called at its end: the functions configure, load, runs,
    run, line, plot and section, and RULES, COMPARED ((record metric, lab_numbers metric) of
    the lab's figure, (record metric, label) of cellbench's held-out one) and FLAWS, by name;
    the description is the first line of its docstring; `fields` gives the rest."""
    m = sys.modules[module]
    names = ("configure", "load", "runs", "run", "line", "plot", "section")
    found = {n: getattr(m, n) for n in names}
    description = (m.__doc__ or "").strip().splitlines()[0].rstrip(".")
    lab_metric, heldout_metric = m.COMPARED
    return TaskSpec(
        module.rsplit(".", 1)[-1],
        description,
        rules=m.RULES,
        lab_metric=lab_metric,
        heldout_metric=heldout_metric,
        flaws=m.FLAWS,
        **found,
        **fields,
    )


def spec(name: str) -> TaskSpec:
    """The TaskSpec of a task named in TASKS."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; expected one of {', '.join(TASKS)}")
    return importlib.import_module(f"bench.tasks.{name}").TASK


def configure(parser: argparse.ArgumentParser, task: TaskSpec) -> None:
    add_common_arguments(parser, **task.defaults)
    task.configure(parser)
    parser.set_defaults(func=lambda args: main(task, args))


def main(task: TaskSpec, args: argparse.Namespace) -> int:
    """Check every option before any work, then run the grid: one record appended per run as it
    finishes, runs already recorded skipped under --resume, then the summary and the plots."""
    check_options(args, task.rules)
    device = check_device(args)
    apply_threads(args)
    check_kinds_backends(args.kinds, args.backends)
    loaded = task.load(args)
    grid = task.runs(args, loaded.data)
    done = done_keys(args.out) if args.resume else set()
    written = []
    for run in grid:
        if device != "cpu":  # a GPU run is another configuration for --resume (CPU keys unchanged)
            run = Run(run.kind, run.backend, run.seed, {**run.settings, "device": device})
        if run_key(task.name, run.kind, run.backend, run.seed, run.settings) in done:
            print(
                f"{task.name} {run.kind}/{run.backend} seed {run.seed}: already recorded, skipped"
            )
            continue
        record = task.run(run, loaded.data, device=device, show_progress=args.progress)
        record["protocol"] = run.settings.get("protocol", "cellbench")
        record["device"] = device
        provenance(record, args, loaded.source)
        append(args.out, record)
        written.append(record)
        print(task.line(record), flush=True)
    for text in task.summary(written):
        print(text)
    if written and not args.no_plots:
        task.plot(written, Path(args.out), task.name)
    return 0
