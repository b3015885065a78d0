"""Candidate kernels for `bench validate`: correct independent implementations and planted bugs.

Every candidate is a standalone torch.nn.Module that uses only torch (no import of `cells`), so
the tests show that the validator works on kernels it has never seen.

* stepwise.py: correct per-step implementations (StepRNN, StepGRU, StepLSTM, a factory
  `make_gru`, and NoBidirLSTM, which refuses bidirectional=True at construction).
* bugs.py: one planted bug per class (see its docstring for the list).
* slowcopy.py: a copy of torch.nn registered as backend "copy" (CELLBENCH_TEST_SLEEP_S seconds
  of sleep per forward) for the speed-gate tests.
"""
