"""bench/floor.py, the per-record floor behind bench/README's pipeline_ratio argument, still runs."""

from __future__ import annotations

from bench import floor


def test_floor_times_every_piece_of_the_contracts_per_record_work() -> None:
    costs = floor.measure(records=2_000)
    assert set(costs) == {"decode_us", "log_id_us", "event_payloads_us", "bus_us", "store_us"}
    assert all(value > 0 for value in costs.values()), costs
