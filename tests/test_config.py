"""Settings: defaults, parsing, and one clear line for every bad value."""

from __future__ import annotations

import pytest

from backend.config import ConfigError, Settings, is_valid_topic


def test_defaults_follow_the_contract() -> None:
    settings = Settings.from_env({})
    assert settings.embedded and settings.bootstrap_servers is None
    assert (settings.gateway_host, settings.gateway_port, settings.producer_port) == ("127.0.0.1", 3001, 3000)
    assert (settings.group_id, settings.consumer_count) == ("consumer-dashboard", 3)
    assert settings.topic_matches("orders") and settings.topic_matches("a.b-c_d")
    assert not settings.topic_matches("__consumer_offsets")
    assert not settings.topic_matches("_schemas")
    assert not settings.topic_matches("orders.DLQ")


def test_isolation_level_reaches_the_consumers() -> None:
    from backend.consumers import consumer_options

    assert consumer_options(Settings.from_env({}))["isolation_level"] == "read_committed"
    chosen = Settings.from_env({"KAFKA_ISOLATION_LEVEL": " READ_UNCOMMITTED "})
    assert consumer_options(chosen)["isolation_level"] == "read_uncommitted"


def test_idle_fetches_wait_at_the_broker_only_where_records_still_come_at_once() -> None:
    """Apache Kafka answers a waiting fetch when a record arrives: a long wait only makes idle
    consumers ask less often. Tansu (embedded, also when a child attaches to it) holds every fetch
    for the whole wait, so there the wait stays short."""
    from backend.consumers import consumer_options

    kafka = Settings.from_env({"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:4000"})
    assert consumer_options(kafka)["fetch_max_wait_ms"] == kafka.fetch_max_wait_ms == 500
    for embedded in (
        Settings.from_env({}),
        Settings.from_env({"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:4000", "EMBEDDED_BROKER": "1"}),
    ):
        assert consumer_options(embedded)["fetch_max_wait_ms"] == embedded.fetch_max_wait_ms == 20


def test_topics_as_list_or_regex() -> None:
    listed = Settings.from_env({"KAFKA_TOPICS": "orders, payments"})
    assert listed.topics == ("orders", "payments") and not listed.topic_matches("other")
    pattern = Settings.from_env({"KAFKA_TOPICS": "re:^sales-.*"})
    assert pattern.topic_matches("sales-eu") and not pattern.topic_matches("orders")


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"CONSUMER_COUNT": "three"}, "CONSUMER_COUNT"),
        ({"CONSUMER_COUNT": "-1"}, "CONSUMER_COUNT"),
        ({"GATEWAY_PORT": "70000"}, "GATEWAY_PORT"),
        ({"PRODUCER_PORT": "x"}, "PRODUCER_PORT"),
        ({"KAFKA_SECURITY_PROTOCOL": "CARRIER_PIGEON"}, "KAFKA_SECURITY_PROTOCOL"),
        ({"KAFKA_SASL_MECHANISM": "MAGIC"}, "KAFKA_SASL_MECHANISM"),
        ({"KAFKA_BOOTSTRAP_SERVERS": "localhost"}, "KAFKA_BOOTSTRAP_SERVERS"),
        ({"KAFKA_TOPICS": "re:(unclosed"}, "KAFKA_TOPICS"),
        ({"KAFKA_TOPICS": "bad topic!"}, "KAFKA_TOPICS"),
        ({"KAFKA_SSL_CAFILE": "/no/such/file.pem"}, "KAFKA_SSL_CAFILE"),
        ({"BACKEND_URL": "ftp://x"}, "BACKEND_URL"),
        ({"PROCESSOR": "not a spec"}, "PROCESSOR"),
        ({"DESERIALIZER": "examples.avro_deserializer"}, "DESERIALIZER"),
        ({"KAFKA_ISOLATION_LEVEL": "read_everything"}, "KAFKA_ISOLATION_LEVEL"),
        ({"HTTP_HEADER_TIMEOUT": "soon"}, "HTTP_HEADER_TIMEOUT"),
        ({"HTTP_BODY_TIMEOUT": "0"}, "HTTP_BODY_TIMEOUT"),
        ({"HTTP_KEEP_ALIVE_TIMEOUT": "nan"}, "HTTP_KEEP_ALIVE_TIMEOUT"),
        ({"MAX_CONNECTIONS": "0"}, "MAX_CONNECTIONS"),
        ({"MAX_CREATED_TOPICS": "-1"}, "MAX_CREATED_TOPICS"),
        ({"MAX_CONSUMERS": "0"}, "MAX_CONSUMERS"),
        ({"BACKEND_ROLE": "dashboard"}, "BACKEND_ROLE"),
        ({"BACKEND_ROLE": "all,worker"}, "BACKEND_ROLE"),
        ({"WORKERS": "0"}, "WORKERS"),
        ({"WORKERS": "65"}, "WORKERS"),
        ({"WORKERS": "two"}, "WORKERS"),
        ({"WORKERS": "1.5"}, "WORKERS"),
        ({"EVENTS_TOPIC": "bad topic!"}, "EVENTS_TOPIC"),
        ({"EVENTS_TOPIC": ".."}, "EVENTS_TOPIC"),
        ({"EVENTS_TOPIC": "e" * 241}, "EVENTS_TOPIC"),  # no room left for ".control"
        ({"EVENTS_TOPIC": "e" * 250}, "EVENTS_TOPIC"),
        ({"EVENTS_TOPIC": "événements"}, "EVENTS_TOPIC"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)
    message = str(caught.value)
    assert message.startswith(variable) and "\n" not in message


def test_roles_and_workers() -> None:
    default = Settings.from_env({})
    assert (default.role, default.runs_view, default.runs_workers) == ("all", True, True)
    worker = Settings.from_env(
        {"BACKEND_ROLE": " Worker ", "KAFKA_BOOTSTRAP_SERVERS": "k:9092", "WORKERS": "5"}
    )
    assert (worker.role, worker.runs_view, worker.runs_workers, worker.worker_count) == (
        "worker",
        False,
        True,
        5,
    )
    view = Settings.from_env({"BACKEND_ROLE": "view", "KAFKA_BOOTSTRAP_SERVERS": "k:9092"})
    assert (view.runs_view, view.runs_workers) == (True, False)
    cores = Settings.from_env({"KAFKA_BOOTSTRAP_SERVERS": "k:9092", "CONSUMER_COUNT": "64"})
    assert cores.workers is None and 1 <= cores.worker_count <= 64  # the CPU cores by default
    assert Settings.from_env({"KAFKA_BOOTSTRAP_SERVERS": "k:9092", "CONSUMER_COUNT": "1"}).worker_count == 1
    assert Settings.from_env({"KAFKA_BOOTSTRAP_SERVERS": "k:9092", "CONSUMER_COUNT": "0"}).worker_count == 1


def test_the_embedded_broker_has_one_worker_and_children_know_it_is_embedded() -> None:
    own = Settings.from_env({"WORKERS": "4"})
    assert (own.embedded, own.starts_broker, own.worker_count) == (True, True, 1)
    child = Settings.from_env(
        {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:4000", "EMBEDDED_BROKER": "1", "WORKERS": "4"}
    )
    assert (child.embedded, child.starts_broker, child.worker_count) == (True, False, 1)
    other = Settings.from_env({"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:4000", "EMBEDDED_BROKER": "0"})
    assert (other.embedded, other.starts_broker) == (False, False)


def test_the_events_topics_are_never_sources() -> None:
    default = Settings.from_env({"KAFKA_GROUP_ID": "team", "KAFKA_TOPICS": "re:.*"})
    assert (default.events_topic, default.control_topic) == ("_team.events", "_team.events.control")
    named = Settings.from_env({"EVENTS_TOPIC": "dashboard-events", "KAFKA_TOPICS": "re:.*"})
    assert (named.events_topic, named.control_topic) == ("dashboard-events", "dashboard-events.control")
    assert named.topic_matches("orders")
    assert not named.topic_matches("dashboard-events") and not named.topic_matches("dashboard-events.control")
    listed = Settings.from_env({"EVENTS_TOPIC": "ev", "KAFKA_TOPICS": "orders,ev,ev.control"})
    assert listed.topic_matches("orders") and not listed.topic_matches("ev")
    assert not listed.topic_matches("ev.control")
    longest = Settings.from_env({"EVENTS_TOPIC": "e" * 240})
    assert len(longest.control_topic) == 248  # still a valid topic name


def test_security_options_reach_the_kafka_clients() -> None:
    settings = Settings.from_env(
        {
            "KAFKA_SECURITY_PROTOCOL": "sasl_ssl",
            "KAFKA_SASL_MECHANISM": "PLAIN",
            "KAFKA_SASL_USERNAME": "u",
            "KAFKA_SASL_PASSWORD": "p",
        }
    )
    assert settings.kafka_client_options() == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "PLAIN",
        "sasl_plain_username": "u",
        "sasl_plain_password": "p",
    }


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        ("test", True),
        ("a.b_c-1", True),
        ("..", False),
        ("", False),
        ("x" * 250, False),
        ("white space", False),
        ("<script>", False),
    ],
)
def test_topic_names(name: str, valid: bool) -> None:
    assert is_valid_topic(name) is valid


def test_connection_and_cap_settings() -> None:
    defaults = Settings.from_env({})
    assert (defaults.http_header_timeout, defaults.http_body_timeout, defaults.http_keep_alive_timeout) == (
        10.0,
        30.0,
        5.0,
    )
    assert defaults.max_connections is None  # derived from the open-file limit at start
    assert (defaults.max_created_topics, defaults.max_consumers) == (100, 32)
    tuned = Settings.from_env(
        {
            "HTTP_HEADER_TIMEOUT": "1.5",
            "HTTP_BODY_TIMEOUT": "2",
            "HTTP_KEEP_ALIVE_TIMEOUT": "0.5",
            "MAX_CONNECTIONS": "500",
            "MAX_CREATED_TOPICS": "0",
            "MAX_CONSUMERS": "4",
        }
    )
    assert (tuned.http_header_timeout, tuned.http_body_timeout, tuned.http_keep_alive_timeout) == (
        1.5,
        2,
        0.5,
    )
    assert (tuned.max_connections, tuned.max_created_topics, tuned.max_consumers) == (500, 0, 4)


def test_a_plugin_that_cannot_be_loaded_stops_start_up_before_anything_runs(tmp_path) -> None:
    from backend.service import Backend

    settings = Settings(data_dir=tmp_path / "data", deserializer="no_such_module:decode")
    with pytest.raises(ConfigError, match=r"^DESERIALIZER='no_such_module:decode' cannot be loaded: "):
        Backend(settings).start(serve_http=False)
    assert not (tmp_path / "data").exists()  # no store, no broker
