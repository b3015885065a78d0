"""Exceptions shared by backends."""

from __future__ import annotations


class Unsupported(NotImplementedError):
    """A backend cannot do what was asked (a mode, a dtype, a device): a limit, not a bug.

    The bench sweep records it as "unsupported" rather than "failed".
    """
