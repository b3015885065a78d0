"""The activations every numba kernel inlines: `act_sigmoid` and `act_tanh`.

In float32 they are a branch-free rational approximation (no libm call, so LLVM vectorises the
loops; max abs error 3.6e-7, about 6 ulp; NaN and inf propagate), in float64 libm's exp / tanh
(full precision, as float64's 1e-10 tolerance needs).
"""

from __future__ import annotations

import numpy as np
from numba import types
from numba.extending import overload

from .jit_options import FASTMATH

# tanh(x) ~ x P(x^2) / Q(x^2) on [-C, C], saturated outside (float32 accuracy)
_C = np.float32(7.90531110763549805)
_A1, _A3, _A5, _A7 = (
    np.float32(4.89352455891786e-03),
    np.float32(6.37261928875436e-04),
    np.float32(1.48572235717979e-05),
    np.float32(5.12229709037114e-08),
)
_A9, _A11, _A13 = (
    np.float32(-8.60467152213735e-11),
    np.float32(2.00018790482477e-13),
    np.float32(-2.76076847742355e-16),
)
_B0, _B2, _B4, _B6 = (
    np.float32(4.89352518554385e-03),
    np.float32(2.26843463243900e-03),
    np.float32(1.18534705686654e-04),
    np.float32(1.19825839466702e-06),
)
_HALF32 = np.float32(0.5)


def act_tanh(x):  # pragma: no cover - replaced by the overload inside jitted code
    return np.tanh(x)


def act_sigmoid(x):  # pragma: no cover
    return 1.0 / (1.0 + np.exp(-x))


# The overloads are inlined into the kernels at numba-IR level, so LLVM sees straight-line
# selects and FMAs and vectorises the loops (a call would keep them scalar).
@overload(act_tanh, inline="always", jit_options={"fastmath": FASTMATH, "error_model": "numpy"})
def _ov_tanh(x):
    if x == types.float32:

        def tanh32(x):
            x = min(max(x, -_C), _C)  # NaN passes through (Python's min / max semantics)
            x2 = x * x
            p = (
                (((((_A13 * x2 + _A11) * x2 + _A9) * x2 + _A7) * x2 + _A5) * x2 + _A3) * x2 + _A1
            ) * x
            q = ((_B6 * x2 + _B4) * x2 + _B2) * x2 + _B0
            return p / q

        return tanh32
    return lambda x: np.tanh(x)


@overload(act_sigmoid, inline="always", jit_options={"fastmath": FASTMATH, "error_model": "numpy"})
def _ov_sigmoid(x):
    if x == types.float32:

        def sigmoid32(x):  # 1 / (1 + e^-x) = (1 + tanh(x / 2)) / 2
            x = min(max(_HALF32 * x, -_C), _C)
            x2 = x * x
            p = (
                (((((_A13 * x2 + _A11) * x2 + _A9) * x2 + _A7) * x2 + _A5) * x2 + _A3) * x2 + _A1
            ) * x
            q = ((_B6 * x2 + _B4) * x2 + _B2) * x2 + _B0
            return _HALF32 * (p / q) + _HALF32

        return sigmoid32
    return lambda x: 1.0 / (1.0 + np.exp(-x))
