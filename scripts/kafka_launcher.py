"""Apache Kafka 4.x from Maven Central, for tests, benchmarks and development; never for users.

The product itself only ever starts the embedded Tansu broker (``backend.broker.EmbeddedBroker``);
this module runs a real single-node Apache Kafka (KRaft, combined broker and controller) from the
jars on Maven Central. Tests check every guarantee against it, and it can be stopped, killed and
restarted on the same port and data, which fault-tolerance tests need. It lives outside the runtime
package because it needs Maven and Java, which users of the dashboard do not have.

The process lifecycle (spawned so that it dies with us, readiness, stop with a grace period) is the
one the embedded broker uses, imported from ``backend.broker``.

The same jars hold Apache Kafka's command-line tools: :func:`kafka_tool` builds the java command
line of one (``ConsoleProducer``, ``ConsumerGroupCommand``, ``GetOffsetShell``...), and
``python -m scripts.kafka_launcher TOOL ARGS...`` runs one by hand.
"""

from __future__ import annotations

import fcntl
import logging
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

from backend.broker import HOST, BrokerError, BrokerProcess, free_port, log_tail

log = logging.getLogger(__name__)

KAFKA_VERSION = "4.4.0"
# slf4j-api version that kafka_2.13 KAFKA_VERSION depends on; the binding must match it.
SLF4J_VERSION = "1.7.36"
DEPENDENCY_PLUGIN_VERSION = "3.8.1"
REPO_ROOT = Path(__file__).resolve().parent.parent
KAFKA_CACHE = REPO_ROOT / ".cache" / "kafka"
# The jars folder inside KAFKA_CACHE/<version>. Not "libs": launchers before the tools jar filled
# that one without it, and a complete folder is never refilled.
JARS_DIR = "jars"

# Main classes of the Kafka tools, as in the kafka-tools jar of Kafka 4.x (test_broker checks them).
CONSOLE_PRODUCER = "org.apache.kafka.tools.ConsoleProducer"
CONSOLE_CONSUMER = "org.apache.kafka.tools.consumer.ConsoleConsumer"
CONSUMER_GROUP_COMMAND = "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand"
GET_OFFSET_SHELL = "org.apache.kafka.tools.GetOffsetShell"
TOOLS = {
    name.rsplit(".", 1)[1]: name
    for name in (CONSOLE_PRODUCER, CONSOLE_CONSUMER, CONSUMER_GROUP_COMMAND, GET_OFFSET_SHELL)
}

_POM = """\
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.dashboard</groupId>
  <artifactId>kafka-runtime</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId>
      <version>{kafka}</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka-tools</artifactId>
      <version>{kafka}</version></dependency>
    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-api</artifactId>
      <version>{slf4j}</version></dependency>
    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-simple</artifactId>
      <version>{slf4j}</version></dependency>
  </dependencies>
  <build><plugins><plugin>
    <groupId>org.apache.maven.plugins</groupId><artifactId>maven-dependency-plugin</artifactId>
    <version>{plugin}</version>
  </plugin></plugins></build>
</project>
"""


def kafka_libs(version: str = KAFKA_VERSION, cache: Path = KAFKA_CACHE, timeout: float = 900.0) -> Path:
    """The folder of Kafka jars (broker and tools) for ``version``, downloaded with Maven on first use.

    A lock file serialises concurrent first uses, and the jars land in a temporary folder that is
    renamed into place only when complete, so a half-finished download is never used.
    """
    home = cache / version
    libs = home / JARS_DIR
    if libs.is_dir():
        return libs
    home.mkdir(parents=True, exist_ok=True)
    with open(home / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not libs.is_dir():
            _download_kafka(version, home, libs, timeout)
    return libs


def _download_kafka(version: str, home: Path, libs: Path, timeout: float) -> None:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerError("Apache Kafka needs Maven (mvn) on PATH to fetch its jars")
    (home / "pom.xml").write_text(
        _POM.format(kafka=version, slf4j=SLF4J_VERSION, plugin=DEPENDENCY_PLUGIN_VERSION)
    )
    staging = Path(tempfile.mkdtemp(prefix=f"{JARS_DIR}-", dir=home))
    cmd = [
        mvn,
        "-B",
        "-q",
        "-f",
        str(home / "pom.xml"),
        "dependency:copy-dependencies",
        f"-DoutputDirectory={staging}",
        "-DincludeScope=runtime",
    ]
    log.info("fetching Apache Kafka %s jars into %s", version, libs)
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise BrokerError(f"mvn did not fetch Apache Kafka {version} within {timeout:.0f}s") from exc
    complete = all((staging / f"{jar}-{version}.jar").is_file() for jar in ("kafka_2.13", "kafka-tools"))
    if result.returncode != 0 or not complete:
        shutil.rmtree(staging, ignore_errors=True)
        lines = (result.stdout + result.stderr).strip().splitlines()
        errors = [line for line in lines if "ERROR" in line] or lines[-1:]
        raise BrokerError(f"mvn could not fetch Apache Kafka {version}: {errors[0] if errors else '?'}")
    staging.rename(libs)


def java_command(libs: Path, main_class: str, *args: str, heap: str, log_level: str) -> list[str]:
    """The command line running ``main_class`` of the jars in ``libs`` with slf4j-simple logging."""
    java = shutil.which("java")
    if java is None:
        raise BrokerError("Apache Kafka needs Java 17+ (java) on PATH")
    return [
        java,
        f"-Xmx{heap}",
        "-Xms64m",
        "-XX:+UseG1GC",
        "-Djava.awt.headless=true",
        f"-Dorg.slf4j.simpleLogger.defaultLogLevel={log_level}",
        "-Dorg.slf4j.simpleLogger.showDateTime=true",
        "-Dorg.slf4j.simpleLogger.dateTimeFormat=yyyy-MM-dd'T'HH:mm:ss.SSS",
        "-cp",
        f"{libs}/*",
        main_class,
        *args,
    ]


def kafka_tool(main_class: str, *args: str, version: str = KAFKA_VERSION, **options: str) -> list[str]:
    """The java command line running one of Kafka's command-line tools from the cached jars.

    ``options`` become ``--name=value`` (``bootstrap_server=...`` -> ``--bootstrap-server=...``):
    a value passed as a separate argument that begins with "-" (a topic may be called "-x") would
    be read as an option. ``args`` (flags such as ``--list``) are passed as they are, first.
    Fetches the jars on first use; log lines below WARN are dropped, as Kafka's own scripts do.
    """
    flags = [f"--{name.replace('_', '-')}={value}" for name, value in options.items()]
    return java_command(kafka_libs(version), main_class, *args, *flags, heap="256m", log_level="warn")


class ApacheKafka(BrokerProcess):
    """Single-node Apache Kafka 4.x in KRaft mode (broker and controller in one JVM).

    The listener and controller ports and the log directory are chosen at the first start and kept,
    so ``stop(); start()`` (or ``kill(); start()``) brings the same cluster back with its data.
    """

    name = "Apache Kafka"
    log_name = "kafka.log"
    stop_grace = 30.0

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        version: str = KAFKA_VERSION,
        heap: str = "512m",
        extra_config: dict[str, str] | None = None,
        cluster_id: str | None = None,
    ) -> None:
        # Absolute: the JVM runs in data_dir, and its paths (config, log.dirs) must not depend on
        # our working directory; nor can an absolute path begin with "-" on a command line.
        super().__init__(Path(data_dir).resolve(), port)
        self.version = version
        # Used only when the log dir is formatted (the first start); None draws a random one.
        self._format_cluster_id = cluster_id
        self.heap = heap
        self.extra_config = dict(extra_config or {})
        self.controller_port: int | None = None
        self.cluster_id = ""
        self._libs: Path | None = None

    def start(self, timeout: float = 120.0) -> str:
        """Fetch the jars if needed (not counted in ``timeout``), format once, launch, wait."""
        self._libs = kafka_libs(self.version)
        return super().start(timeout)

    @property
    def config_path(self) -> Path:
        return self.data_dir / "server.properties"

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "kraft-logs"

    def _prepare(self) -> None:
        if self.port is None:
            self.port = free_port()
        if self.controller_port is None:
            self.controller_port = free_port()
        self.config_path.write_text(self._properties())
        if not (self.log_dir / "meta.properties").exists():
            self._format()
        self.cluster_id = self._read_cluster_id()

    def _properties(self) -> str:
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@{HOST}:{self.controller_port}",
            "listeners": f"PLAINTEXT://{HOST}:{self.port},CONTROLLER://{HOST}:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{HOST}:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.log_dir),
            "num.partitions": "3",
            "auto.create.topics.enable": "true",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "3",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "group.min.session.timeout.ms": "1000",
            **self.extra_config,
        }
        return "".join(f"{key}={value}\n" for key, value in props.items())

    def _java(self, main: str, *args: str) -> list[str]:
        assert self._libs is not None, "start() fetches the jars first"
        return java_command(self._libs, main, *args, heap=self.heap, log_level="info")

    def _format(self) -> None:
        """Write the KRaft metadata (meta.properties, bootstrap checkpoint) into the log dir once."""
        cluster_id = self._format_cluster_id or kafka_cluster_id()
        # "--name=value" on purpose: an id may begin with "-", and as a separate argument
        # StorageTool's parser would read it as an option ("expected one argument").
        cmd = self._java(
            "kafka.tools.StorageTool",
            "format",
            f"--cluster-id={cluster_id}",
            f"--config={self.config_path}",
        )
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        with open(self.log_path, "a") as out:
            out.write(result.stdout + result.stderr)
        if result.returncode != 0:
            raise BrokerError(f"Apache Kafka storage format failed: {log_tail(self.log_path)}")

    def _read_cluster_id(self) -> str:
        for line in (self.log_dir / "meta.properties").read_text().splitlines():
            if line.startswith("cluster.id="):
                return line.split("=", 1)[1].strip()
        return ""

    def _command(self) -> list[str]:
        return self._java("kafka.Kafka", str(self.config_path))


def kafka_cluster_id() -> str:
    """A random KRaft cluster id: 16 random bytes, URL-safe base64 without padding.

    One id in 64 would begin with "-"; like Apache Kafka's own ``Uuid.randomUuid()``, draw again
    then, so the id is never mistaken for an option by whatever command line it lands on.
    """
    import base64

    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def main(argv: list[str]) -> int:
    """``python -m scripts.kafka_launcher TOOL [ARGS...]``: run a Kafka tool from the cached jars."""
    if not argv or argv[0] not in TOOLS:
        print(f"usage: python -m scripts.kafka_launcher {{{','.join(TOOLS)}}} [ARGS...]", file=sys.stderr)
        return 2
    try:
        command = kafka_tool(TOOLS[argv[0]], *argv[1:])
    except BrokerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return subprocess.call(command)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
