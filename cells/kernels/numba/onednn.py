"""oneDNN's small-GEMM kernel (brgemm) from the torch build, for the LSTM's per-step products.

torch ships oneDNN and exports `at::native::cpublas::brgemm` for float32: C (M, N) = A (M, K)
@ B (K, N), row-major with leading dimensions, C overwritten or accumulated. On a CPU with
AVX2 or better it runs oneDNN's JIT brgemm ukernel (the kernel family behind torch.nn.LSTM's
own oneDNN path), generated once per shape and thread and cached thread-locally by torch, so
numba's threads can call it concurrently; elsewhere torch falls back to its BLAS. numba calls
it through a ctypes function pointer passed to the kernels as an argument (a pointer baked into
the compiled code would break numba's on-disk cache across processes).

Measured per thread on the development machine (AMD EPYC, AVX-512): the forward's step GEMM
(512 x 284) @ (284 x 32) at 231 GFLOP/s against OpenBLAS's 166, the backward's
(128 x 1024) @ (1024 x 32) at 191 against 155; at batch 8 OpenBLAS (forward) and the
register-blocked gemm.dot_nt (backward) win (docs/numba.md, "Where the time goes").

The symbol is C++-mangled and internal to torch, so it is looked up by its exact signature
(int64 M, N, K, lda, ldb, ldc, bool add_C, const float* A, const float* B, float* C,
bool is_vnni); when it is absent (another torch version) or fails a probe product, BRGEMM is a
stand-in with the same signature that the kernels never call (`AVAILABLE` is False) and
OpenBLAS does the products. CELLS_NUMBA_BRGEMM=0 turns it off.
"""

from __future__ import annotations

import ctypes
import os

import numpy as np

SYMBOL = "_ZN2at6native7cpublas6brgemmEllllllbPKfS3_Pfb"
_ARGTYPES = [ctypes.c_int64] * 6 + [ctypes.c_bool] + [ctypes.c_void_p] * 3 + [ctypes.c_bool]
_PROTOTYPE = ctypes.CFUNCTYPE(None, *_ARGTYPES)


def _never_called(*args) -> None:  # pragma: no cover - the kernels check AVAILABLE first
    raise RuntimeError("oneDNN brgemm is unavailable")


def _probe(fn) -> bool:
    """One small product against numpy's: a wrong signature or layout fails here, not later."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((8, 5)).astype(np.float32)
    b = rng.standard_normal((5, 3)).astype(np.float32)
    c = np.full((8, 3), np.nan, np.float32)
    fn(8, 3, 5, 5, 3, 3, False, a.ctypes.data, b.ctypes.data, c.ctypes.data, False)
    return bool(np.allclose(c, a @ b, rtol=1e-5, atol=1e-5))


def _find():
    """(function, why-not): the exported brgemm of the torch build, or None and the reason."""
    if os.environ.get("CELLS_NUMBA_BRGEMM", "1").strip() == "0":
        return None, "turned off by CELLS_NUMBA_BRGEMM=0"
    import torch

    path = os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so")
    try:
        fn = ctypes.CDLL(path)[SYMBOL]
    except (OSError, AttributeError) as exc:
        return None, f"torch's library does not export it ({exc})"
    fn.restype = None
    fn.argtypes = _ARGTYPES
    if not _probe(fn):
        return None, "a probe product disagreed with numpy"
    return fn, None


_FOUND, UNAVAILABLE_REASON = _find()
AVAILABLE = _FOUND is not None
BRGEMM = _FOUND if _FOUND is not None else _PROTOTYPE(_never_called)
