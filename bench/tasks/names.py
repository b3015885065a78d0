"""Names -> language: the PyTorch "classifying names with a character-level RNN" tutorial, batched.

18 languages, 20,074 lines of names/*.txt, folded to ASCII as the tutorial does, de-duplicated and
split train/test stratified by language with no name string on both sides. Names are one-hot
letter sequences, packed (PackedSequence) for every backend that declares packed input in
cells.capabilities, so all of them compute the same thing; a backend that does not runs the
padded batch, and the logits are taken at each name's last valid step. Also the tutorial's own
Elman cell (linear i2h / i2o on [input, hidden]) as `--model elman`.
"""

from __future__ import annotations

import argparse
import collections
import itertools
import random
import string
import time
import unicodedata
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.rnn import pack_padded_sequence

from bench import data as bdata
from bench import records
from cells.capabilities import declared

from ..figures import save_figure
from .common import (
    OPTIMIZER_RULE,
    add_common_arguments,
    apply_threads,
    at_least,
    check_kinds_backends,
    check_options,
    clip_gradients,
    done_keys,
    init_weights,
    list_of,
    make_cell,
    make_optimizer,
    open_unit,
    positive,
    progress,
    provenance,
    run_key,
    safe_name,
    seed_all,
    task_record,
)

ALL_LETTERS = string.ascii_letters + " .,;'"
N_LETTERS = len(ALL_LETTERS)  # 57, as in the tutorial
LETTER_INDEX = {c: i for i, c in enumerate(ALL_LETTERS)}


def unicode_to_ascii(s: str) -> str:
    """The tutorial's unicodeToAscii: NFD, drop combining marks and anything not in ALL_LETTERS."""
    return "".join(
        c
        for c in unicodedata.normalize("NFD", s)
        if unicodedata.category(c) != "Mn" and c in ALL_LETTERS
    )


def load_names(data: str | None = None) -> dict[str, list[str]]:
    """language -> list of ASCII-folded names, every line of names/*.txt (20,074 in all)."""
    root = bdata.locate("names", data)
    out = {}
    for path in sorted(Path(root).glob("*.txt")):
        lines = path.read_text(encoding="utf-8").strip().split("\n")
        out[path.stem] = [unicode_to_ascii(line) for line in lines]
    if len(out) != 18:
        raise bdata.DataError(f"{root}: expected 18 language files, found {len(out)}")
    return out


def split_names(
    by_language: dict[str, list[str]], test_fraction: float = 0.2, seed: int = 0
) -> tuple[list[tuple[str, int]], list[tuple[str, int]], list[str]]:
    """De-duplicate (name, language) pairs and split them by name string, stratified by language.

    A name spelled the same in several languages (e.g. 'Abel' in French and German) goes wholly to
    one side, so no test name is seen in training. Stratification uses each name's rarest language;
    every language keeps at least one test name. Returns (train, test, languages), pairs of
    (name, language index).
    """
    languages = sorted(by_language)
    labels: dict[str, set[int]] = collections.defaultdict(set)
    size = {lang: len(set(n for n in names if n)) for lang, names in by_language.items()}
    for li, lang in enumerate(languages):
        for name in by_language[lang]:
            if name:
                labels[name].add(li)
    groups: dict[int, list[str]] = collections.defaultdict(list)
    for name in sorted(labels):
        primary = min(labels[name], key=lambda li: (size[languages[li]], li))
        groups[primary].append(name)
    rng = random.Random(seed)
    test_names: set[str] = set()
    for li in sorted(groups):
        names = groups[li]
        rng.shuffle(names)
        k = max(1, round(test_fraction * len(names))) if len(names) > 1 else 0
        test_names.update(names[:k])
    train, test = [], []
    for name in sorted(labels):
        for li in sorted(labels[name]):
            (test if name in test_names else train).append((name, li))
    return train, test, languages


def encode(names: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """One-hot, time-major, zero-padded: (T, B, 57) and the lengths (B,)."""
    lengths = torch.tensor([len(n) for n in names])
    x = torch.zeros(int(lengths.max()), len(names), N_LETTERS)
    for b, name in enumerate(names):
        for t, ch in enumerate(name):
            x[t, b, LETTER_INDEX[ch]] = 1.0
    return x, lengths


class TutorialElman(nn.Module):
    """The tutorial's RNN: hidden' = i2h([x, hidden]), output = i2o([x, hidden]) (no nonlinearity
    on the hidden path, as written there), batched with a mask for padded steps."""

    def __init__(self, input_size: int, hidden_size: int, output_size: int) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.i2h = nn.Linear(input_size + hidden_size, hidden_size)
        self.i2o = nn.Linear(input_size + hidden_size, output_size)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        T, B, _ = x.shape
        h = x.new_zeros(B, self.hidden_size)
        out = x.new_zeros(B, self.i2o.out_features)
        for t in range(T):
            combined = torch.cat([x[t], h], dim=1)
            valid = (t < lengths).unsqueeze(1)
            out = torch.where(valid, self.i2o(combined), out)
            h = torch.where(valid, self.i2h(combined), h)
        return out


class NamesClassifier(nn.Module):
    """One-hot letters -> recurrent cell (any kind/backend, 1-2 layers) -> linear on the last
    valid step; or the tutorial's Elman cell (model='elman')."""

    def __init__(
        self,
        kind: str,
        backend: str,
        hidden_size: int = 128,
        num_layers: int = 1,
        n_classes: int = 18,
        model: str = "cell",
        pack: bool | None = None,
        seed: int = 0,
        init: str = "default",
    ) -> None:
        super().__init__()
        self.model = model
        if model == "elman":
            self.net = TutorialElman(N_LETTERS, hidden_size, n_classes)
        elif model == "cell":
            self.rnn = make_cell(kind, backend, N_LETTERS, hidden_size, num_layers)
            self.head = nn.Linear(hidden_size, n_classes)
        else:
            raise ValueError(f"unknown --model {model!r}; expected 'cell' or 'elman'")
        takes_packed = model == "cell" and declared(kind, backend).packed
        self.pack = takes_packed if pack is None else pack
        if self.pack and model == "cell" and not takes_packed:
            raise ValueError(
                f"backend {backend!r} does not declare PackedSequence input "
                "(cells.capabilities); run it with padded batches (pack=False)"
            )
        init_weights(self, init, seed)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if self.model == "elman":
            return self.net(x, lengths)
        if self.pack:
            packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
            _, state = self.rnn(packed)
            h = state[0] if isinstance(state, tuple) else state
            return self.head(h[-1])
        y, _ = self.rnn(x)  # (T, B, H): pick each name's last valid step
        last = y[lengths - 1, torch.arange(x.shape[1])]
        return self.head(last)


def _evaluate(model, pairs, batch_size: int, n_classes: int):
    model.eval()
    confusion = torch.zeros(n_classes, n_classes, dtype=torch.long)
    total_loss = 0.0
    with torch.no_grad():
        for i in range(0, len(pairs), batch_size):
            chunk = pairs[i : i + batch_size]
            x, lengths = encode([n for n, _ in chunk])
            y = torch.tensor([li for _, li in chunk])
            logits = model(x, lengths)
            total_loss += float(F.cross_entropy(logits, y, reduction="sum"))
            pred = logits.argmax(1)
            confusion.index_put_((y, pred), torch.ones_like(y), accumulate=True)
    model.train()
    acc = float(confusion.diag().sum()) / max(1, len(pairs))
    return total_loss / max(1, len(pairs)), acc, confusion


def run_one(
    kind: str,
    backend: str,
    seed: int,
    s: dict,
    train_pairs,
    test_pairs,
    languages,
    show_progress=None,
) -> dict:
    seed_all(seed)
    n_classes = len(languages)
    model = NamesClassifier(
        kind, backend, s["hidden_size"], s["num_layers"], n_classes, s["model"], seed=seed
    )
    opt = make_optimizer(s["optimizer"], model.parameters(), s["lr"])
    rng = random.Random(seed)
    curves = {
        "epoch": [],
        "train_loss": [],
        "train_accuracy": [],
        "test_loss": [],
        "test_accuracy": [],
    }
    train_seconds, seen, chars = 0.0, 0, 0
    order = list(train_pairs)
    for epoch in progress(
        range(s["epochs"]), total=s["epochs"], desc=f"names {kind}/{backend}", enabled=show_progress
    ):
        rng.shuffle(order)
        total_loss, correct, count = 0.0, 0, 0
        start = time.perf_counter()
        for i in range(0, len(order), s["batch_size"]):
            chunk = order[i : i + s["batch_size"]]
            x, lengths = encode([n for n, _ in chunk])
            y = torch.tensor([li for _, li in chunk])
            logits = model(x, lengths)
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            clip_gradients(model.parameters(), s["clip"])
            opt.step()
            total_loss += float(loss.detach()) * len(chunk)
            correct += int((logits.argmax(1) == y).sum())
            count += len(chunk)
            chars += int(lengths.sum())
        train_seconds += time.perf_counter() - start
        seen += count
        test_loss, test_acc, _ = _evaluate(model, test_pairs, 256, n_classes)
        curves["epoch"].append(epoch + 1)
        curves["train_loss"].append(total_loss / count)
        curves["train_accuracy"].append(correct / count)
        curves["test_loss"].append(test_loss)
        curves["test_accuracy"].append(test_acc)
    test_loss, test_acc, confusion = _evaluate(model, test_pairs, 256, n_classes)
    per_class = {}
    for li, lang in enumerate(languages):
        n = int(confusion[li].sum())
        per_class[lang] = float(confusion[li, li]) / n if n else None
    known = [v for v in per_class.values() if v is not None]
    metrics = {
        "test_accuracy": test_acc,
        "test_loss": test_loss,
        "balanced_accuracy": sum(known) / len(known) if known else None,
        "train_accuracy": curves["train_accuracy"][-1],
        "train_loss": curves["train_loss"][-1],
        "train_time_s": train_seconds,
        "names_per_s": seen / train_seconds if train_seconds else None,
        "tokens_per_s": chars / train_seconds if train_seconds else None,
        "epochs": s["epochs"],
    }
    timings = {"train_time_s": train_seconds, "names": seen, "characters": chars}
    label_kind = "elman" if s["model"] == "elman" else kind
    label_backend = "tutorial" if s["model"] == "elman" else backend
    return task_record(
        "names",
        label_kind,
        label_backend,
        seed,
        s,
        metrics,
        curves,
        timings,
        per_class_accuracy=per_class,
        confusion=confusion.tolist(),
        languages=languages,
        packed=bool(model.pack) and s["model"] == "cell",
        split={"train": len(train_pairs), "test": len(test_pairs)},
    )


def plot_confusion(record: dict, out_dir: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

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
        f"test accuracy {record['metrics']['test_accuracy']:.3f}",
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


def plot_curves(runs: list[dict], out_dir: str | Path, stem: str = "names") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    for r in runs:
        c = r["curves"]
        label = f"{r['kind']}/{r['backend']} L{r['settings']['num_layers']} s{r['seed']}"
        (line,) = a1.plot(c["epoch"], c["train_loss"], label=label + " train")
        a1.plot(c["epoch"], c["test_loss"], ls="--", color=line.get_color(), label=label + " test")
        a2.plot(c["epoch"], c["train_accuracy"], color=line.get_color(), label=label + " train")
        a2.plot(
            c["epoch"], c["test_accuracy"], ls="--", color=line.get_color(), label=label + " test"
        )
    a1.set_xlabel("epoch")
    a1.set_ylabel("cross-entropy")
    a1.legend(fontsize=6)
    a2.set_xlabel("epoch")
    a2.set_ylabel("accuracy")
    a2.legend(fontsize=6)
    fig.suptitle("names: loss and accuracy")
    path = save_figure(fig, Path(out_dir) / f"{stem}_curves.png")
    return path


def configure(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, kinds="lstm", backends="native")
    parser.add_argument(
        "--model",
        type=list_of(str, "--model"),
        default=["cell"],
        help="cell (a kind/backend from cells) and/or elman (the tutorial's RNN)",
    )
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--hidden", "--hidden-size", dest="hidden", type=int, default=128)
    parser.add_argument(
        "--layers",
        "--num-layers",
        dest="layers",
        type=list_of(int, "--layers"),
        default=[1],
        help="1 and/or 2",
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--optimizer", default="adam", help="sgd, adam, rmsprop")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--clip", type=float, default=1.0)
    parser.add_argument("--test-fraction", type=float, default=0.2)
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the train/test split")
    parser.add_argument(
        "--max-train",
        type=int,
        default=0,
        help="use only this many training pairs (0: all; for short runs)",
    )
    parser.set_defaults(func=main)


RULES = (
    ("model", "--model", "one of cell, elman", lambda v: v in ("cell", "elman")),
    ("epochs", "--epochs", "an integer >= 1", at_least(1)),
    ("hidden", "--hidden", "an integer >= 1", at_least(1)),
    ("layers", "--layers", "an integer >= 1", at_least(1)),
    ("batch_size", "--batch-size", "an integer >= 1", at_least(1)),
    OPTIMIZER_RULE,
    ("lr", "--lr", "a number > 0", positive),
    ("clip", "--clip", "a number >= 0 (0: no clipping)", at_least(0)),
    ("test_fraction", "--test-fraction", "in (0, 1)", open_unit),
    ("split_seed", "--split-seed", "an integer >= 0", at_least(0)),
    ("max_train", "--max-train", "an integer >= 0 (0: all)", at_least(0)),
)


def main(args) -> int:
    check_options(args, RULES)
    apply_threads(args)
    check_kinds_backends(args.kinds, args.backends)
    found = bdata.find("names", args.data)
    train_pairs, test_pairs, languages = split_names(
        load_names(found.path), args.test_fraction, args.split_seed
    )
    if args.max_train and args.max_train > 0:
        sub = list(train_pairs)
        random.Random(args.split_seed).shuffle(sub)
        train_pairs = sub[: args.max_train]
    done = done_keys(args.out) if args.resume else set()
    runs = []
    combos = []
    for model_name in args.model:
        if model_name == "elman":
            combos += [("elman", "tutorial", 1, model_name)]
        else:
            combos += [
                (k, b, layers, model_name)
                for k, b, layers in itertools.product(args.kinds, args.backends, args.layers)
            ]
    for (kind, backend, layers, model_name), seed in itertools.product(combos, args.seeds):
        s = {
            "model": model_name,
            "epochs": args.epochs,
            "hidden_size": args.hidden,
            "num_layers": layers,
            "batch_size": args.batch_size,
            "optimizer": args.optimizer,
            "lr": args.lr,
            "clip": args.clip,
            "test_fraction": args.test_fraction,
            "split_seed": args.split_seed,
            "max_train": args.max_train,
        }
        if model_name == "elman":
            kind_arg, backend_arg = args.kinds[0], args.backends[0]
        else:
            kind_arg, backend_arg = kind, backend
        if run_key("names", kind, backend, seed, s) in done:
            print(f"names {kind}/{backend} seed {seed}: already recorded, skipped")
            continue
        record = run_one(
            kind_arg, backend_arg, seed, s, train_pairs, test_pairs, languages, args.progress
        )
        provenance(record, args, found.source)
        records.append(args.out, record)
        runs.append(record)
        m = record["metrics"]
        print(
            f"names {record['kind']}/{record['backend']} L{layers} seed {seed}: test accuracy "
            f"{m['test_accuracy']:.3f}, loss {m['test_loss']:.3f}, {m['names_per_s']:.0f} names/s, "
            f"{m['train_time_s']:.1f} s"
        )
        if not args.no_plots:
            plot_confusion(record, args.out)
    if runs and not args.no_plots:
        plot_curves(runs, args.out)
    return 0
