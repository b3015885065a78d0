"""The tables of `python -m bench report`: number formatting and the markdown sections built
from case and run records (speed per shape, raw figures, failures, environment and peak).
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from .stats import undecided

SHAPE = ["input_size", "hidden_size", "num_layers", "batch", "seq_len"]
CONTEXT = ["device", "dtype", "threads", "optimizer_step", "convention"]
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
    "convention": "convention",
}


def order(labels: Any) -> list[str]:
    """Backend labels, the built-ins first in a fixed order, then the rest by name."""
    preferred = ["native", "naive", "fused", "scripted", "compiled", "numba", "triton"]
    rank = {name: i for i, name in enumerate(preferred)}
    return sorted(labels, key=lambda s: (rank.get(s.split(" [")[0], len(rank)), s))


# --- formatting --------------------------------------------------------------------------------
def human(value: float | None, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    for factor, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g}{suffix}{unit}"
    return f"{value:.3g}{unit}"


def human_bytes(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    value = float(value)
    for factor, suffix in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if value >= factor:
            return f"{value / factor:.1f} {suffix}"
    return f"{value:.0f} B"


def markdown(df: pd.DataFrame) -> str:
    return df.to_markdown(index=False, tablefmt="pipe", disable_numparse=True)


def ratio_text(ratio: Any, ci: Any) -> str:
    """`×1.49 (1.42–1.57)`, marked undecided when the interval contains 1.0."""
    point = num(ratio)
    if point is None:
        return ""
    if (
        not isinstance(ci, (list, tuple))
        or len(ci) != 2
        or num(ci[0]) is None
        or num(ci[1]) is None
    ):
        return f"×{point:.2f}"
    text = f"×{point:.2f} ({ci[0]:.2f}–{ci[1]:.2f})"
    return text + " *undecided*" if undecided(ci[0], ci[1]) and point != 1.0 else text


def num(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


# --- sections ------------------------------------------------------------------------------------
def speed_table(df: pd.DataFrame, shape_cols: list[str]) -> tuple[pd.DataFrame, list[dict]]:
    """One row per shape, one column per backend: 'tokens/s (×ratio (CI), % of peak)'; and the
    fastest correct backend of each shape (only `ok` cases, which passed the correctness gate)."""
    rows, fastest = [], []
    labels = order(df["label"].unique())
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
            tps = num(r["tokens_per_s"])
            parts = (
                ["reference"]
                if r["backend"] == "native"
                else [p for p in (ratio_text(r.get("ratio_to_native"), r.get("ratio_ci95")),) if p]
            )
            pct = num(r.get("pct_of_peak"))
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
                    "tokens/s": human(num(best["tokens_per_s"])),
                    "× native (95% CI)": "reference"
                    if best["backend"] == "native"
                    else (ratio_text(best.get("ratio_to_native"), best.get("ratio_ci95")) or "–"),
                    "GFLOP/s": f"{num(best['gflops']):.1f}" if num(best["gflops"]) else "–",
                    "% of peak": f"{num(best['pct_of_peak']):.1f}"
                    if num(best.get("pct_of_peak"))
                    else "–",
                }
            )
        else:
            row["fastest"] = "–"
        rows.append(row)
    return pd.DataFrame(rows), fastest


def _int(value: Any) -> int | None:
    v = num(value)
    return None if v is None else int(v)


def detail_table(df: pd.DataFrame, shape_cols: list[str]) -> pd.DataFrame:
    """Every ok case with its raw figures (median, IQR, first call, memory, GFLOP/s)."""
    ok = df[df["status"] == "ok"].copy()
    rows = []
    for _, r in ok.sort_values(shape_cols + ["label"]).iterrows():
        row = {SHORT.get(c, c): str(r[c]) for c in shape_cols}
        med, iqr = num(r["median_s"]), num(r["iqr_s"])
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
                    f"{num(r.get('check_error')):.2g} of tol."
                    if num(r.get("check_error")) is not None
                    else "not run"
                ),
                "tokens/s": human(num(r["tokens_per_s"])),
                "GFLOP/s": f"{num(r['gflops']):.2f}" if num(r["gflops"]) is not None else "–",
                "% peak": f"{num(r.get('pct_of_peak')):.1f}"
                if num(r.get("pct_of_peak")) is not None
                else "–",
                "first call": f"{num(r['first_call_s']):.3g} s"
                if num(r["first_call_s"]) is not None
                else "–",
                "peak memory": human_bytes(num(r.get("peak_mem_bytes"))),
            }
        )
        rows.append(row)
    return pd.DataFrame(rows)


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
    return markdown(pd.DataFrame(rows)) + "\n"


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
    return markdown(pd.DataFrame(rows)) + "\n"
