"""The report of `python -m bench.gpu_check` (docs/gpu.md): which steps ran and how they ended,
the CUDA test results per dtype (from pytest's JUnit XML), and each sweep rendered by
bench.report.render as a section of its own.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .gpu_check import Outcome

PROG = "python -m bench.gpu_check"
DTYPES = ("float32", "float16", "bfloat16")


def read_test_results(xml_path: Path) -> list[dict] | None:
    """One dict per test case of a JUnit XML file (name, outcome, message); None if unreadable."""
    try:
        root = ET.parse(xml_path).getroot()
    except (OSError, ET.ParseError):
        return None
    results = []
    for case in root.iter("testcase"):
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                first = (node.get("message") or node.text or "").strip().splitlines()[:1]
                message = first[0][:200] if first else ""
                break
        name = f"{case.get('classname', '')}::{case.get('name', '')}".strip(":")
        results.append({"name": name, "outcome": outcome, "message": message})
    return results


def _dtype_of(test_name: str) -> str | None:
    """The dtype a parametrised test id ends with (`...-bfloat16]`, `...-torch.float16]`)."""
    found = re.search(r"[-.\[](b?float(?:16|32))\]$", test_name)
    return found.group(1) if found else None


def pytest_section(outcome: Outcome | None, xml_path: Path) -> list[str]:
    lines = ["## CUDA tests", ""]
    results = read_test_results(xml_path)
    if results is None:
        why = outcome.verdict() if outcome else "not run"
        return lines + [f"No test results ({why}; no readable {xml_path.name}).", ""]
    groups = {d: [r for r in results if _dtype_of(r["name"]) == d] for d in DTYPES}
    grouped = {id(r) for rs in groups.values() for r in rs}
    groups["other (Triton on the GPU, ...)"] = [r for r in results if id(r) not in grouped]
    lines += ["| dtype | passed | failed | errors | skipped |", "|---|---|---|---|---|"]
    for name, rs in groups.items():
        count = {
            o: sum(r["outcome"] == o for r in rs) for o in ("passed", "failed", "error", "skipped")
        }
        lines.append(
            f"| {name} | {count['passed']} | {count['failed']} | {count['error']} | {count['skipped']} |"
        )
    bad = [r for r in results if r["outcome"] in ("failed", "error")]
    if bad:
        lines += ["", "Failed:", ""] + [f"- `{r['name']}`: {r['message']}" for r in bad[:50]]
    skipped = sorted({r["message"] for r in results if r["outcome"] == "skipped"})
    if skipped:
        lines += ["", "Skip reasons:", ""] + [f"- {m}" for m in skipped[:20]]
    return lines + [""]


def _demoted(markdown: str, title: str, where: str) -> list[str]:
    """A report by bench.report.render as a section: its title replaced, headings one level down,
    its legend (given once at the top) cut to the record directory, up to its Method section
    (given once for all sweeps)."""
    body = markdown.split("\n## Method", 1)[0].splitlines()[1:]
    return (
        [f"## {title}"]
        + [
            f"Records: `{where}`."
            if line.startswith("Records: ")
            else ("#" + line)
            if line.startswith("#")
            else line
            for line in body
        ]
        + [""]
    )


def render(outcomes: list[Outcome], out: Path, report: Path, plots: bool = True) -> str:
    """The report: steps, tests, one section per sweep, method and environment. Never raises for
    a missing or broken step output: that is reported in its place."""
    from . import report as bench_report

    lines = [
        "# GPU check",
        "",
        f"Written by `{PROG}` (docs/gpu.md): what each step ran, how it ended, then its results. "
        "In the sweep tables each cell reads tokens/s (ratio to `native`, i.e. cuDNN, of the same "
        "shape, > 1 faster, with its 95% confidence interval; % of the float32 GEMM peak); "
        "*undecided* marks a ratio whose interval contains 1.0, `~` a noisy case. Backends of one "
        "shape are timed in interleaved rounds in one process, after passing the correctness gate "
        "(float64 torch.nn on the same weights).",
        "",
        "## Steps",
        "",
        "| step | what | allowance | took | outcome |",
        "|---|---|---|---|---|",
    ]
    for o in outcomes:
        lines.append(
            f"| {o.step.name} | {o.step.title} | {o.allowance_s:.0f} s | {o.seconds:.0f} s | {o.verdict()} |"
        )
    lines.append("")
    failed = [o for o in outcomes if not o.ok]
    if failed:
        lines += ["What failed (last lines of the step's output):", ""]
        for o in failed:
            lines += [f"- **{o.step.name}**: {o.verdict()}", ""]
            if o.tail:
                lines += ["  ```"] + [f"  {t}" for t in o.tail[-8:]] + ["  ```", ""]
    tests = next((o for o in outcomes if not o.step.sweep), None)
    lines += pytest_section(tests, out / ((tests.step.name if tests else "cuda-tests") + ".xml"))
    dirs = []
    for o in (o for o in outcomes if o.step.sweep):
        where = out / o.step.name
        if not (where / "records.jsonl").is_file():
            lines += [f"## {o.step.title}", "", f"_No records ({o.verdict()})._", ""]
            continue
        try:
            text = bench_report.render(
                [_shown(where)], report.parent / f"{report.stem}-{o.step.name}.md", plots
            )
            lines += _demoted(text, o.step.title, _shown(where))
            dirs.append(_shown(where))
        except Exception as exc:  # the report is always written; say what could not be rendered
            lines += [
                f"## {o.step.title}",
                "",
                f"_Could not render: {type(exc).__name__}: {exc}_",
                "",
            ]
    lines += [
        "## Method",
        "",
        f"- **Timing**: {bench_report.TIMING_METHOD}",
        f"- **FLOP convention**: {bench_report.FLOP_CONVENTION}",
        f"- **Peak memory**: {bench_report.MEMORY_METHOD_CUDA}.",
        "",
        "## Environment and peak",
        "",
    ]
    try:
        lines.append(
            bench_report.environment_section(bench_report.load(dirs)[1])
            if dirs
            else "_No run records._\n"
        )
    except Exception as exc:
        lines.append(f"_Could not render: {type(exc).__name__}: {exc}_\n")
    return "\n".join(lines).rstrip() + "\n"


def _shown(path: Path) -> str:
    """A path relative to the working directory when it is below it (no machine paths in reports)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)
