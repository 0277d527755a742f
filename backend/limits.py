"""The error for an operation refused because a configured cap is reached.

Its own module so that the HTTP apps (which answer it with 429) and the dashboard can name it
without importing the composition root.
"""

from __future__ import annotations


class LimitReached(Exception):
    """A cap (MAX_CREATED_TOPICS, MAX_CONSUMERS) forbids the operation; the message says which."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class CommandTimeout(RuntimeError):
    """No worker answered a start/stop command in time (REST: 504). The command may still be applied."""
