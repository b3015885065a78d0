"""How many threads a numba kernel call uses, and the thread count of the BLAS inside them.

The rule: a kernel's threads meet at a join, and a join costs about 1 us in numba's pool on a
quiet machine but up to a scheduler time slice (milliseconds) when another process holds a
core and one thread of the pool is waiting for it. So a call gets more than one thread only
when each thread's share of the work between two joins is at least MIN_WORK multiply-adds
(a few microseconds even at full GEMM speed, several times a quiet join), and never more threads
than it has independent pieces. With one thread the kernels run inline in the calling thread
and never enter numba's pool (no fork, no join). What lies between two joins:

* LSTM (hidden units split): one step, a (4H, H+I) x (H+I, B) GEMM, so
  work = 4H (H+I) B per step, pieces = H units. At I = H = 8, B = 1 that is 512 and the
  kernels run on one thread; at the d2l size (I = 28, H = 256, B = 32) 9.3M, two threads.
* GRU and RNN (batch split): the whole call, T steps of G x (H+I) x B (G = 3H or H), pieces =
  B // MIN_ROWS batch blocks (a GEMM of fewer rows runs poorly).
* weight gradients of GRU and RNN: T*B x G x K, pieces = T*B // MIN_WGRAD_ROWS.

The result depends only on the shape and numba's thread count (numba.set_num_threads,
NUMBA_NUM_THREADS), never on timing, and the kernels' results do not depend on it beyond
float rounding.
"""

from __future__ import annotations

import os

MIN_WORK = 1 << 17  # multiply-adds per thread between two joins
MIN_ROWS = 8  # batch rows per thread (GRU, RNN)
MIN_WGRAD_ROWS = 64  # T*B rows per thread for the GRU's and RNN's weight-gradient GEMMs


_thread_count = None  # numba's getter of the calling thread's count, once the pool is up


def numba_threads() -> int:
    """numba.get_num_threads() (thread-local, as set_num_threads leaves it). After the first
    call this reads the pool's C getter directly: numba's public function takes two locks per
    call to check that the pool is up, which costs more than the read inside a training step
    (docs/numba.md, "The per-call path")."""
    global _thread_count
    if _thread_count is None:
        import numba
        from numba.np.ufunc import parallel

        count = numba.get_num_threads()  # starts the pool
        getter = getattr(parallel, "_get_num_threads", None)
        _thread_count = getter if callable(getter) and getter() == count else numba.get_num_threads
        return count
    return _thread_count()


def threads_for(work: int, pieces: int) -> int:
    """Threads for `pieces` independent pieces with `work` multiply-adds between two joins:
    numba's thread count, capped so that each thread has a piece and MIN_WORK of the work."""
    return max(1, min(numba_threads(), pieces, work // MIN_WORK))


def lstm_threads(hidden: int, input_size: int, batch: int) -> int:
    """Threads sharing an LSTM's hidden units (one join per step)."""
    return threads_for(4 * hidden * (hidden + input_size) * batch, hidden)


def batch_threads(gate_rows: int, hidden: int, input_size: int, steps: int, batch: int) -> int:
    """Threads sharing a GRU's or RNN's batch (one join per kernel call)."""
    return threads_for(steps * batch * gate_rows * (hidden + input_size), batch // MIN_ROWS)


def wgrad_threads(gate_rows: int, k: int, rows: int) -> int:
    """Threads sharing the `rows` = T*B reduction of a (gate_rows, k) weight gradient."""
    return threads_for(rows * gate_rows * k, rows // MIN_WGRAD_ROWS)


# --- the BLAS behind numba's np.dot ------------------------------------------------------
def _openblas():
    """scipy's OpenBLAS (the BLAS numba's np.dot calls), or None if it cannot be found."""
    import ctypes
    import glob

    import scipy
    import scipy.linalg.cython_blas  # noqa: F401 - loads the library

    libs = os.path.join(os.path.dirname(os.path.dirname(scipy.__file__)), "scipy.libs")
    for path in sorted(glob.glob(os.path.join(libs, "*openblas*.so*"))):
        lib = ctypes.CDLL(path)
        for prefix in ("scipy_openblas_", "openblas_"):
            if hasattr(lib, prefix + "set_num_threads"):
                return lib, prefix
    return None


def set_blas_threads(n: int) -> bool:
    """Set the thread count of the BLAS behind numba's np.dot (scipy's OpenBLAS). False if the
    library was not found (another BLAS: use its own environment variable)."""
    found = _openblas()
    if found is None:
        return False
    lib, prefix = found
    getattr(lib, prefix + "set_num_threads")(int(n))
    return True


def blas_threads() -> int | None:
    """The thread count of scipy's OpenBLAS, or None if it was not found."""
    found = _openblas()
    if found is None:
        return None
    lib, prefix = found
    return int(getattr(lib, prefix + "get_num_threads")())


def default_blas_threads() -> None:
    """Called once at import: CELLS_NUMBA_BLAS_THREADS if set (0 = leave OpenBLAS alone), else
    1 thread, whatever OPENBLAS_NUM_THREADS says.

    Each of numba's threads makes its own BLAS calls, so a multi-threaded OpenBLAS would only
    oversubscribe the cores, and its thread start-up dominates the small per-step GEMMs and the
    batch-1 matrix-vector products (docs/numba.md)."""
    value = os.environ.get("CELLS_NUMBA_BLAS_THREADS", "").strip() or "1"
    try:
        n = int(value)
    except ValueError:
        raise ValueError(f"CELLS_NUMBA_BLAS_THREADS must be an integer, got {value!r}") from None
    if n > 0:
        try:
            set_blas_threads(n)
        except OSError:  # pragma: no cover - an unusual BLAS: leave it alone
            pass
