"""`python -m bench validate MODULE:ATTR --kind KIND`: is a new kernel correct, and how fast is it?

The candidate is an nn.Module class taking torch.nn's constructor arguments for its kind and
using torch.nn's parameter names (weight_ih_l0, ..., _reverse), or a factory returning one. It is
registered in `cells` under `--name` (default "candidate") and checked four ways:

1. Equivalence (`equivalence`): candidate vs torch.nn in float64 on shared weights through
   cells.equivalence.compare, over a matrix of configurations, then float32 on part of it and
   float16/bfloat16 on a GPU. A constructor that raises for an option marks that option
   "unsupported", not failed, unless `--require OPTION` names it.
2. Contract (bench/contract.py): torch.nn's behaviour beyond one forward and backward pass, one
   named check per clause.
3. Training parity (`parity`): the candidate and torch.nn train bench.tasks.charlm's model with
   its trainer from the same weights on the same batches; the loss trajectories must agree
   within float32 noise.
4. Speed (`speed`): the candidate timed beside the built-in backends by bench.timing.GroupTimer;
   reported (tokens/s, ratio to native with its CI), not gated, except that a candidate that
   fails in the timing fails.

`command` runs them and writes OUT/validate.md (`report`) and a "validate" record to
OUT/records.jsonl; the exit status is 0 only if everything required passed, else 1 with a
one-line reason (2: the candidate cannot be loaded or the arguments are wrong).
"""

from __future__ import annotations

from .command import REQUIRABLE, configure, load_target, main, validate
from .equivalence import (
    HALF,
    OPTIONS,
    Check,
    check_equivalence,
    check_one,
    config_options,
    failure_detail,
    low_precision_matrix,
    matrix,
    worst_errors,
)
from .parity import PARITY_FACTOR, PARITY_FLOOR, parity_criterion, train_parity
from .report import render
from .speed import D2L_SHAPE, LARGE_SHAPE, SPEED_MODES, measure_speed

__all__ = [
    "D2L_SHAPE",
    "HALF",
    "LARGE_SHAPE",
    "OPTIONS",
    "PARITY_FACTOR",
    "PARITY_FLOOR",
    "REQUIRABLE",
    "SPEED_MODES",
    "Check",
    "check_equivalence",
    "check_one",
    "config_options",
    "configure",
    "failure_detail",
    "load_target",
    "low_precision_matrix",
    "main",
    "matrix",
    "measure_speed",
    "parity_criterion",
    "render",
    "train_parity",
    "validate",
    "worst_errors",
]
