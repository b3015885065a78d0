"""The names data and models: the tutorial's 18 files folded to ASCII, a leak-free split, one-hot
batches, the tutorial's Elman RNN and a classifier over any cell kind and backend."""

from __future__ import annotations

import collections
import random
import string
import unicodedata
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.rnn import pack_padded_sequence

from bench import data as bdata
from cells.capabilities import declared

from .common import init_weights, make_cell

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
    train: list[tuple[str, int]] = []
    test: list[tuple[str, int]] = []
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
        lengths = lengths.to(x.device)
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
        if model not in ("cell", "elman"):
            raise ValueError(f"unknown --model {model!r}; expected 'cell' or 'elman'")
        # the declared capability first: the message holds whether or not the backend can run here
        takes_packed = model == "cell" and declared(kind, backend).packed
        self.pack = takes_packed if pack is None else pack
        if self.pack and model == "cell" and not takes_packed:
            raise ValueError(
                f"backend {backend!r} does not declare PackedSequence input "
                "(cells.capabilities); run it with padded batches (pack=False)"
            )
        if model == "elman":
            self.net = TutorialElman(N_LETTERS, hidden_size, n_classes)
        else:
            self.rnn = make_cell(kind, backend, N_LETTERS, hidden_size, num_layers)
            self.head = nn.Linear(hidden_size, n_classes)
        init_weights(self, init, seed)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        x = x.to(next(self.parameters()).device)  # batches are encoded on the CPU
        if self.model == "elman":
            return self.net(x, lengths)
        if self.pack:
            packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
            _, state = self.rnn(packed)
            h = state[0] if isinstance(state, tuple) else state
            return self.head(h[-1])
        y, _ = self.rnn(x)  # (T, B, H): pick each name's last valid step
        last = y[(lengths - 1).to(y.device), torch.arange(x.shape[1], device=y.device)]
        return self.head(last)


def evaluate(
    model: nn.Module, pairs: Sequence[tuple[str, int]], batch_size: int, n_classes: int
) -> tuple[float, float, torch.Tensor]:
    """(mean loss, accuracy, confusion matrix with rows = true class) over (name, class) pairs."""
    model.eval()
    confusion = torch.zeros(n_classes, n_classes, dtype=torch.long)
    total_loss = 0.0
    with torch.no_grad():
        for i in range(0, len(pairs), batch_size):
            chunk = pairs[i : i + batch_size]
            x, lengths = encode([n for n, _ in chunk])
            y = torch.tensor([li for _, li in chunk])
            logits = model(x, lengths).cpu()
            total_loss += float(F.cross_entropy(logits, y, reduction="sum"))
            pred = logits.argmax(1)
            confusion.index_put_((y, pred), torch.ones_like(y), accumulate=True)
    model.train()
    acc = float(confusion.diag().sum()) / max(1, len(pairs))
    return total_loss / max(1, len(pairs)), acc, confusion
