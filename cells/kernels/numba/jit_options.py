"""How every numba kernel is compiled (`serial`, `parallel`), and `block`, the split of a range
into thread blocks that every parallel kernel uses.

fast-math without nnan/ninf, so NaN and inf propagate as in torch.nn; `error_model="numpy"`
because numba's default division-by-zero check keeps a loop scalar (about 10x slower). Compiled
code is cached on disk (`cache=True`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from numba import njit
from numba.core.cpu import ParallelOptions

if TYPE_CHECKING:
    from numba.core.dispatcher import Dispatcher

F = TypeVar("F", bound=Callable[..., object])

FASTMATH = {"contract", "reassoc", "arcp", "nsz", "afn"}

# Kernels with a prange over thread blocks. Only the prange is parallel: with parallel=True
# numba would also turn every array expression, slice assignment and np.zeros into a loop
# over the whole thread pool, a fork/join each (two per batch-1 LSTM step, whatever the
# block count). Each kernel runs its blocks inline, outside the pool, when given one block
# (threads.py decides). One instance for all kernels: ParallelOptions empties a dict it is given.
_OFF = ("comprehension", "reduction", "inplace_binop", "setitem", "numpy", "stencil", "fusion")
PRANGE_ONLY = ParallelOptions({"prange": True, **dict.fromkeys(_OFF, False)})


def serial(fn: F) -> Dispatcher[F]:
    """Compile `fn` as a kernel that runs on the calling thread."""
    return njit(
        fn, cache=True, fastmath=FASTMATH, nogil=True, error_model="numpy", boundscheck=False
    )


def parallel(fn: F) -> Dispatcher[F]:
    """Compile `fn` as a kernel whose prange loops (and nothing else) run on numba's threads."""
    # numba takes a ParallelOptions for `parallel` (it does at run time); its stubs say bool only
    return njit(  # type: ignore[call-overload]
        fn,
        cache=True,
        fastmath=FASTMATH,
        nogil=True,
        error_model="numpy",
        boundscheck=False,
        parallel=PRANGE_ONLY,
    )


@serial
def block(n, k, nblocks):
    """Start of block k of n items split into nblocks near-equal blocks."""
    return (n * k) // nblocks
