"""a^n b^n (written 0^n 1^n) next-symbol prediction, after Gers & Schmidhuber (2001).

Strings `3 0^n 1^n 2` (3 = start, 2 = end), n drawn from 1..10 with weights 10,6,4,3,1,1,1,1,1,1.
Embedding + a cell of hidden size 2 + linear, Adam lr 1e-3, cross-entropy on every next symbol.
Evaluation for every n in 1..100, greedy next-symbol predictions along the string, read two ways:

- strict (`capacity`): only the positions the prefix determines are required, the remaining 1s
  after the first 1 has been read and the end symbol. While the zeros are read either symbol can
  legally follow, so those predictions (and the unpredictable first 1) are not counted.
- the lab's reading (`capacity_lab`): the lab's "Diff" over every position, less the two errors
  its report forgives: the unpredictable first 1, and the second symbol (right after the first
  0), where its printed outputs err for most n. Lenient next to counting every position; it still
  counts the other predictions made while the zeros are read, which the strict reading does not.

Memory capacity = the largest N such that every n <= N is solved. Tiny nets are seed-sensitive:
run several seeds and report the spread.
"""

from __future__ import annotations

import argparse
import itertools
import random
import statistics
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from bench import records

from ..figures import save_figure
from .common import (
    OPTIMIZER_RULE,
    add_common_arguments,
    apply_threads,
    at_least,
    check_kinds_backends,
    check_options,
    done_keys,
    init_weights,
    make_cell,
    make_optimizer,
    positive,
    progress,
    provenance,
    run_key,
    seed_all,
    task_record,
)

START, ZERO, ONE, END = 3, 0, 1, 2
N_VALUES = tuple(range(1, 11))
N_WEIGHTS = (10, 6, 4, 3, 1, 1, 1, 1, 1, 1)
PAD = -100  # ignore_index of the loss


def sequence(n: int) -> list[int]:
    return [START] + [ZERO] * n + [ONE] * n + [END]


def make_batch(ns: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs (T, B) and targets (T, B), time-major; padding positions have target PAD."""
    seqs = [sequence(n) for n in ns]
    T = max(len(s) for s in seqs) - 1
    x = torch.full((T, len(ns)), END, dtype=torch.long)
    y = torch.full((T, len(ns)), PAD, dtype=torch.long)
    for b, s in enumerate(seqs):
        x[: len(s) - 1, b] = torch.tensor(s[:-1])
        y[: len(s) - 1, b] = torch.tensor(s[1:])
    return x, y


class AnBnNet(nn.Module):
    def __init__(
        self,
        kind: str,
        backend: str,
        hidden_size: int = 2,
        embed: int = 4,
        seed: int = 0,
        init: str = "default",
    ) -> None:
        super().__init__()
        self.embedding = nn.Embedding(4, embed)
        self.rnn = make_cell(kind, backend, embed, hidden_size)
        self.head = nn.Linear(hidden_size, 4)
        init_weights(self, init, seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.rnn(self.embedding(x))
        return self.head(y)  # (T, B, 4)


def prediction_errors(model: AnBnNet, n_max: int = 100) -> tuple[list[int], list[int]]:
    """(strict, lab) wrong greedy predictions on `3 0^n 1^n 2` for n = 1..n_max.

    strict[n-1] counts the positions the prefix determines: targets after the first 1 has been
    read (t = n+1 .. 2n: the remaining 1s and the end symbol). lab[n-1] counts every position but
    the unpredictable first 1 (target at t = n) and the second symbol (t = 1)."""
    ns = list(range(1, n_max + 1))
    model.eval()
    with torch.no_grad():
        x, y = make_batch(ns)
        pred = model(x).argmax(-1)
    model.train()
    wrong = (pred != y) & (y != PAD)  # (T, B)
    t = torch.arange(y.shape[0]).unsqueeze(1)
    n = torch.tensor(ns).unsqueeze(0)
    lab = wrong & (t != n) & (t != 1)
    strict = wrong & (t > n)  # padding is already excluded by y != PAD
    return strict.sum(0).tolist(), lab.sum(0).tolist()


def avoidable_errors(model: AnBnNet, n_max: int = 100) -> list[int]:
    """Strict errors per n: wrong predictions at the positions the prefix determines."""
    return prediction_errors(model, n_max)[0]


def capacity(errors: list[int]) -> int:
    """The largest N with no counted error for every n in 1..N (0 if n=1 fails)."""
    cap = 0
    for n, e in enumerate(errors, 1):
        if e:
            break
        cap = n
    return cap


def run_one(kind: str, backend: str, seed: int, s: dict, show_progress=None) -> dict:
    seed_all(seed)
    model = AnBnNet(kind, backend, s["hidden_size"], s["embed"], seed=seed)
    opt = make_optimizer(s["optimizer"], model.parameters(), s["lr"])
    rng = random.Random(seed)
    curve_steps, curve_loss, curve_cap, curve_lab = [], [], [], []
    running, count = 0.0, 0
    eval_every = max(1, s["steps"] // 20)
    start = time.perf_counter()
    symbols = 0
    for step in progress(
        range(1, s["steps"] + 1),
        total=s["steps"],
        desc=f"anbn {kind}/{backend}",
        enabled=show_progress,
    ):
        ns = rng.choices(N_VALUES, weights=N_WEIGHTS, k=s["batch_size"])
        x, y = make_batch(ns)
        logits = model(x)
        loss = F.cross_entropy(logits.reshape(-1, 4), y.reshape(-1), ignore_index=PAD)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        running += float(loss.detach())
        count += 1
        symbols += int((y != PAD).sum())
        if step % eval_every == 0 or step == s["steps"]:
            curve_steps.append(step)
            curve_loss.append(running / count)
            strict, every = prediction_errors(model, s["n_eval"])
            curve_cap.append(capacity(strict))
            curve_lab.append(capacity(every))
            running, count = 0.0, 0
    train_seconds = time.perf_counter() - start
    errors, every = prediction_errors(model, s["n_eval"])
    cap = capacity(errors)
    solved = [n for n, e in enumerate(errors, 1) if e == 0]
    metrics = {
        "capacity": cap,
        "capacity_lab": capacity(every),
        "max_solved": max(solved) if solved else 0,
        "solved_count": len(solved),
        "solved_train_range": all(e == 0 for e in errors[:10]),
        "final_loss": curve_loss[-1] if curve_loss else None,
        "train_time_s": train_seconds,
        "tokens_per_s": symbols / train_seconds if train_seconds else None,
    }
    curves = {
        "step": curve_steps,
        "loss": curve_loss,
        "capacity": curve_cap,
        "capacity_lab": curve_lab,
    }
    return task_record(
        "anbn",
        kind,
        backend,
        seed,
        s,
        metrics,
        curves,
        {"train_time_s": train_seconds, "symbols": symbols},
        errors=errors,
        errors_lab=every,
    )


def summarize(runs: list[dict], metric: str = "capacity") -> dict[tuple[str, str], dict]:
    """Per (kind, backend): `metric` (capacity or capacity_lab) over seeds (min, median, max,
    mean, all)."""
    by: dict[tuple[str, str], list[int]] = {}
    for r in runs:
        value = r["metrics"].get(metric)
        if value is not None:
            by.setdefault((r["kind"], r["backend"]), []).append(value)
    return {
        key: {
            "seeds": len(c),
            "min": min(c),
            "median": statistics.median(c),
            "max": max(c),
            "mean": statistics.fmean(c),
            "all": c,
        }
        for key, c in by.items()
    }


def plot_capacity(runs: list[dict], out_dir: str | Path, stem: str = "anbn") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    summary, lab = summarize(runs), summarize(runs, "capacity_lab")
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


def configure(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, kinds="lstm", backends="native", seeds="0,1,2,3,4")
    parser.add_argument("--steps", type=int, default=10000, help="training steps (minibatches)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--hidden", "--hidden-size", dest="hidden", type=int, default=2)
    parser.add_argument("--embed", type=int, default=4, help="embedding size")
    parser.add_argument("--optimizer", default="adam")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--n-eval", type=int, default=100, help="evaluate n = 1..N")
    parser.set_defaults(func=main)


RULES = (
    ("steps", "--steps", "an integer >= 1", at_least(1)),
    ("batch_size", "--batch-size", "an integer >= 1", at_least(1)),
    ("hidden", "--hidden", "an integer >= 1", at_least(1)),
    ("embed", "--embed", "an integer >= 1", at_least(1)),
    OPTIMIZER_RULE,
    ("lr", "--lr", "a number > 0", positive),
    ("n_eval", "--n-eval", "an integer >= 1", at_least(1)),
)


def main(args) -> int:
    check_options(args, RULES)
    apply_threads(args)
    check_kinds_backends(args.kinds, args.backends)
    s = {
        "steps": args.steps,
        "batch_size": args.batch_size,
        "hidden_size": args.hidden,
        "embed": args.embed,
        "optimizer": args.optimizer,
        "lr": args.lr,
        "n_eval": args.n_eval,
    }
    done = done_keys(args.out) if args.resume else set()
    runs = []
    for kind, backend, seed in itertools.product(args.kinds, args.backends, args.seeds):
        if run_key("anbn", kind, backend, seed, s) in done:
            print(f"anbn {kind}/{backend} seed {seed}: already recorded, skipped")
            continue
        record = provenance(run_one(kind, backend, seed, s, args.progress), args)
        records.append(args.out, record)
        runs.append(record)
        m = record["metrics"]
        print(
            f"anbn {kind}/{backend} seed {seed}: capacity {m['capacity']} (lab's reading "
            f"{m['capacity_lab']}), largest solved "
            f"{m['max_solved']}, loss {m['final_loss']:.3f}, {m['train_time_s']:.1f} s"
        )
    lab = summarize(runs, "capacity_lab")
    for (kind, backend), v in summarize(runs).items():
        w = lab[(kind, backend)]
        print(
            f"anbn {kind}/{backend}: capacity over {v['seeds']} seeds min {v['min']} median "
            f"{v['median']} max {v['max']} ({v['all']}); the lab's reading min "
            f"{w['min']} median {w['median']} max {w['max']} ({w['all']})"
        )
    if runs and not args.no_plots:
        plot_capacity(runs, args.out)
    return 0
