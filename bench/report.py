"""`python -m bench report DIR... [--output PATH.md]`: markdown tables and plots from records.

Per kind and mode: backends x shapes with tokens/s, the ratio to `native` with its 95% CI and
% of the GEMM peak; the fastest correct backend per shape; failed, incorrect, skipped and
unmeasured cases with their reasons; the FLOP convention, the
timing and memory methods, the environment and the measured peak. Plots (tokens/s against batch
and against hidden size, one line per backend, log axes) are written beside the markdown in
STEM-figures/ and linked relatively. Task records (training runs) are rendered by
bench.tasks.report_section when that module is present.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

import pandas as pd

from .figures import save_figure
from .measure import (
    FLOP_CONVENTION,
    FLOP_CONVENTIONS,
    MEMORY_METHOD_CPU,
    MEMORY_METHOD_CUDA,
    Options,
)
from .records import SPEC_FIELDS, STATUSES, iter_records, read_cases
from .report_tables import (
    CONTEXT,
    SHAPE,
    SHORT,
    detail_table,
    environment_section,
    failures_section,
    human,
    human_bytes,
    markdown,
    num,
    order,
    ratio_text,
    speed_table,
)

# re-exported: bench.validate, bench.gpu_check and the tests use them from here
__all__ = [
    "CONTEXT",
    "FLOP_CONVENTION",
    "MEMORY_METHOD_CPU",
    "MEMORY_METHOD_CUDA",
    "SHAPE",
    "SHORT",
    "TIMING_METHOD",
    "configure",
    "detail_table",
    "environment_section",
    "failures_section",
    "human",
    "human_bytes",
    "load",
    "main",
    "ratio_text",
    "render",
    "speed_table",
]

TIMING_METHOD = (
    "before any timing, each module passes the correctness gate at its case's shape (outputs, states "
    "and, for train, every gradient against float64 torch.nn on the same weights; a case that fails "
    "it is `incorrect` and never timed). The backends of one shape (a comparison group) are then timed "
    "in interleaved rounds in one worker process (A B C, C B A, ...); within a round each backend "
    "gets torch.utils.benchmark.Timer.blocked_autorange blocks (CUDA-synchronised, threads pinned), "
    "and the round's time is their median. A case's time is the median over rounds; its ratio to "
    "native is the median over rounds of native's round time / its round time (> 1: faster than "
    "torch.nn), with a 95% percentile-bootstrap interval over rounds (scipy.stats.bootstrap, 2000 "
    "resamples). Rounds are added until every ratio's interval half-width is within the run's "
    "target (default 5%) after a minimum number of rounds, or the group's time cap (compilation "
    "excluded) or round cap is reached; `stop` in the raw figures says which. A ratio whose "
    "interval contains 1.0 is marked *undecided*. The first call (compilation, JIT, allocation) "
    "is timed separately as `first call`. One call processes one sequence: train = forward + "
    "backward of y.sum() (optimizer step excluded unless the run says otherwise), infer = forward "
    "under no_grad, generate = batch 1, one step at a time carrying the state. tokens/s = batch "
    "x seq_len / median (generate: seq_len / median)."
)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "dirs", nargs="+", metavar="DIR", help="record directories (or .jsonl files)"
    )
    parser.add_argument("--output", help="markdown file to write (default: FIRST_DIR/report.md)")
    parser.add_argument("--no-plots", action="store_true", help="tables only")
    parser.set_defaults(func=main)


# --- loading -------------------------------------------------------------------------------------
def load(paths: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(case records, run records) of all paths; for a case measured more than once in the same
    directory, the last record wins. A `dir` column names where each record came from. Invalid
    lines and records are skipped with a warning naming the file and line."""
    cases, runs = [], []
    names = [Path(path).name or str(path) for path in paths]
    if len(set(names)) < len(names):  # shards in like-named directories: tell them apart by path
        names = [str(path) for path in paths]
    for path, label in zip(paths, names):
        cases += [dict(c.to_dict(), dir=label) for c in read_cases([path])]
        runs += [dict(r, dir=label) for r in iter_records([path]) if r.get("type") == "run"]
    df = pd.DataFrame(cases)
    if not df.empty:
        # records of different machines are never pooled: each machine's are columns of their own
        df["machine"] = df["machine"].fillna("?")
        df = df.drop_duplicates(subset=["dir", "machine", *SPEC_FIELDS], keep="last").reset_index(
            drop=True
        )
        df["label"] = df["backend"]
        if df["dir"].nunique() > 1 or df["machine"].nunique() > 1:
            df["label"] = df["backend"] + " [" + df["dir"] + "]"
        mixed = df.groupby("dir")["machine"].transform("nunique") > 1
        df.loc[mixed, "label"] = df["backend"] + " [" + df["dir"] + ", " + df["machine"] + "]"
    return df, pd.DataFrame(runs)


def _varying(df: pd.DataFrame, columns: list[str]) -> list[str]:
    return [c for c in columns if c in df and df[c].astype(str).nunique() > 1]


def _interval(row, tokens: bool) -> tuple[float, float, float]:
    """(value, low, high) of tokens/s or % of peak: the 95% bootstrap interval of the median
    round time (bench.stats), turned into throughput; the point itself when rounds are missing."""
    from .stats import median_ci

    value = num(row["tokens_per_s"] if tokens else row.get("pct_of_peak"))
    times = row.get("round_times")
    if value is None or not isinstance(times, list) or len(times) < 2:
        return (value or math.nan,) * 3
    median, low, high = median_ci(times)
    return value, value * median / high, value * median / low  # slower time: lower throughput


def _plot(df: pd.DataFrame, x: str, fixed: list[str], title: str, path: Path) -> bool:
    """tokens/s and % of peak against x, one line per backend with 95% CI bars, at the most
    populated setting of `fixed`."""
    ok = df[(df["status"] == "ok") & df["tokens_per_s"].notna()]
    if ok.empty or ok[x].nunique() < 2:
        return False
    groups = [(key, g) for key, g in ok.groupby(fixed, dropna=False) if g[x].nunique() >= 2]
    if not groups:
        return False
    key, group = max(groups, key=lambda kg: (kg[1][x].nunique(), len(kg[1])))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with_peak = group["pct_of_peak"].notna().any()
    fig, axes = plt.subplots(
        1, 2 if with_peak else 1, figsize=(11 if with_peak else 6, 4), squeeze=False
    )
    ticks = sorted(group[x].astype(float).unique())
    for ax, tokens in zip(axes[0], (True, False)):
        for label in order(group["label"].unique()):
            g = group[group["label"] == label].sort_values(x)
            if g[x].nunique() < 2:
                continue
            points = [_interval(r, tokens) for _, r in g.iterrows()]
            values = [p[0] for p in points]
            errors = [[p[0] - p[1] for p in points], [p[2] - p[0] for p in points]]
            ax.errorbar(g[x].astype(float), values, yerr=errors, marker="o", capsize=3, label=label)
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, [f"{v:g}" for v in ticks])
        ax.minorticks_off()
        ax.set_yscale("log")
        ax.set_xlabel(x.replace("_", " "))
        ax.set_ylabel("tokens/s" if tokens else "% of the measured GEMM peak")
        ax.grid(True, which="both", alpha=0.3)
    key = key if isinstance(key, tuple) else (key,)
    fig.suptitle(
        title
        + "  ("
        + " ".join(f"{SHORT.get(c, c)}={v}" for c, v in zip(fixed, key) if c in SHAPE)
        + "; bars: 95% CI of the median round)",
        fontsize=9,
    )
    axes[0][0].legend(fontsize=8)
    save_figure(fig, path)
    return True


def tasks_section(paths: list[str], out_dir: Path, fig_dir: Path) -> str:
    """Markdown from bench.tasks.report_section for task records; '' if none or no module."""
    try:
        if not any(r.get("type") == "task" for r in iter_records(paths)):
            return ""
        from .tasks import report_section
    except Exception:
        return ""
    try:
        return report_section.render(paths, fig_dir, link_base=out_dir)
    except Exception as exc:
        return f"\n## Training tasks\n\n_The task section could not be rendered: {type(exc).__name__}: {exc}_\n"


def _shown(path, out_dir: Path) -> str:
    """A record directory as the report names it: relative to the report, never an absolute
    path of the machine that wrote it."""
    try:
        return os.path.relpath(Path(path).resolve(), Path(out_dir).resolve())
    except ValueError:  # another drive (Windows)
        return Path(path).name


def render(paths: list[str], output: Path, plots: bool = True) -> str:
    """The whole report as markdown; figures are written beside `output`."""
    df, runs = load(paths)
    out_dir = output.parent
    fig_dir_name = f"{output.stem}-figures"
    shown = ", ".join(_shown(p, out_dir) for p in paths)
    tasks = tasks_section(paths, out_dir, out_dir / fig_dir_name)
    if df.empty and tasks:  # training tasks only: the sweep's sections would all be empty
        head = f"# cellbench report\n\nRecords: {shown}. Training tasks only (no sweep records).\n"
        return head + "\n" + tasks.strip() + "\n"
    lines = [
        "# cellbench report",
        "",
        f"Records: {shown}. Each cell: tokens/s (ratio to `native` of "
        "the same shape, > 1 faster, with its 95% confidence interval; % of the float32 GEMM peak); "
        "*undecided* marks a ratio whose interval contains 1.0; `~` marks a noisy case (IQR/median "
        f"of its round times above the run's threshold, default {Options().noise_threshold:.0%}). "
        "Only cases that passed the correctness gate are timed and ranked.",
        "",
    ]
    if df.empty:
        lines += ["_No sweep records found._", ""]
    else:
        context = _varying(df, CONTEXT)
        fixed = {c: df[c].iloc[0] for c in CONTEXT if c not in context}
        lines += [
            "Common to all cases: " + ", ".join(f"{SHORT[c]} {v}" for c, v in fixed.items()) + ".",
            "",
        ]
        counts = df["status"].value_counts().to_dict()
        lines += ["Cases: " + ", ".join(f"{counts.get(s, 0)} {s}" for s in STATUSES) + ".", ""]
        all_fastest = []
        for kind in [k for k in ("rnn", "gru", "lstm") if k in set(df["kind"])] + sorted(
            set(df["kind"]) - {"rnn", "gru", "lstm"}
        ):
            for mode in [
                m
                for m in ("train", "infer", "generate")
                if m in set(df[df["kind"] == kind]["mode"])
            ]:
                part = df[(df["kind"] == kind) & (df["mode"] == mode)]
                shape_cols = [
                    c for c in SHAPE if not (mode == "generate" and c == "batch")
                ] + context
                lines += [f"## {kind} — {mode}", ""]
                table, fastest = speed_table(part, shape_cols)
                lines += [markdown(table), ""]
                all_fastest += [{"kind": kind, "mode": mode, **f} for f in fastest]
                detail = detail_table(part, shape_cols)
                if not detail.empty:
                    lines += [
                        "<details><summary>raw figures</summary>",
                        "",
                        markdown(detail),
                        "",
                        "</details>",
                        "",
                    ]
                if plots:
                    others = [c for c in SHAPE + context]
                    for x, fixed_cols in (
                        ("batch", [c for c in others if c != "batch"]),
                        (
                            "hidden_size",
                            [c for c in others if c not in ("hidden_size", "input_size")],
                        ),
                        ("seq_len", [c for c in others if c != "seq_len"]),
                    ):
                        name = f"{kind}-{mode}-{x.split('_')[0]}.png"
                        if mode == "generate" and x == "batch":
                            continue
                        if _plot(
                            part,
                            x,
                            fixed_cols,
                            f"{kind} {mode} vs {x.replace('_', ' ')}",
                            out_dir / fig_dir_name / name,
                        ):
                            lines += [
                                f"![{kind} {mode} tokens/s vs {x.replace('_', ' ')}]"
                                f"({fig_dir_name}/{name})",
                                "",
                            ]
        if all_fastest:
            lines += ["## Fastest backend per shape", "", markdown(pd.DataFrame(all_fastest)), ""]
        lines += ["## Failed, incorrect, skipped and unmeasured cases", "", failures_section(df)]
    methods = (
        sorted({str(m) for m in df.get("mem_method", pd.Series(dtype=object)).dropna()})
        if not df.empty
        else []
    )
    lines += [
        "## Method",
        "",
        f"- **Timing**: {TIMING_METHOD}",
        *flop_lines(df),
        f"- **Peak memory**: CPU: {MEMORY_METHOD_CPU} (allocations outside torch, e.g. inside a "
        f"numba kernel, are not seen); CUDA: {MEMORY_METHOD_CUDA}."
        + (f" Methods in these records: {'; '.join(methods)}." if methods else ""),
        "",
        "## Environment and peak",
        "",
        environment_section(runs),
    ]
    if tasks:
        lines += ["", tasks.strip(), ""]
    return "\n".join(lines).rstrip() + "\n"


def flop_lines(df: pd.DataFrame) -> list[str]:
    """The Method section's FLOP conventions: each named in the records (matmul-all for records
    written before the field existed)."""
    names = ["matmul-all"]
    if not df.empty and "flop_convention" in df:
        names = sorted({str(n) for n in df["flop_convention"].dropna()} or {"matmul-all"})
    return [
        f"- **FLOP convention `{n}`**: {FLOP_CONVENTIONS.get(n, 'unknown to this version')}"
        for n in names
    ]


def main(args: argparse.Namespace) -> int:
    for d in args.dirs:
        if not Path(d).exists():
            print(
                f"error: no records at {d}: expected a directory written by `python -m bench run`",
                file=sys.stderr,
            )
            return 2
    output = Path(args.output) if args.output else Path(args.dirs[0]) / "report.md"
    output.parent.mkdir(parents=True, exist_ok=True)
    text = render(list(args.dirs), output, plots=not args.no_plots)
    output.write_text(text, encoding="utf-8")
    print(f"report written to {output}", file=sys.stderr)
    return 0
