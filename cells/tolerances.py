"""Equivalence tolerances: the one place they are defined.

Measure: the norm-wise relative error ||candidate - reference|| / ||reference|| of each tensor
(output, final states, every gradient), where the reference is torch.nn in float64 on the same
weights and data.

Why these numbers:
* float64: the candidate does the same math in the same precision; only summation order
  differs (unit roundoff 1.1e-16), so anything above 1e-10 is a different function.
* float32: unit roundoff is 6e-8. Over a 3-layer, 200-step sequence with reductions of length
  I + H the worst error seen in the suite stays below 2e-6; 2e-5 keeps a 10x margin while every
  real bug we plant (gate order, a missing bias, a time shift, a drift of 1e-4 per step) is
  at least 1e-4 off. The CUDA tf32 path is disabled in the checks (see equivalence.py).
* float16 (10-bit mantissa, roundoff 4.9e-4) and bfloat16 (7-bit, 3.9e-3): errors grow with
  sequence length; 1e-2 and 5e-2 hold for the suite's shapes on cuDNN and the loop backends.
  On the CPU (tests/test_capabilities.py: modules built in the half dtype, 2 layers,
  bidirectional, T=5; and T=50), the worst error over every kind and every backend that declares
  the dtype was 2.6e-3 in float16 and 1.6e-2 in bfloat16 (both a GRU bias gradient, which sums
  over all steps), so the same tolerances keep a 3-4x margin. A backend that cannot compute in a
  dtype says so (cells/capabilities.py) and refuses it; it is never compared at a looser bound.
"""

from __future__ import annotations

import torch

RELATIVE_TOLERANCE: dict[torch.dtype, float] = {
    torch.float64: 1e-10,
    torch.float32: 2e-5,
    torch.float16: 1e-2,
    torch.bfloat16: 5e-2,
}


def tolerance(dtype: torch.dtype) -> float:
    try:
        return RELATIVE_TOLERANCE[dtype]
    except KeyError:
        raise ValueError(
            f"no tolerance defined for {dtype}; expected one of "
            f"{', '.join(str(d) for d in RELATIVE_TOLERANCE)}"
        ) from None
