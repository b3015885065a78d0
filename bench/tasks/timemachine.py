"""The Time Machine as d2l chapter 8 prepares it: preprocessing, vocabulary, the two minibatch
iterators, and a training slice with a held-out validation tail."""

from __future__ import annotations

import collections
import random as _random
import re
from collections.abc import Iterator, Sequence

import torch

from bench import data as bdata


class Vocab:
    """d2l's Vocab: tokens sorted by frequency (ties in first-seen order), '<unk>' at index 0."""

    def __init__(
        self, tokens: Sequence = (), min_freq: int = 0, reserved_tokens: Sequence[str] = ()
    ) -> None:
        if tokens and isinstance(tokens[0], (list, tuple)):
            tokens = [t for line in tokens for t in line]
        counter = collections.Counter(tokens)
        self.token_freqs = sorted(counter.items(), key=lambda x: x[1], reverse=True)
        self.idx_to_token = ["<unk>"] + list(reserved_tokens)
        self.token_to_idx = {t: i for i, t in enumerate(self.idx_to_token)}
        for token, freq in self.token_freqs:
            if freq < min_freq:
                break
            if token not in self.token_to_idx:
                self.idx_to_token.append(token)
                self.token_to_idx[token] = len(self.idx_to_token) - 1

    def __len__(self) -> int:
        return len(self.idx_to_token)

    def __getitem__(self, tokens):
        if not isinstance(tokens, (list, tuple)):
            return self.token_to_idx.get(tokens, self.unk)
        return [self.__getitem__(t) for t in tokens]

    def to_tokens(self, indices):
        if hasattr(indices, "__len__") and not isinstance(indices, str):
            return [self.idx_to_token[int(i)] for i in indices]
        return self.idx_to_token[int(indices)]

    @property
    def unk(self) -> int:
        return 0


def preprocess(text: str) -> list[str]:
    """d2l's read_time_machine: letters only, lower case, one string per line."""
    return [re.sub("[^A-Za-z]+", " ", line).strip().lower() for line in text.splitlines()]


def _full_corpus(data: str | None) -> tuple[list[int], Vocab]:
    lines = preprocess(bdata.read_text("timemachine.txt", data))
    tokens = [list(line) for line in lines]  # d2l's tokenize(lines, 'char')
    vocab = Vocab(tokens)
    corpus = [vocab[t] for line in tokens for t in line]
    return corpus, vocab


def load_time_machine(max_tokens: int = 10000, data: str | None = None) -> tuple[list[int], Vocab]:
    """d2l's load_corpus_time_machine: (corpus of token indices, vocab); the first max_tokens
    characters when max_tokens > 0 (d2l's default 10,000), else all 170,580."""
    corpus, vocab = _full_corpus(data)
    if max_tokens and max_tokens > 0:
        corpus = corpus[:max_tokens]
    return corpus, vocab


def load_split(
    max_tokens: int = 10000, val_fraction: float = 0.1, data: str | None = None
) -> tuple[list[int], list[int], Vocab]:
    """Training corpus (d2l's first max_tokens characters) and a held-out validation tail (the
    last val_fraction of the book), never overlapping."""
    corpus, vocab = _full_corpus(data)
    n_val = int(len(corpus) * val_fraction) if val_fraction > 0 else 0
    limit = len(corpus) - n_val
    n_train = min(max_tokens, limit) if max_tokens and max_tokens > 0 else limit
    return corpus[:n_train], corpus[limit:], vocab


def seq_data_iter_random(corpus, batch_size, num_steps, rng: _random.Random):
    corpus = corpus[rng.randint(0, num_steps - 1) :]
    num_subseqs = (len(corpus) - 1) // num_steps
    initial_indices = list(range(0, num_subseqs * num_steps, num_steps))
    rng.shuffle(initial_indices)
    num_batches = num_subseqs // batch_size
    for i in range(0, batch_size * num_batches, batch_size):
        starts = initial_indices[i : i + batch_size]
        X = [corpus[j : j + num_steps] for j in starts]
        Y = [corpus[j + 1 : j + 1 + num_steps] for j in starts]
        yield torch.tensor(X), torch.tensor(Y)


def seq_data_iter_sequential(
    corpus, batch_size, num_steps, rng: _random.Random | None, offset: int | None = None
):
    if offset is None:
        if rng is None:
            raise ValueError("seq_data_iter_sequential needs an rng or a fixed offset")
        offset = rng.randint(0, num_steps)
    num_tokens = ((len(corpus) - offset - 1) // batch_size) * batch_size
    Xs = torch.tensor(corpus[offset : offset + num_tokens])
    Ys = torch.tensor(corpus[offset + 1 : offset + 1 + num_tokens])
    Xs, Ys = Xs.reshape(batch_size, -1), Ys.reshape(batch_size, -1)
    num_batches = Xs.shape[1] // num_steps
    for i in range(0, num_steps * num_batches, num_steps):
        yield Xs[:, i : i + num_steps], Ys[:, i : i + num_steps]


def batches(
    corpus: Sequence[int],
    batch_size: int,
    num_steps: int,
    random: bool = False,
    seed: int = 0,
    offset: int | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(X, Y) LongTensor pairs of shape (batch_size, num_steps), Y = X shifted by one.

    random=False: d2l's seq_data_iter_sequential (consecutive batches continue each other);
    random=True: d2l's seq_data_iter_random. The random offset (and shuffle) come from `seed`,
    so two runs with the same seed see the same batches. `offset` fixes the sequential offset.
    """
    if batch_size < 1 or num_steps < 1:
        raise ValueError(f"batch_size and num_steps must be >= 1, got {batch_size}, {num_steps}")
    rng = _random.Random(seed)
    if random:
        return seq_data_iter_random(list(corpus), batch_size, num_steps, rng)
    return seq_data_iter_sequential(list(corpus), batch_size, num_steps, rng, offset)
