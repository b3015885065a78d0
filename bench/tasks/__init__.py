"""The four textbook training workloads: charlm (d2l ch. 8-9), names (PyTorch tutorial),
anbn (Gers & Schmidhuber) and poems (Tang poetry). See docs/tasks.md.

TASKS is the one task list: `bench train`, `bench tasks` and the report iterate it."""

TASKS = ("charlm", "names", "anbn", "poems")
