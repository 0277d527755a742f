"""Sending failed records again: what the Failed messages page's retry buttons do.

A retry produces a new record through the source (the backend in this
process, or the producer API of the one attached to): the stored decoded
payload, encoded again (:func:`dashboard.producing.retry_payload`), to the
same topic with the same key. The failed record stays in the store.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from backend.analytics import ErrorGroup
from dashboard.producing import retry_payload
from dashboard.source import Source

#: (attempted so far, sent so far, total): called after each record that was sent.
Progress = Callable[[int, int, int], None]


@dataclass
class RetryReport:
    """What a retry did: how many were sent, why others were not, and where the sent ones went."""

    sent: int = 0
    problems: list[str] = field(default_factory=list)
    resent: list[dict[str, Any]] = field(default_factory=list)


def retriable_records(source: Source, group: ErrorGroup, limit: int) -> list[dict[str, Any]]:
    """The newest ``limit`` retriable records of a group ("Retry all")."""
    found = source.failed_records(group, limit * 4)
    return [record for record in found if record["retriable"]][:limit]


def resend(source: Source, records: list[dict[str, Any]], progress: Progress | None = None) -> RetryReport:
    """Produce each record again (records as :meth:`Source.failed_records` lists them)."""
    report = RetryReport()
    for number, item in enumerate(records, start=1):
        row = source.log(item["log_id"])
        encoded = retry_payload(row) if row else None
        if row is None or encoded is None:
            report.problems.append(f"{item['log_id']}: no stored payload")
            continue
        value, data_type = encoded
        try:
            key = row.record_key.encode() if row.record_key else None
            produced = source.produce(row.topic, value, data_type, key)
        except Exception as exc:
            report.problems.append(f"{item['log_id']}: {exc}")
            continue
        report.sent += 1
        report.resent.append(
            {
                "failed record": f"{row.topic}/{row.partition}@{row.offset}",
                "sent as": f"{produced.topic}/{produced.partition}@{produced.offset}",
                "type": data_type,
                "error was": row.error,
            }
        )
        if progress is not None:
            progress(number, report.sent, len(records))
    return report
