"""Backend `numba`: forward and backward of every kind as numba kernels, on the CPU.

Each layer and direction is one `torch.autograd.Function` (autograd_layer.py) whose forward and
backward each call @njit kernels on zero-copy numpy views of the torch tensors; without a
gradient to compute the kernels run directly and nothing is saved. Generation (no grad, one
layer, one direction, T == 1, B == 1) takes a fast path that skips the shared Python stacking
code (backend.py). float32 and float64 only; compiled code is cached on disk (`cache=True`),
and `warm_up()` compiles or loads everything up front.

What is split over numba's threads (numba.set_num_threads, NUMBA_NUM_THREADS):

* LSTM (lstm_kernels.py): the hidden units. Thread k owns units a:b and their 4 (b - a) gate
  rows of the packed weights, so its share of the weights stays in its core's cache; the
  threads join once per time step (each needs all of h_{t-1}). The batch-1 step splits the
  same way, and the weight gradients split the 4H gate rows.
* GRU and RNN (gru_rnn_kernels.py): the batch. Each thread runs every step for its block of
  rows, with one join per kernel call; their weight gradients split the T*B-row reduction.
  Their batch-1 steps run on the calling thread.
* How many threads (threads.py): one unless each thread's share of the work between two
  joins is at least threads.MIN_WORK multiply-adds, so small shapes (such as batch-1
  generation at small hidden sizes) run inline and never enter the thread pool.

scipy's OpenBLAS, which numba's np.dot calls, is set to 1 thread at import (threads.py).

Files: backend.py (NumbaLoop, the step path, warm_up), autograd_layer.py (numpy drivers and the
autograd Function), lstm_kernels.py and gru_rnn_kernels.py, gemm.py (GEMM helpers),
jit_options.py (how kernels are compiled; thread blocks), activations.py (the inlined sigmoid
and tanh), threads.py (thread counts, BLAS threads), workspace.py (reused scratch memory).
"""

from .backend import NumbaLoop, warm_up
from .threads import blas_threads, set_blas_threads
from .workspace import WORKSPACE, release_workspace

__all__ = [
    "NumbaLoop",
    "warm_up",
    "blas_threads",
    "set_blas_threads",
    "WORKSPACE",
    "release_workspace",
]
