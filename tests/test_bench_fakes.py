"""Fake backends of known cost for the bench tests (no tests here; imported by them and by worker processes)."""

from __future__ import annotations

import os
import signal
import time

import torch
from torch import nn

import cells


class FakeClock:
    """A clock that only moves when a fake backend 'computes'."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


CLOCK = FakeClock()
CALLS: list[dict] = []


class FakeRecurrent(nn.Module):
    """torch.nn's forward contract; costs STEP_COST fake seconds per time step, and
    FIRST_COST extra on its first call (a stand-in for compilation)."""

    STEP_COST = 1e-3
    FIRST_COST = 0.5
    kind = "lstm"

    def __init__(self, input_size, hidden_size, num_layers=1, device=None, dtype=None, **nn_args):
        # nn_args: the rest of torch.nn's constructor arguments, which a fake ignores
        super().__init__()
        self.hidden_size = hidden_size
        self.weight_hh_l0 = nn.Parameter(
            torch.ones(4 * hidden_size, hidden_size, device=device, dtype=dtype)
        )
        self.called = False

    def forward(self, x, hx=None):
        CALLS.append(
            {
                "shape": tuple(x.shape),
                "state_none": hx is None,
                "training": self.training,
                "grad": torch.is_grad_enabled(),
            }
        )
        cost = self.STEP_COST * x.shape[0] + (0.0 if self.called else self.FIRST_COST)
        self.called = True
        CLOCK.advance(cost)
        t, b = x.shape[0], x.shape[1]
        y = torch.zeros(t, b, self.hidden_size, dtype=x.dtype) + self.weight_hh_l0.sum() * 0
        h = y[-1:].detach()
        step = 0 if hx is None else int(hx[0][0, 0, 0].item()) + 1  # counts the carried steps
        h = torch.full_like(h, float(step))
        return y, (h, h.clone())


class Broken(FakeRecurrent):
    def forward(self, x, hx=None):
        raise RuntimeError("fake kernel exploded on purpose")


class Hangs(FakeRecurrent):
    def forward(self, x, hx=None):
        time.sleep(3600)


class Crashes(FakeRecurrent):
    def forward(self, x, hx=None):
        os.kill(os.getpid(), signal.SIGKILL)


def register_all() -> None:
    for name, cls in (
        ("fake", FakeRecurrent),
        ("broken", Broken),
        ("hangs", Hangs),
        ("crashes", Crashes),
    ):
        cells.register("lstm", name, cls, replace=True)


def unregister_all() -> None:
    for name in ("fake", "broken", "hangs", "crashes"):
        cells.unregister("lstm", name)
