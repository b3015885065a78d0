"""Training parity: the candidate and torch.nn train bench.tasks.charlm's model with its trainer.

torch.nn trains twice, in float32 and float64; the candidate once, from the same weights on the
same batches. Float32 noise is how far torch.nn float32 lands from torch.nn float64; the
candidate may be at most PARITY_FACTOR times further (criterion in `parity_criterion`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from bench.contract_support import threads

PARITY_FACTOR = 10.0
# an absolute floor (relative to the loss) for runs where torch.nn float32 is very close
PARITY_FLOOR = 1e-5
CORPUS_TOKENS = 10000  # d2l's first 10,000 characters of the Time Machine
SOURCE = f"the first {CORPUS_TOKENS:,} characters of the Time Machine (bench.tasks.charlm)"


def parity_criterion(
    candidate: Sequence[float], ref32: Sequence[float], ref64: Sequence[float]
) -> dict:
    """dev(x) = max over steps of |x_k - ref64_k| / ref64_k. Pass iff the candidate's losses are
    finite and dev(candidate) <= max(PARITY_FACTOR * dev(ref32), PARITY_FLOOR)."""

    def dev(xs: Sequence[float]) -> float:
        return max((abs(a - b) / abs(b) for a, b in zip(xs, ref64)), default=0.0)

    d_cand, d_ref = dev(candidate), dev(ref32)
    bound = max(PARITY_FACTOR * d_ref, PARITY_FLOOR)
    first = next(
        (k for k, (a, b) in enumerate(zip(candidate, ref64)) if not abs(a - b) / abs(b) <= bound),
        None,
    )
    finite = all(math.isfinite(x) for x in candidate)
    return dict(
        dev_candidate=d_cand,
        dev_torch_float32=d_ref,
        bound=bound,
        first_step_over=first,
        passed=finite and d_cand <= bound,
    )


def train_parity(
    factory: Callable[..., nn.Module],
    kind: str,
    steps: int = 50,
    hidden: int = 256,
    batch: int = 32,
    num_steps: int = 35,
    lr: float = 1.0,
    seed: int = 0,
) -> dict:
    """Train torch.nn (float64, float32) and the candidate for `steps` SGD steps each with
    bench.tasks.charlm.train (d2l's train_ch8: SGD, clipping at norm 1, sequential batches with
    the state carried); returns the settings, the per-step losses and parity_criterion's verdict
    (or `error` when the candidate raised or left a parameter without gradient)."""
    from bench.tasks.charlm import CharLM, load_time_machine, train

    corpus, vocab = load_time_machine(max_tokens=CORPUS_TOKENS)
    if len(corpus) < batch * num_steps + 1:
        raise ValueError(f"the corpus ({len(corpus)} tokens) holds no batch of {batch}x{num_steps}")
    ref32 = CharLM(kind, "native", len(vocab), hidden, seed=seed)
    ref64 = CharLM(kind, "native", len(vocab), hidden, seed=seed).double()
    ref64.load_state_dict({k: v.double() for k, v in ref32.state_dict().items()})
    cand = CharLM(kind, "native", len(vocab), hidden, seed=seed)
    torch.manual_seed(seed)
    cand.rnn = factory(len(vocab), hidden)
    cand.rnn.load_state_dict(ref32.rnn.state_dict())
    settings = dict(steps=steps, hidden=hidden, batch=batch, num_steps=num_steps, lr=lr)
    out: dict = dict(source=SOURCE, vocab=len(vocab), **settings)

    def losses(model: CharLM) -> list[float]:
        # (model, corpus, epochs, batch_size, num_steps, lr): epochs=steps is only an upper
        # bound, max_steps ends training after `steps` SGD steps
        run = train(
            model,
            corpus,
            steps,
            batch,
            num_steps,
            lr,
            seed=seed,
            max_steps=steps,
            show_progress=False,
        )
        return run["step_losses"]

    with threads(1):
        out["torch_float64"] = losses(ref64)
        out["torch_float32"] = losses(ref32)
        try:
            out["candidate"] = losses(cand)
            missing = [n for n, p in cand.rnn.named_parameters() if p.grad is None]
            if missing:
                raise RuntimeError(f"no gradient for {', '.join(missing)}")
        except Exception as exc:
            out.update(passed=False, error=f"{type(exc).__name__}: {exc}".splitlines()[0])
            return out
    out.update(parity_criterion(out["candidate"], out["torch_float32"], out["torch_float64"]))
    return out
