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
from .measure import FLOP_CONVENTION, MEMORY_METHOD_CPU, MEMORY_METHOD_CUDA, Options
from .records import SPEC_FIELDS, STATUSES, iter_records, read_cases
from .stats import undecided

SHAPE = ["input_size", "hidden_size", "num_layers", "batch", "seq_len"]
CONTEXT = ["device", "dtype", "threads", "optimizer_step"]
SHORT = {
    "input_size": "I",
    "hidden_size": "H",
    "num_layers": "L",
    "batch": "B",
    "seq_len": "T",
    "device": "device",
    "dtype": "dtype",
    "threads": "threads",
    "optimizer_step": "opt. step",
}
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


# --- formatting --------------------------------------------------------------------------------
def human(value: float | None, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    for factor, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g}{suffix}{unit}"
    return f"{value:.3g}{unit}"


def human_bytes(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    value = float(value)
    for factor, suffix in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if value >= factor:
            return f"{value / factor:.1f} {suffix}"
    return f"{value:.0f} B"


def _markdown(df: pd.DataFrame) -> str:
    return df.to_markdown(index=False, tablefmt="pipe", disable_numparse=True)


def ratio_text(ratio, ci) -> str:
    """`×1.49 (1.42–1.57)`, marked undecided when the interval contains 1.0."""
    point = _num(ratio)
    if point is None:
        return ""
    if (
        not isinstance(ci, (list, tuple))
        or len(ci) != 2
        or _num(ci[0]) is None
        or _num(ci[1]) is None
    ):
        return f"×{point:.2f}"
    text = f"×{point:.2f} ({ci[0]:.2f}–{ci[1]:.2f})"
    return text + " *undecided*" if undecided(ci[0], ci[1]) and point != 1.0 else text


def _num(value) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


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


def _order(labels) -> list[str]:
    preferred = ["native", "naive", "fused", "scripted", "compiled", "numba", "triton"]
    rank = {name: i for i, name in enumerate(preferred)}
    return sorted(labels, key=lambda s: (rank.get(s.split(" [")[0], len(rank)), s))


# --- sections ------------------------------------------------------------------------------------
def speed_table(df: pd.DataFrame, shape_cols: list[str]) -> tuple[pd.DataFrame, list[dict]]:
    """One row per shape, one column per backend: 'tokens/s (×ratio (CI), % of peak)'; and the
    fastest correct backend of each shape (only `ok` cases, which passed the correctness gate)."""
    rows, fastest = [], []
    labels = _order(df["label"].unique())
    for shape, group in df.groupby(shape_cols, sort=True, dropna=False):
        shape = shape if isinstance(shape, tuple) else (shape,)
        row = {SHORT.get(c, c): str(v) for c, v in zip(shape_cols, shape)}
        ok = group[group["status"] == "ok"]
        by_label = {r["label"]: r for _, r in group.iterrows()}
        for label in labels:
            r = by_label.get(label)
            if r is None:
                row[label] = ""
                continue
            if r["status"] != "ok":
                row[label] = r["status"]
                continue
            tps = _num(r["tokens_per_s"])
            parts = (
                ["reference"]
                if r["backend"] == "native"
                else [p for p in (ratio_text(r.get("ratio_to_native"), r.get("ratio_ci95")),) if p]
            )
            pct = _num(r.get("pct_of_peak"))
            if pct is not None:
                parts.append(f"{pct:.1f}%")
            noisy = "~" if bool(r.get("noisy")) else ""
            row[label] = f"{noisy}{human(tps)}" + (f" ({', '.join(parts)})" if parts else "")
        if not ok.empty and ok["tokens_per_s"].notna().any():
            # rank by the paired ratio to native where the group has one (the statistic with an
            # interval); by tokens/s otherwise (no native in the group)
            paired = ok["ratio_to_native"].notna().any()
            best = ok.loc[
                (ok["ratio_to_native"] if paired else ok["tokens_per_s"]).astype(float).idxmax()
            ]
            row["fastest"] = best["label"]
            fastest.append(
                {
                    **{
                        SHORT.get(c, c): str(best[c])
                        for c in SHAPE + [c for c in shape_cols if c not in SHAPE]
                    },
                    "fastest": best["label"],
                    "tokens/s": human(_num(best["tokens_per_s"])),
                    "× native (95% CI)": "reference"
                    if best["backend"] == "native"
                    else (ratio_text(best.get("ratio_to_native"), best.get("ratio_ci95")) or "–"),
                    "GFLOP/s": f"{_num(best['gflops']):.1f}" if _num(best["gflops"]) else "–",
                    "% of peak": f"{_num(best['pct_of_peak']):.1f}"
                    if _num(best.get("pct_of_peak"))
                    else "–",
                }
            )
        else:
            row["fastest"] = "–"
        rows.append(row)
    return pd.DataFrame(rows), fastest


def _int(value) -> int | None:
    v = _num(value)
    return None if v is None else int(v)


def detail_table(df: pd.DataFrame, shape_cols: list[str]) -> pd.DataFrame:
    """Every ok case with its raw figures (median, IQR, first call, memory, GFLOP/s)."""
    ok = df[df["status"] == "ok"].copy()
    rows = []
    for _, r in ok.sort_values(shape_cols + ["label"]).iterrows():
        row = {SHORT.get(c, c): str(r[c]) for c in shape_cols}
        med, iqr = _num(r["median_s"]), _num(r["iqr_s"])
        row.update(
            {
                "backend": r["label"],
                "median": (f"{med:.3g} s" if med >= 1 else f"{med * 1e3:.3g} ms") if med else "–",
                "IQR/median": (f"{iqr / med:.1%}" + (" noisy" if r.get("noisy") else ""))
                if med and iqr is not None
                else "–",
                "blocks (rounds)": f"{_int(r.get('repeats'))} ({_int(r.get('rounds')) or 1})",
                "stop": str(r.get("stop_reason") or "–"),
                "check": (
                    f"{_num(r.get('check_error')):.2g} of tol."
                    if _num(r.get("check_error")) is not None
                    else "not run"
                ),
                "tokens/s": human(_num(r["tokens_per_s"])),
                "GFLOP/s": f"{_num(r['gflops']):.2f}" if _num(r["gflops"]) is not None else "–",
                "% peak": f"{_num(r.get('pct_of_peak')):.1f}"
                if _num(r.get("pct_of_peak")) is not None
                else "–",
                "first call": f"{_num(r['first_call_s']):.3g} s"
                if _num(r["first_call_s"]) is not None
                else "–",
                "peak memory": human_bytes(_num(r.get("peak_mem_bytes"))),
            }
        )
        rows.append(row)
    return pd.DataFrame(rows)


def _interval(row, tokens: bool) -> tuple[float, float, float]:
    """(value, low, high) of tokens/s or % of peak: the 95% bootstrap interval of the median
    round time (bench.stats), turned into throughput; the point itself when rounds are missing."""
    from .stats import median_ci

    value = _num(row["tokens_per_s"] if tokens else row.get("pct_of_peak"))
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
        for label in _order(group["label"].unique()):
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


def environment_section(runs: pd.DataFrame) -> str:
    if runs.empty:
        return "_No run records: environment and peak unknown._\n"
    rows = []
    for _, r in runs.iterrows():
        env = r.get("environment") if isinstance(r.get("environment"), dict) else {}
        peaks = r.get("peaks") if isinstance(r.get("peaks"), list) else []
        peak_text = (
            "; ".join(
                f"{human((p.get('peak_gflops') or 0) * 1e9)}FLOP/s ({p.get('peak_source')}, {p.get('device')}, "
                f"{p.get('threads')} threads; "
                + ", ".join(
                    f"{k} {v:.0f}" for k, v in (p.get("peak_by_library") or {}).items() if v
                )
                + ")"
                for p in peaks
                if p.get("peak_gflops")
            )
            or "not measured"
        )
        rows.append(
            {
                "dir": r.get("dir"),
                "run": r.get("run_id"),
                "time": env.get("time"),
                "cases": f"{r.get('pending')}/{r.get('cases')}",
                "CPU": f"{env.get('cpu_model')} ({env.get('cpu_cores')} cores)",
                "GPU": env.get("gpu_name") or "–",
                "threads (torch/numba)": f"{env.get('torch_threads')}/{env.get('numba_threads')}",
                "torch": env.get("torch"),
                "numba": env.get("numba"),
                "numpy": env.get("numpy"),
                "cuDNN": env.get("cudnn") or "–",
                "git": (env.get("git_commit") or "–")[:12],
                "BLAS overrides": ", ".join(
                    f"{k}={v}" for k, v in (env.get("blas_env") or {}).items()
                )
                or "none",
                "float32 GEMM peak (GFLOP/s by library)": peak_text,
            }
        )
    return _markdown(pd.DataFrame(rows)) + "\n"


def failures_section(df: pd.DataFrame) -> str:
    bad = df[df["status"] != "ok"]
    if bad.empty:
        return "No failed, incorrect, skipped or unmeasured cases.\n"
    rows = [
        {
            "kind": r["kind"],
            "backend": r["label"],
            "mode": r["mode"],
            "shape": " ".join(f"{SHORT[c]}{r[c]}" for c in SHAPE),
            "device": r["device"],
            "dtype": r["dtype"],
            "status": r["status"],
            "reason": str(r.get("error") or "").replace("|", "\\|").replace("\n", " ")[:300],
        }
        for _, r in bad.sort_values(["status", "kind", "backend", "mode"]).iterrows()
    ]
    return _markdown(pd.DataFrame(rows)) + "\n"


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
    lines = [
        "# cellbench report",
        "",
        f"Records: {', '.join(_shown(p, out_dir) for p in paths)}. Each cell: tokens/s (ratio to `native` of "
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
                lines += [_markdown(table), ""]
                all_fastest += [{"kind": kind, "mode": mode, **f} for f in fastest]
                detail = detail_table(part, shape_cols)
                if not detail.empty:
                    lines += [
                        "<details><summary>raw figures</summary>",
                        "",
                        _markdown(detail),
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
            lines += ["## Fastest backend per shape", "", _markdown(pd.DataFrame(all_fastest)), ""]
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
        f"- **FLOP convention**: {FLOP_CONVENTION}",
        f"- **Peak memory**: CPU: {MEMORY_METHOD_CPU} (allocations outside torch, e.g. inside a "
        f"numba kernel, are not seen); CUDA: {MEMORY_METHOD_CUDA}."
        + (f" Methods in these records: {'; '.join(methods)}." if methods else ""),
        "",
        "## Environment and peak",
        "",
        environment_section(runs),
    ]
    tasks = tasks_section(paths, out_dir, out_dir / fig_dir_name)
    if tasks:
        lines += ["", tasks.strip(), ""]
    return "\n".join(lines).rstrip() + "\n"


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
