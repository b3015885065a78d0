"""`python -m bench report`: rendering from stored records (no measurement)."""

from __future__ import annotations

import re
import sys
import types
from dataclasses import asdict
from pathlib import Path

import pytest

from bench import cli, report
from bench.measure import Case, derived
from bench.records import CaseRecord, append

PEAK = {"peak_gflops": 100.0, "peak_source": "numpy"}


def write_case(
    out: Path,
    backend: str,
    mode: str,
    batch: int,
    hidden: int,
    median_s=None,
    status="ok",
    error=None,
    noisy=False,
    ratio=None,
) -> None:
    case = Case("lstm", backend, mode, 28, hidden, 1, batch, 35, "cpu", "float32", 2)
    record = CaseRecord(**asdict(case), run_id="r1", status=status, error=error, **PEAK)
    if status == "ok":
        for name, value in {
            "median_s": median_s,
            "iqr_s": median_s * (0.5 if noisy else 0.01),
            "noisy": noisy,
            "repeats": 5,
            "rounds": 5,
            "stop_reason": "ci",
            "first_call_s": 0.5,
            "peak_mem_bytes": 3 * 2**20,
            "mem_method": "torch.profiler",
            "check_error": 0.01,
            **derived(case, median_s, PEAK["peak_gflops"]),
        }.items():
            setattr(record, name, value)
        if ratio:
            record.ratio_to_native, record.ratio_ci95 = ratio[0], [ratio[1], ratio[2]]
    append(out, record)


@pytest.fixture
def run_dir(tmp_path):
    out = tmp_path / "run"
    append(
        out,
        {
            "type": "run",
            "run_id": "r1",
            "cases": 9,
            "pending": 9,
            "peaks": [
                {
                    "device": "cpu",
                    "threads": 2,
                    "peak_gflops": 100.0,
                    "peak_source": "numpy",
                    "peak_by_library": {"torch": 60.0, "numpy": 100.0},
                }
            ],
            "environment": {
                "time": "2026-01-01T00:00:00+00:00",
                "cpu_model": "Test CPU",
                "cpu_cores": 2,
                "torch": "2.13.0",
                "numba": "0.68",
                "numpy": "2.4",
                "torch_threads": 2,
                "numba_threads": 2,
                "git_commit": "abc123",
            },
        },
    )
    for batch in (8, 32):
        for hidden in (128, 256):
            write_case(out, "native", "train", batch, hidden, 0.010, ratio=(1.0, 1.0, 1.0))
            write_case(
                out,
                "fused",
                "train",
                batch,
                hidden,
                0.020,
                noisy=(batch == 8),
                ratio=(0.5, 0.45, 0.56),
            )
    write_case(out, "native", "infer", 32, 256, 0.004)
    write_case(
        out, "BROKEN", "infer", 32, 256, status="failed", error="RuntimeError: kernel | exploded"
    )
    write_case(
        out,
        "ghost",
        "infer",
        32,
        256,
        status="skipped",
        error="backend 'ghost' is unavailable: no GPU",
    )
    # measured twice: the last record wins
    write_case(out, "naive", "infer", 32, 256, 0.100, ratio=(0.04, 0.03, 0.05))
    write_case(out, "naive", "infer", 32, 256, 0.008, ratio=(0.5, 0.4, 1.1))
    write_case(
        out,
        "wrong",
        "infer",
        32,
        256,
        status="incorrect",
        error="infer check failed: output differs from float64 torch.nn by 1.00e+00 (tolerance 2e-05)",
    )
    return out


def test_report_tables_speedups_failures_and_environment(run_dir):
    text = report.render([str(run_dir)], run_dir / "report.md", plots=False)
    assert "## lstm — train" in text and "## lstm — infer" in text
    # fused at half native's speed: 32*35/0.02 = 56k tokens/s, x0.50; 2*4*... % of a 100 GFLOP/s peak
    row = next(
        line
        for line in text.splitlines()
        if line.startswith("| 28") and "| 32" in line and "| 256" in line and "×0.50" in line
    )
    assert "56k (×0.50 (0.45–0.56)" in row and "112k (reference" in row and "| native" in row
    pct = 100 * 3 * 2 * 4 * 32 * 256 * (28 + 256) * 35 / 0.02 / 1e9 / 100.0
    assert f"{pct:.1f}%" in row
    assert "~14k (×0.50" in text  # the noisy batch-8 case (8*35/0.02 tokens/s) is marked
    # naive infer: the later record (8 ms) replaced the 100 ms one; its CI contains 1: undecided
    assert "140k (×0.50 (0.40–1.10) *undecided*" in text
    assert "| wrong" not in text.split("## Failed")[0].split("## Fastest")[1]  # never ranked
    assert "infer check failed: output differs" in text and "| incorrect |" in text
    assert "RuntimeError: kernel \\| exploded" in text  # pipes escaped inside the table
    assert "backend 'ghost' is unavailable: no GPU" in text
    assert "## Fastest backend per shape" in text
    assert "input projection included" in text and "3 x forward" in text
    assert "Test CPU (2 cores)" in text and "numpy" in text and "100GFLOP/s" in text
    assert "torch.profiler" in text


def test_report_plots_are_written_and_linked_relatively(run_dir, tmp_path):
    output = tmp_path / "reports" / "latest.md"
    assert cli.main(["report", str(run_dir), "--output", str(output)]) == 0
    text = output.read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert "latest-figures/lstm-train-batch.png" in links
    assert "latest-figures/lstm-train-hidden.png" in links
    for link in links:
        assert not Path(link).is_absolute() and (output.parent / link).stat().st_size > 1000


def test_report_default_output_and_missing_dir(run_dir, tmp_path, capsys):
    assert cli.main(["report", str(run_dir), "--no-plots"]) == 0
    assert (run_dir / "report.md").exists()
    assert cli.main(["report", str(tmp_path / "nothing")]) == 2
    assert "no records at" in capsys.readouterr().err


def test_task_section_is_appended_when_there_are_task_records(run_dir, monkeypatch):
    calls = []
    fake = types.ModuleType("bench.tasks.report_section")
    fake.render = lambda paths, out_dir, link_base: (
        calls.append((paths, out_dir, link_base)) or "## Training tasks\n\nppl 1.2\n"
    )
    import bench.tasks

    monkeypatch.setitem(sys.modules, "bench.tasks.report_section", fake)
    monkeypatch.setattr(bench.tasks, "report_section", fake, raising=False)
    assert "Training tasks" not in report.render([str(run_dir)], run_dir / "r.md", plots=False)
    assert calls == []  # no task records: not called
    append(run_dir, {"type": "task", "task": "charlm"})
    text = report.render([str(run_dir)], run_dir / "r.md", plots=False)
    assert text.rstrip().endswith("ppl 1.2")
    assert calls == [([str(run_dir)], run_dir / "r-figures", run_dir)]  # plots beside the sweep's


def test_task_only_directory_skips_the_sweep_sections(tmp_path, monkeypatch):
    fake = types.ModuleType("bench.tasks.report_section")
    fake.render = lambda paths, out_dir, link_base: "## Training tasks\n\nppl 1.2\n"
    import bench.tasks

    monkeypatch.setitem(sys.modules, "bench.tasks.report_section", fake)
    monkeypatch.setattr(bench.tasks, "report_section", fake, raising=False)
    out = tmp_path / "tasks"
    append(out, {"type": "task", "task": "charlm"})
    text = report.render([str(out)], tmp_path / "r.md", plots=False)
    assert "Training tasks only" in text and text.rstrip().endswith("ppl 1.2")
    for sweep_only in ("No sweep records found", "No run records", "## Method", "Each cell"):
        assert sweep_only not in text


def test_empty_directory_renders(tmp_path):
    (tmp_path / "empty").mkdir()
    assert "_No sweep records found._" in report.render(
        [str(tmp_path / "empty")], tmp_path / "r.md"
    )


def test_two_directories_are_labelled(run_dir, tmp_path):
    other = tmp_path / "other"
    write_case(other, "native", "infer", 32, 256, 0.002)
    text = report.render([str(run_dir), str(other)], tmp_path / "r.md", plots=False)
    assert "native [run]" in text and "native [other]" in text


def _machine_case(
    out: Path, backend: str, machine: str, median_s: float, ratio: float, hidden: int = 256
) -> None:
    case = Case("lstm", backend, "train", 28, hidden, 1, 32, 35, "cpu", "float32", 2)
    record = CaseRecord(
        **asdict(case),
        run_id=machine,
        machine=machine,
        median_s=median_s,
        **derived(case, median_s, None),
    )
    record.ratio_to_native, record.ratio_ci95 = ratio, [ratio * 0.9, ratio * 1.1]
    append(out, record)


def _header(text: str) -> list[str]:
    line = next(line for line in text.splitlines() if line.startswith("| I "))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_machines_are_columns_apart_and_ratios_never_cross_them(tmp_path):
    """Shards measured on different machines: each machine's records are their own columns,
    and the only ratios shown are the records' own (computed within a group on one machine)."""
    a, b = tmp_path / "x" / "run", tmp_path / "y" / "run"  # the same directory name on two machines
    _machine_case(a, "native", "CPU A (2 cores)", 0.010, 1.0)
    _machine_case(a, "fused", "CPU A (2 cores)", 0.020, 0.5)
    _machine_case(b, "native", "CPU B (64 cores)", 0.001, 1.0)
    _machine_case(b, "fused", "CPU B (64 cores)", 0.0005, 2.0)
    text = report.render([str(a), str(b)], tmp_path / "r.md", plots=False)
    columns = _header(text)
    labels = [c for c in columns if c.startswith(("native", "fused"))]
    assert len(labels) == len(set(labels)) == 4, columns  # four columns, none merged
    row = next(line for line in text.splitlines() if line.startswith("| 28"))
    ratios = sorted(re.findall(r"×(\d+\.\d+) \(", row))
    assert ratios == ["0.50", "2.00"]  # the records' own ratios; never B's native against A's fused
    # one directory holding records of two machines (a Ray run on unlike nodes) splits by machine
    mixed = tmp_path / "mixed"
    _machine_case(mixed, "native", "CPU A (2 cores)", 0.010, 1.0, hidden=128)
    _machine_case(mixed, "native", "CPU B (64 cores)", 0.001, 1.0, hidden=512)
    text = report.render([str(mixed)], tmp_path / "m.md", plots=False)
    labels = [c for c in _header(text) if c.startswith("native")]
    assert (
        len(labels) == 2 and any("CPU A" in c for c in labels) and any("CPU B" in c for c in labels)
    )


def test_conventions_are_told_apart_and_each_is_defined(tmp_path):
    out = tmp_path / "run"
    for convention, median in (("full", 0.02), ("recurrent", 0.01)):
        case = Case("lstm", "native", "train", 28, 256, 1, 32, 35, convention=convention)
        record = CaseRecord(**asdict(case), median_s=median, **derived(case, median, None))
        record.flop_convention = {"full": "matmul-all", "recurrent": "matmul-recurrent"}[convention]
        append(out, record)
    text = report.render([str(out)], out / "report.md", plots=False)
    assert re.search(r"\|\s*convention\s*\|", text)  # a column: the two are not one case
    assert "FLOP convention `matmul-all`" in text and "FLOP convention `matmul-recurrent`" in text
    assert report.load([str(out)])[0]["convention"].tolist() == ["full", "recurrent"]


def test_a_record_from_before_conventions_reads_as_full():
    record = CaseRecord(**asdict(Case("lstm", "native", "infer", 3, 4))).to_dict()
    del record["convention"]
    assert CaseRecord.from_dict(record).convention == "full"
