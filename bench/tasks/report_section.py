"""Markdown for the textbook tasks, for `python -m bench report`.

render(paths, out_dir) reads the `type: "task"` records under `paths`, writes its PNG plots into
out_dir and returns markdown with a section per task that has records (links relative to out_dir,
where the report's markdown is expected to sit).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from bench.records import iter_records


def _latest(records: list[dict]) -> list[dict]:
    """One record per run configuration: the last written."""
    by_key: dict = {}
    for r in records:
        by_key[r.get("run_key") or id(r)] = r
    return list(by_key.values())


def _table(rows: list[dict], floatfmt: str = ".4g") -> str:
    if not rows:
        return "_no runs_\n"
    return pd.DataFrame(rows).to_markdown(index=False, floatfmt=floatfmt) + "\n"


def _link(path: Path, out_dir: Path, alt: str) -> str:
    rel = os.path.relpath(path, out_dir).replace(os.sep, "/")
    return f"![{alt}]({rel})\n"


def _fmt(v, spec=".4g"):
    return format(v, spec) if isinstance(v, (int, float)) and v is not None else v


def _charlm(runs: list[dict], out_dir: Path) -> str:
    from .charlm import PREFIXES, plot_runs

    rows = []
    for r in runs:
        s, m = r["settings"], r["metrics"]
        rows.append(
            {
                "kind": r["kind"],
                "backend": r["backend"],
                "seed": r["seed"],
                "layers": s.get("num_layers"),
                "hidden": s.get("hidden_size"),
                "batch": s.get("batch_size"),
                "steps": s.get("num_steps"),
                "opt": s.get("optimizer"),
                "lr": s.get("lr"),
                "init": s.get("init"),
                "epochs": s.get("epochs"),
                "train ppl": m.get("perplexity"),
                "val ppl": m.get("val_perplexity"),
                "tokens/s": m.get("tokens_per_s"),
                "train s": m.get("train_time_s"),
                "predict ms/char": m.get("predict_ms_per_char"),
                "data": r.get("data_source"),
            }
        )
    rows.sort(key=lambda d: (d["kind"], d["backend"], d["seed"]))
    md = [
        "## Character LM: The Time Machine (d2l ch. 8-9)\n",
        "Training perplexity is d2l's number (first 10,000 characters, memorised); validation "
        "perplexity is on the held-out last 10% of the book. tokens/s counts training only.\n",
        _table(rows),
    ]
    for path in plot_runs(runs, out_dir, stem="report_charlm"):
        md.append(_link(path, out_dir, path.stem))
    sample_rows = []
    for r in sorted(runs, key=lambda r: (r["kind"], r["backend"], r["seed"]))[:8]:
        for prefix in PREFIXES[:2]:
            text = r.get("samples", {}).get(prefix, {}).get("text", "")
            sample_rows.append(
                {
                    "run": f"{r['kind']}/{r['backend']} s{r['seed']}",
                    "prefix": prefix,
                    "greedy continuation": text[len(prefix) :][:100],
                }
            )
    md += ["\nGreedy generation (100 characters):\n", _table(sample_rows)]
    return "\n".join(md)


def _names(runs: list[dict], out_dir: Path) -> str:
    from .names import plot_confusion, plot_curves

    rows, per_class = [], {}
    for r in sorted(runs, key=lambda r: (r["kind"], r["backend"], r["seed"])):
        s, m = r["settings"], r["metrics"]
        label = f"{r['kind']}/{r['backend']} L{s.get('num_layers')} s{r['seed']}"
        rows.append(
            {
                "kind": r["kind"],
                "backend": r["backend"],
                "layers": s.get("num_layers"),
                "seed": r["seed"],
                "packed": r.get("packed"),
                "epochs": s.get("epochs"),
                "test acc": m.get("test_accuracy"),
                "balanced acc": m.get("balanced_accuracy"),
                "test loss": m.get("test_loss"),
                "train acc": m.get("train_accuracy"),
                "names/s": m.get("names_per_s"),
                "train s": m.get("train_time_s"),
                "data": r.get("data_source"),
            }
        )
        per_class[label] = r.get("per_class_accuracy", {})
    md = [
        "## Names → language (PyTorch char-RNN tutorial)\n",
        "De-duplicated names, stratified split with no name on both sides; accuracy on the test "
        "names (balanced: the mean of the per-class accuracies; Russian and English dominate).\n",
        _table(rows),
    ]
    if per_class:
        md += [
            "\nPer-class test accuracy:\n",
            pd.DataFrame(per_class).to_markdown(floatfmt=".2f") + "\n",
        ]
    md.append(_link(plot_curves(runs, out_dir, stem="report_names"), out_dir, "names curves"))
    for r in runs[:6]:
        md.append(
            _link(plot_confusion(r, out_dir), out_dir, f"confusion {r['kind']}/{r['backend']}")
        )
    return "\n".join(md)


def _anbn(runs: list[dict], out_dir: Path) -> str:
    from .anbn import plot_capacity, summarize

    rows = []
    by_setting: dict = {}
    for r in runs:
        s = r.get("settings", {})
        by_setting.setdefault((s.get("hidden_size"), s.get("steps"), s.get("lr")), []).append(r)
    for (hidden, steps, lr), group in sorted(by_setting.items(), key=lambda kv: str(kv[0])):
        lab = summarize(group, "capacity_lab")
        for (kind, backend), v in sorted(summarize(group).items()):
            w = lab.get((kind, backend), {})
            times = [
                r["metrics"]["train_time_s"]
                for r in group
                if (r["kind"], r["backend"]) == (kind, backend)
            ]
            rows.append(
                {
                    "kind": kind,
                    "backend": backend,
                    "hidden": hidden,
                    "steps": steps,
                    "lr": lr,
                    "seeds": v["seeds"],
                    "capacity min": v["min"],
                    "median": v["median"],
                    "max": v["max"],
                    "mean": v["mean"],
                    "per seed": ", ".join(map(str, v["all"])),
                    "lab's reading per seed": ", ".join(map(str, w.get("all", []))),
                    "train s (mean)": sum(times) / len(times),
                }
            )
    md = [
        "## aⁿbⁿ next-symbol prediction (Gers & Schmidhuber)\n",
        "Memory capacity: the largest N such that every n ≤ N (strings `3 0ⁿ 1ⁿ 2`) is predicted "
        "without error at the positions the prefix determines (the 1s after the first 1, and the "
        "end symbol). The lab's reading counts every position except the unpredictable first 1 "
        "and the second symbol (which its report forgives), so it also counts predictions made "
        "while the zeros are read. Trained on n ≤ 10; spread over seeds.\n",
        _table(rows),
        _link(plot_capacity(runs, out_dir, stem="report_anbn"), out_dir, "anbn capacity"),
    ]
    return "\n".join(md)


def _poems(runs: list[dict], out_dir: Path) -> str:
    from .poems import plot_curves

    rows, samples = [], []
    for r in sorted(runs, key=lambda r: (r["kind"], r["backend"], r["seed"])):
        s, m = r["settings"], r["metrics"]
        lab = m.get("lab_loop_tokens_per_s")
        tps = m.get("tokens_per_s")
        rows.append(
            {
                "kind": r["kind"],
                "backend": r["backend"],
                "seed": r["seed"],
                "poems": (r.get("split") or {}).get("train"),
                "epochs": s.get("epochs"),
                "held-out ppl": m.get("test_perplexity"),
                "train ppl": m.get("train_perplexity"),
                "tokens/s batched": tps,
                "tokens/s one poem at a time": lab,
                "speed-up": (tps / lab) if tps and lab else None,
                "train s": m.get("train_time_s"),
                "data": r.get("data_source"),
            }
        )
        for ch, text in list((r.get("samples") or {}).items())[:2]:
            samples.append(
                {"run": f"{r['kind']}/{r['backend']} s{r['seed']}", "begin": ch, "poem": text}
            )
    md = [
        "## Tang poetry generation\n",
        _table(rows),
        _link(plot_curves(runs, out_dir, stem="report_poems"), out_dir, "poems perplexity"),
        "\nSamples (stop at E or 50 characters):\n",
        _table(samples[:12]),
    ]
    return "\n".join(md)


def _provenance(runs: list[dict]) -> str:
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


SECTIONS = (("charlm", _charlm), ("names", _names), ("anbn", _anbn), ("poems", _poems))


def render(
    paths: Iterable[str | os.PathLike],
    out_dir: str | os.PathLike,
    link_base: str | os.PathLike | None = None,
) -> str:
    """Markdown sections for the task records under `paths`; plots written into out_dir and
    linked relative to link_base (the markdown file's directory; default out_dir)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    import matplotlib

    matplotlib.use("Agg")
    every = [r for r in iter_records(list(paths)) if r.get("type") == "task"]
    tasks = [r for r in every if r.get("status", "ok") != "failed"]
    parts = []
    for name, section in SECTIONS:
        runs = _latest([r for r in tasks if r.get("task") == name])
        if runs:
            try:
                parts.append(section(runs, out) + _provenance(runs))
            except Exception as exc:  # one malformed record must not sink the whole report
                parts.append(f"## {name}\n\n_could not render: {type(exc).__name__}: {exc}_\n")
    failed = [r for r in every if r.get("status") == "failed"]
    if failed:
        parts.append(
            "## Failed textbook tasks\n\n"
            + _table(
                [
                    {
                        "task": r.get("task"),
                        "suite": r.get("mode"),
                        "kinds": r.get("kind"),
                        "backends": r.get("backend"),
                        "reason": r.get("reason"),
                    }
                    for r in failed
                ]
            )
        )
    if not parts:
        return ""
    text = "\n\n".join(parts) + "\n"
    if link_base is not None and Path(link_base).resolve() != out.resolve():
        prefix = os.path.relpath(out, link_base).replace(os.sep, "/")
        text = re.sub(r"(!\[[^\]]*\]\()", rf"\g<1>{prefix}/", text)
    return text
