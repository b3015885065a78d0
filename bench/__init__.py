"""bench: measure every backend of every cell kind side by side, and report it.

Data flows one way: cell spec -> backend module -> workload -> measurement -> record (JSON
lines) -> report. See `python -m bench --help`.
"""

__version__ = "0.1.0"
