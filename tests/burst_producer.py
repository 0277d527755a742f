"""A burst of records from a process of its own, as another application sends them.

``python -m tests.burst_producer BOOTSTRAP TOPIC COUNT``: COUNT small JSON records as fast as Kafka
takes them. The browser test times JavaScript round trips from the pytest process while the burst
is processed; a producer thread in that process would make those round trips wait for its GIL.
"""

from __future__ import annotations

import json
import sys

from kafka import KafkaProducer


def produce_burst(bootstrap: str, topic: str, count: int) -> None:
    client = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, batch_size=256 * 1024)
    try:
        for number in range(count):
            client.send(topic, json.dumps({"n": number, "amount": number % 100}).encode())
        client.flush()
    finally:
        client.close()


if __name__ == "__main__":
    produce_burst(sys.argv[1], sys.argv[2], int(sys.argv[3]))
