"""The tasks' plots (PNG, matplotlib's Agg backend), each returning the path(s) it wrote."""

from __future__ import annotations

import collections
from pathlib import Path

from ..figures import save_figure
from .common import over_seeds, safe_name


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _curves_only(runs: list[dict]) -> list[dict]:
    """Drops runs shorter than another of the same protocol and variant: the short speed pairs
    time the lab's recipe, their three points are no training curve."""
    longest: dict[tuple, int] = collections.defaultdict(int)
    key = [(r.get("protocol", "cellbench"), r["settings"].get("variant", "")) for r in runs]
    for k, r in zip(key, runs):
        longest[k] = max(longest[k], len(r["curves"]["epoch"]))
    return [r for k, r in zip(key, runs) if len(r["curves"]["epoch"]) == longest[k]]


def _train_and_held_out(ax, train: tuple, held: tuple, label: str, held_name: str, **style) -> None:
    """Training perplexity solid, held-out perplexity (when measured) dashed in the same colour
    (marked x where training is marked, so a single epoch's points are told apart)."""
    (line,) = ax.plot(*train, label=label + " train", **style)
    if held[1]:
        marked = {**style, "marker": "x"} if "marker" in style else style
        ax.plot(*held, ls="--", color=line.get_color(), label=f"{label} {held_name}", **marked)


def _perplexity_axes(ax, title: str) -> None:
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("perplexity")
    ax.set_title(title)


def charlm_perplexity(
    runs: list[dict],
    out_dir: str | Path,
    stem: str = "charlm",
    lab_curves: dict[str, list[tuple[int, float]]] | None = None,
) -> list[Path]:
    """Training perplexity per epoch: the lab-protocol runs in small multiples (a panel per
    variant, the lab's own points from `lab_curves`, by variant, as markers), the cellbench-
    protocol runs in a figure of their own with validation perplexity dashed. Returns the files."""
    plt = _pyplot()
    runs = _curves_only(runs)
    lab = [r for r in runs if r.get("protocol") == "lab"]
    ours = [r for r in runs if r.get("protocol") != "lab"]
    paths = []
    if lab:
        by_variant: dict[str, list[dict]] = collections.defaultdict(list)
        for r in lab:
            by_variant[r["settings"].get("variant", "")].append(r)
        cols = min(4, len(by_variant))
        rows = -(-len(by_variant) // cols)
        fig, axes = plt.subplots(
            rows,
            cols,
            figsize=(3.2 * cols, 2.4 * rows + 0.6),
            sharex=True,
            sharey=True,
            squeeze=False,
        )
        for ax, (variant, rs) in zip(axes.flat, sorted(by_variant.items())):
            for r in rs:
                ax.plot(r["curves"]["epoch"], r["curves"]["perplexity"], lw=1, color="C0")
            points = (lab_curves or {}).get(variant, [])
            if points:
                ax.plot(*zip(*points), ls="", marker="o", ms=3, color="C3")
            who = ", ".join(sorted({f"{r['kind']}/{r['backend']}" for r in rs}))
            ax.set_title(f"{variant} ({who})", fontsize=8)
            ax.set_yscale("log")
            ax.grid(alpha=0.3)
        for ax in axes.flat[len(by_variant) :]:
            ax.set_visible(False)
        for ax in axes[-1]:
            ax.set_xlabel("epoch")
        for ax in axes[:, 0]:
            ax.set_ylabel("train perplexity")
        fig.suptitle(
            "charlm, the lab's protocol: training perplexity (line: this run; "
            "red dots: the lab's reported points)",
            fontsize=10,
        )
        paths.append(save_figure(fig, Path(out_dir) / f"{safe_name(stem, 'lab', 'ppl')}.png"))
    if ours:
        fig, ax = plt.subplots(figsize=(8, 4))
        for r in ours:
            s, c = r["settings"], r["curves"]
            label = (
                f"{r['kind']}/{r['backend']} s{r['seed']} H{s['hidden_size']} L{s['num_layers']}"
            )
            held = (c["val_epoch"], c.get("val_perplexity"))
            _train_and_held_out(ax, (c["epoch"], c["perplexity"]), held, label, "validation", lw=1)
        _perplexity_axes(ax, "charlm, cellbench's protocol: training and validation perplexity")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1))  # beside, not over
        path = save_figure(fig, Path(out_dir) / f"{safe_name(stem, 'cellbench', 'ppl')}.png")
        paths.append(path)
    return paths


def names_confusion(record: dict, out_dir: str | Path) -> Path:
    plt = _pyplot()
    import numpy as np

    m = record["metrics"]
    cm = np.array(record["confusion"], dtype=float)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    langs = record["languages"]
    fig, ax = plt.subplots(figsize=(7, 6))
    im = ax.imshow(norm, cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(len(langs)), langs, rotation=90, fontsize=7)
    ax.set_yticks(range(len(langs)), langs, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true language")
    ax.set_title(
        f"names {record['kind']}/{record['backend']} seed {record['seed']}: "
        + (
            f"test accuracy {m['test_accuracy']:.3f}"
            if "test_accuracy" in m
            else f"in-sample accuracy {m['sampled_accuracy']:.3f} (lab)"
        ),
        fontsize=9,
    )
    fig.colorbar(im, ax=ax, fraction=0.046)
    path = save_figure(
        fig,
        Path(out_dir)
        / (
            safe_name(
                "names_confusion",
                record["kind"],
                record["backend"],
                f"s{record['seed']}",
                record["run_key"][:6],
            )
            + ".png"
        ),
    )
    return path


def names_curves(runs: list[dict], out_dir: str | Path, stem: str = "names") -> Path:
    """Loss and accuracy: per epoch, training solid and held-out dashed (cellbench), or per
    1,000 drawn names (the lab's protocol, whose curves have `step`: in-sample)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    lab = any("step" in r["curves"] for r in runs)
    for r in runs:
        c = r["curves"]
        label = f"{r['kind']}/{r['backend']} L{r['settings']['num_layers']} s{r['seed']}"
        x = c["step"] if "step" in c else c["epoch"]
        color = None
        for ax, metric in zip(axes, ("loss", "accuracy")):
            pairs = [(metric, "", "-")] if "step" in c else []
            pairs += [(f"train_{metric}", " train", "-"), (f"test_{metric}", " test", "--")]
            for key, suffix, ls in pairs:
                if key in c:
                    (line,) = ax.plot(x, c[key], ls=ls, color=color, label=label + suffix)
                    color = line.get_color()
    for ax, what in zip(axes, ("cross-entropy", "accuracy")):
        ax.set_xlabel("names drawn" if lab else "epoch")
        ax.set_ylabel(what)
        ax.legend(fontsize=6)
    fig.suptitle("names, the lab's protocol (in-sample)" if lab else "names: loss and accuracy")
    return save_figure(fig, Path(out_dir) / f"{stem}_curves.png")


def anbn_capacity(runs: list[dict], out_dir: str | Path, stem: str = "anbn") -> Path:
    plt = _pyplot()

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    summary, lab = over_seeds(runs, "capacity"), over_seeds(runs, "capacity_lab")
    labels = [f"{k}/{b}" for k, b in summary]
    a1.boxplot([v["all"] for v in summary.values()])
    a1.set_xticks(range(1, len(labels) + 1), labels)
    for i, key in enumerate(summary, 1):
        a1.scatter(
            [i] * len(summary[key]["all"]),
            summary[key]["all"],
            s=10,
            alpha=0.6,
            color="C0",
            label="strict" if i == 1 else None,
        )
        if key in lab:
            a1.scatter(
                [i + 0.15] * len(lab[key]["all"]),
                lab[key]["all"],
                s=10,
                alpha=0.6,
                marker="x",
                color="C1",
                label="lab's reading" if i == 1 else None,
            )
    top = max([max(v["all"]) for v in (*summary.values(), *lab.values())] + [1])
    a1.set_ylim(-0.5, top * 1.1 + 1)
    a1.set_ylabel("memory capacity (largest n, all n' <= n solved)")
    a1.set_title("capacity over seeds")
    a1.legend(fontsize=6)
    for r in runs:
        (line,) = a2.plot(
            r["curves"]["step"],
            r["curves"]["capacity"],
            lw=1,
            label=f"{r['kind']}/{r['backend']} s{r['seed']}",
        )
        if r["curves"].get("capacity_lab"):
            a2.plot(
                r["curves"]["step"],
                r["curves"]["capacity_lab"],
                lw=1,
                ls="--",
                color=line.get_color(),
            )
    a2.set_ylim(-0.5, top * 1.1 + 1)
    a2.set_xlabel("training step")
    a2.set_ylabel("capacity (dashed: the lab's reading)")
    a2.legend(fontsize=6)
    path = save_figure(fig, Path(out_dir) / f"{stem}_capacity.png")
    return path


def poems_perplexity(runs: list[dict], out_dir: str | Path, stem: str = "poems") -> Path:
    plt = _pyplot()

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in runs:
        c = r["curves"]
        protocol = r.get("protocol", "cellbench")
        poems = (r.get("split") or {}).get("train")
        label = f"{protocol} {r['kind']}/{r['backend']} s{r['seed']} {poems} poems"
        held = (c["epoch"], c.get("test_perplexity"))  # the lab's protocol holds no poem out
        _train_and_held_out(
            ax, (c["epoch"], c["train_perplexity"]), held, label, "held-out", marker="o"
        )
    _perplexity_axes(ax, "Tang poems")
    ax.legend(fontsize=6)
    path = save_figure(fig, Path(out_dir) / f"{stem}_ppl.png")
    return path
