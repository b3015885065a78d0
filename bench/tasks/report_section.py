"""Markdown for the textbook tasks, for `python -m bench report`.

render(paths, out_dir) reads the `type: "task"` records under `paths`, writes its PNG plots into
out_dir and returns markdown: for every task of the task list that has records, its own section
(the lab module's `section`), then "lab vs cellbench", the lab's reported figure beside
cellbench's runs of it. Links are relative to out_dir (or link_base).
"""

from __future__ import annotations

import json
import os
import re
import statistics
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from bench.records import iter_records

from . import TASKS


def latest(records: list[dict]) -> list[dict]:
    """One record per run configuration: the last written."""
    by_key: dict = {}
    for r in records:
        by_key[r.get("run_key") or id(r)] = r
    return list(by_key.values())


def table(rows: list[dict], floatfmt: str = ".4g") -> str:
    if not rows:
        return "_no runs_\n"
    return pd.DataFrame(rows).to_markdown(index=False, floatfmt=floatfmt) + "\n"


def link(path: Path, out_dir: Path, alt: str) -> str:
    rel = os.path.relpath(path, out_dir).replace(os.sep, "/")
    return f"![{alt}]({rel})\n"


def protocol(record: dict) -> str:
    return record.get("protocol") or record.get("settings", {}).get("protocol") or "cellbench"


def _spread(values: list[float]) -> str:
    if not values:
        return ""
    median = statistics.median(values)
    if len(values) == 1:
        return f"{median:.4g} (1 seed)"
    return f"{median:.4g} [{min(values):.4g}-{max(values):.4g}] ({len(values)} seeds)"


def _settings_key(record: dict) -> str:
    return json.dumps(record["settings"], sort_keys=True, default=str)


def speed_pair_keys(runs: list[dict]) -> set[str]:
    """The settings of the short naive/native speed pairs: every configuration also run on the
    naive backend. Those runs feed only the speed column, never a row of the lab table."""
    return {_settings_key(r) for r in runs if r["backend"] == "naive"}


def _speed_ratio(runs: list[dict], kind: str) -> str:
    """native tokens/s over naive tokens/s, from runs of one kind whose settings match but for
    the backend (the same protocol, sizes and steps): how much faster torch.nn runs the lab's
    model than the from-scratch cell."""
    by: dict[str, dict[str, list[float]]] = {}
    for r in runs:
        tps = r["metrics"].get("tokens_per_s")
        if r["kind"] == kind and tps:
            by.setdefault(_settings_key(r), {}).setdefault(r["backend"], []).append(tps)
    ratios = [
        statistics.median(b["native"]) / statistics.median(b["naive"])
        for b in by.values()
        if b.get("native") and b.get("naive")
    ]
    return f"{statistics.median(ratios):.2f}x" if ratios else "not measured"


def lab_vs_cellbench(task: str, runs: list[dict]) -> str:
    """One row per lab variant: the lab's reported figure, cellbench's runs of the lab's
    protocol at the lab's length (median, range over seeds), the verdict under
    verdict.TOLERANCES with its evidence, cellbench's held-out figure for the same kind
    (`--protocol cellbench`) and the native / naive speed ratio of the short speed pairs."""
    from . import lab_numbers, verdict
    from .runner import spec

    task_spec = spec(task)
    key, lab_metric = task_spec.lab_metric
    held_key, held_label = task_spec.heldout_metric
    speed = speed_pair_keys(runs)
    lab_runs = [r for r in runs if protocol(r) == "lab" and _settings_key(r) not in speed]
    ours = [r for r in runs if protocol(r) == "cellbench"]
    figures = [f for f in lab_numbers.for_task(task) if f.metric == lab_metric]
    groups: dict[tuple, list[dict]] = {}
    for r in lab_runs:
        length = r["metrics"].get("epochs") or r["metrics"].get("steps")
        group_key = (r["settings"].get("variant"), r["kind"], r["backend"], length)
        groups.setdefault(group_key, []).append(r)
    for variant in dict.fromkeys(f.variant for f in figures):  # a variant not run: its own row
        if not any(k[0] == variant for k in groups):
            groups[(variant, "", "", None)] = []
    rows = []
    for (variant, kind, backend, length), group in sorted(groups.items(), key=str):
        mine = [f for f in figures if f.variant == variant]
        figure = max(mine, key=lambda f: f.epoch or 0) if mine else None
        layers = group[0]["settings"].get("num_layers") if group else None
        held = [
            r["metrics"].get(held_key)
            for r in ours
            if group and r["kind"] == kind and r["settings"].get("num_layers") == layers
        ]
        values = [r["metrics"][key] for r in group if r["metrics"].get(key) is not None]
        said, why = verdict.judge(figure, values, length)
        if said in ("differs", "not reached"):
            why = "; ".join(w for w in (why, verdict.evidence(task, group, runs)) if w)
        rows.append(
            {
                "lab variant": variant,
                "epochs / steps": str(length) if length else "",
                "metric": lab_metric,
                "lab": figure.text if figure else "not reported",
                "source": figure.lab if figure else "",
                "backend": backend,
                "cellbench, lab protocol": _spread(values) or "not run",
                "verdict": said,
                "why": why,
                f"cellbench {held_label}": _spread([v for v in held if v is not None]) or "not run",
                "native / naive tokens/s": _speed_ratio(runs, kind) if group else "",
            }
        )
    if not rows:
        return ""
    return (
        "\n### Lab vs cellbench\n\n"
        + task_spec.flaws
        + "\n\n"
        + verdict.TOLERANCES
        + " The short naive/native speed pairs feed only the speed column.\n\n"
        + table(rows)
        + "\n"
    )


def provenance_lines(runs: list[dict]) -> str:
    """Which data copies the runs used, and a warning when they ran at the short settings."""
    lines = []
    sources = sorted({r["data_source"] for r in runs if r.get("data_source")})
    if sources:
        sample = any(
            r.get("task") == "poems" and r["data_source"] == "embedded"
            for r in runs
            if r.get("data_source")
        )
        lines.append(
            f"\nData: {', '.join(sources)} copy (`data` column: embedded = shipped with "
            "cellbench, local = --data, $CELLBENCH_DATA or the cache, downloaded = "
            "fetched for the run)"
            + (
                "; for the poems, embedded is the 3,000-poem sample, not the full corpus"
                if sample
                else ""
            )
            + ".\n"
        )
    if any(r.get("suite") == "short" for r in runs):
        lines.append(
            "\nThese are **short settings** (`python -m bench tasks --short`): a few "
            "passes, about a minute of CPU for the four tasks. They show that training "
            "works; the textbook numbers come from `--full` (docs/tasks.md).\n"
        )
    return "".join(lines)


def _failed(every: list[dict]) -> str:
    failed = [r for r in every if r.get("status") == "failed"]
    if not failed:
        return ""
    rows = [
        {
            "task": r.get("task"),
            "suite": r.get("mode"),
            "kinds": r.get("kind"),
            "backends": r.get("backend"),
            "reason": r.get("reason"),
        }
        for r in failed
    ]
    return "## Failed textbook tasks\n\n" + table(rows)


def render(
    paths: Iterable[str | os.PathLike],
    out_dir: str | os.PathLike,
    link_base: str | os.PathLike | None = None,
) -> str:
    """Markdown sections for the task records under `paths`; plots written into out_dir and
    linked relative to link_base (the markdown file's directory; default out_dir)."""
    from .runner import spec

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    every = [r for r in iter_records(list(paths)) if r.get("type") == "task"]
    tasks = [r for r in every if r.get("status", "ok") != "failed"]
    parts = []
    for name in TASKS:
        runs = latest([r for r in tasks if r.get("task") == name])
        if runs:
            try:
                text = spec(name).section(runs, out)
                parts.append(text + lab_vs_cellbench(name, runs) + provenance_lines(runs))
            except Exception as exc:  # one malformed record must not sink the whole report
                parts.append(f"## {name}\n\n_could not render: {type(exc).__name__}: {exc}_\n")
    failed = _failed(every)
    if failed:
        parts.append(failed)
    if not parts:
        return ""
    text = "\n\n".join(parts) + "\n"
    if link_base is not None and Path(link_base).resolve() != out.resolve():
        prefix = os.path.relpath(out, link_base).replace(os.sep, "/")
        text = re.sub(r"(!\[[^\]]*\]\()", rf"\g<1>{prefix}/", text)
    return text
