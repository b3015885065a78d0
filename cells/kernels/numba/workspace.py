"""Scratch memory of the numba kernels, reused across calls of the same shape."""

from __future__ import annotations

import threading

import numpy as np


class Workspace:
    """Scratch arrays kept for the next call of the same shape.

    A fresh multi-megabyte numpy array comes from mmap, and its first touch costs a page fault
    per 4 KB: about 2000 faults, 4-5 ms, in each d2l-size LSTM training step (measured with
    getrusage), a third of the step. Arrays that do not leave the backend (the packed weights,
    the saved gates and cells, the backward's scratch) are taken from here and given back when
    done; the saved ones when the autograd graph that holds them is freed (`Lease`), so a
    retained graph never sees its buffers reused. At most `keep` free arrays per shape and
    dtype are kept; `release_workspace()` frees them all."""

    def __init__(self, keep: int = 2) -> None:
        self.keep = keep
        self._free: dict[tuple, list[np.ndarray]] = {}
        self._lock = threading.Lock()

    def take(self, shape: tuple, dtype) -> np.ndarray:
        key = (tuple(shape), np.dtype(dtype).str)
        with self._lock:
            free = self._free.get(key)
            if free:
                return free.pop()
        return np.empty(shape, dtype)

    def give(self, *arrays: np.ndarray) -> None:
        with self._lock:
            for a in arrays:
                free = self._free.setdefault((a.shape, a.dtype.str), [])
                if len(free) < self.keep:
                    free.append(a)

    def clear(self) -> None:
        with self._lock:
            self._free.clear()

    def nbytes(self) -> int:
        with self._lock:
            return sum(a.nbytes for free in self._free.values() for a in free)


WORKSPACE = Workspace()


def release_workspace() -> None:
    """Free the scratch arrays the numba backend keeps for reuse."""
    WORKSPACE.clear()


class Lease:
    """Holds workspace arrays for a saved autograd context; gives them back when it dies."""

    __slots__ = ("arrays",)

    def __init__(self, *arrays: np.ndarray) -> None:
        self.arrays = arrays

    def __del__(self) -> None:
        WORKSPACE.give(*self.arrays)
