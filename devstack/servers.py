"""The real servers of the local stack, installed and run without Docker.

Each server is described once (how to install it, how to start it, how to
tell that it answers) and run as a detached process whose pid, log and data
live under one git-ignored folder (``.stack/`` by default).  ``up`` starts
only what does not already answer, and can record what it started so that a
caller (``make test``) stops exactly that afterwards.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEVSTACK = ROOT / "devstack"
STACK_DIR = Path(os.environ.get("DEVSTACK_DIR", ROOT / ".stack"))
HOST = "127.0.0.1"

REDIS_PORT = int(os.environ.get("DEVSTACK_REDIS_PORT", "6379"))
KAFKA_PORT = int(os.environ.get("DEVSTACK_KAFKA_PORT", "9092"))
KAFKA_CONTROLLER_PORT = int(os.environ.get("DEVSTACK_KAFKA_CONTROLLER_PORT", "9093"))
MONGO_PORT = int(os.environ.get("DEVSTACK_MONGO_PORT", "27017"))

#: DEVSTACK_SECURE=1: Kafka authenticates clients (SASL/SCRAM) and authorizes
#: them (ACLs), Redis asks for a password.  Switching needs fresh data
#: (`make clean`): SCRAM users are created when Kafka's log dir is formatted.
SECURE = os.environ.get("DEVSTACK_SECURE", "") == "1"
KAFKA_SCRAM_MECHANISM = "SCRAM-SHA-512"
KAFKA_ADMIN = "admin"
#: Principals of the secure stack and their development passwords (public,
#: like .env.example's secrets; production refuses them).
KAFKA_USERS = {
    KAFKA_ADMIN: "dev-kafka-admin-password",
    "payments": "dev-kafka-payments-password",
    "orders": "dev-kafka-orders-password",
}
KAFKA_SERVICE, KAFKA_ORDER_SERVICE = "payments", "orders"
REDIS_PASSWORD = "dev-redis-password"

# Debian packages the stack and its tests need (kcat is the Kafka client that
# is not ours, used to produce refund events the way the order service does;
# nginx is the API's buffering proxy; chromium renders the docs page in
# tests/web/test_docs_page.py), by the binary each provides.
APT_PACKAGES = {"redis-server": "redis-server", "kcat": "kcat", "nginx": "nginx", "chromium": "chromium"}
# Debian puts daemons in /usr/sbin, which an unprivileged user's PATH may lack.
SBIN_PATH = f"{os.environ.get('PATH', '')}:/usr/local/sbin:/usr/sbin:/sbin"


class StackError(RuntimeError):
    """A server could not be installed or did not come up."""


def log(message: str) -> None:
    print(f"[devstack] {message}", file=sys.stderr, flush=True)


def port_open(port: int, host: str = HOST, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------------
# installation
# --------------------------------------------------------------------------


def install_apt_packages() -> None:
    """Install the Debian packages that are missing (the machine runs as root)."""
    missing = [pkg for binary, pkg in APT_PACKAGES.items() if shutil.which(binary, path=SBIN_PATH) is None]
    if not missing:
        return
    log(f"installing Debian packages: {' '.join(missing)}")
    apt_env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=apt_env)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
        check=True,
        env=apt_env,
    )
    # Debian starts its own redis-server service on install; ours runs on its
    # own data folder, so stop the packaged one if it grabbed the port.
    subprocess.run(["service", "redis-server", "stop"], check=False, capture_output=True)


def java_lib_dir() -> Path:
    return STACK_DIR / "lib"


def install_java_servers() -> None:
    """Resolve Kafka and mongo-java-server from Maven Central into .stack/lib."""
    pom = DEVSTACK / "java" / "pom.xml"
    stamp = java_lib_dir() / ".pom-sha256"
    digest = hashlib.sha256(pom.read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text() == digest:
        return
    log("resolving Kafka and mongo-java-server from Maven Central")
    if java_lib_dir().exists():
        shutil.rmtree(java_lib_dir())
    subprocess.run(
        [
            "mvn",
            "-q",
            "-B",
            "-f",
            str(pom),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={java_lib_dir()}",
            "-DincludeScope=runtime",
        ],
        check=True,
    )
    stamp.write_text(digest)


def install() -> None:
    STACK_DIR.mkdir(parents=True, exist_ok=True)
    install_apt_packages()
    install_java_servers()


# --------------------------------------------------------------------------
# servers
# --------------------------------------------------------------------------


@dataclass
class Server:
    """One server of the stack: how to prepare, start and probe it."""

    name: str
    port: int
    command: Callable[[], list[str]]
    ready: Callable[[], bool]
    prepare: Callable[[], object] = lambda: None
    start_timeout: float = 90.0
    env: dict[str, str] = field(default_factory=dict)

    @property
    def pid_file(self) -> Path:
        return STACK_DIR / "run" / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return STACK_DIR / "logs" / f"{self.name}.log"

    def pid(self) -> int | None:
        """The server's pid, if it runs; a stale pid file naming another program is ignored."""
        try:
            pid = int(self.pid_file.read_text())
        except (OSError, ValueError):
            return None
        if not _alive(pid):
            return None
        try:
            program = Path(self.command()[0]).name.encode()
            if program not in Path(f"/proc/{pid}/cmdline").read_bytes():
                return None  # the pid was reused by something that is not ours
        except OSError:
            return None
        return pid

    def start(self) -> None:
        self.prepare()
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as out:
            proc = subprocess.Popen(
                self.command(),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=ROOT,
                env={**os.environ, **self.env},
                start_new_session=True,  # outlives the caller; Ctrl-C is ours to handle
            )
        self.pid_file.write_text(str(proc.pid))
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise StackError(f"{self.name} exited with {proc.returncode}; see {self.log_file}")
            if self.ready():
                return
            time.sleep(0.3)
        raise StackError(f"{self.name} did not answer within {self.start_timeout}s; see {self.log_file}")

    def stop(self, timeout: float = 30.0) -> bool:
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not _alive(pid):
                break
            time.sleep(0.2)
        else:
            log(f"{self.name} ignored SIGTERM for {timeout}s; killing it")
            os.killpg(pid, signal.SIGKILL)
        self.pid_file.unlink(missing_ok=True)
        return True


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs; an exited child is reaped, and a zombie counts as gone."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass  # not our child: its parent reaps it
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def _java() -> str:
    return os.environ.get("JAVA", "java")


#: JVM flags of a server or tool that lives seconds to minutes (the tests'
#: private brokers, Kafka's storage formatter): the quick (C1) compiler only.
#: The optimizing compiler's background compilations would otherwise take a
#: core of a small machine for the first minute, when such a JVM is starting
#: and the tests around it wait for it; measured here, a private broker answers
#: in half the time.  The stack's own servers, which run for the whole session,
#: keep the default.
SHORT_LIVED_JVM = ["-XX:TieredStopAtLevel=1"]


def _redis_ready() -> bool:
    try:
        with socket.create_connection((HOST, REDIS_PORT), timeout=0.5) as sock:
            if SECURE:
                sock.sendall(f"AUTH {REDIS_PASSWORD}\r\n".encode())
                if not sock.recv(64).startswith(b"+OK"):
                    return False
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def redis_url(port: int = REDIS_PORT, password: str | None = None) -> str:
    """The URL clients of the stack's Redis use (with its password on the secure stack)."""
    password = REDIS_PASSWORD if password is None and SECURE else password
    return f"redis://{':' + password + '@' if password else ''}{HOST}:{port}/0"


def redis_command(port: int = REDIS_PORT, data: Path | None = None, password: str | None = None) -> list[str]:
    """The Redis server of the stack (tests start private ones the same way).

    With a ``password`` (the secure stack's by default) clients must AUTH.
    """
    data = data or STACK_DIR / "redis"
    data.mkdir(parents=True, exist_ok=True)
    password = REDIS_PASSWORD if password is None and SECURE else password
    auth = ["--requirepass", password] if password else []
    return [
        "redis-server",
        "--bind",
        HOST,
        "--port",
        str(port),
        "--dir",
        str(data),
        # Append-only file, fsync every second: a Redis restart keeps the queue.
        "--appendonly",
        "yes",
        "--appendfsync",
        "everysec",
        "--save",
        "",
        "--daemonize",
        "no",
        *auth,
    ]


def nginx_binary() -> str:
    return shutil.which("nginx", path=SBIN_PATH) or "nginx"


def nginx_prepare(root: Path, listen: str, upstream: str) -> Path:
    """Render the API's proxy (devstack/nginx/payment.conf.template) into a config under ``root``.

    ``listen`` is nginx's listen address (the public port), ``upstream``
    gunicorn's WEB_BIND.  The template is the one docker-compose gives the
    nginx image; here it is wrapped in a main file that keeps nginx's pid,
    logs and temporary files under ``root`` and runs it in the foreground.
    """
    root.mkdir(parents=True, exist_ok=True)
    template = (DEVSTACK / "nginx" / "payment.conf.template").read_text()
    site = template.replace("${PROXY_LISTEN}", listen).replace("${API_UPSTREAM}", upstream)
    if "${" in site:
        raise StackError("devstack/nginx/payment.conf.template has a placeholder devstack does not fill")
    (root / "payment.conf").write_text(site)
    temp = root / "tmp"
    temp.mkdir(exist_ok=True)
    paths = "\n".join(
        f"    {kind}_temp_path {temp / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    main = root / "nginx.conf"
    main.write_text(
        f"""# Written by devstack from devstack/nginx/payment.conf.template; do not edit.
daemon off;
worker_processes 1;
pid {root / "nginx.pid"};
error_log stderr warn;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
{paths}
    include {root / "payment.conf"};
}}
"""
    )
    return main


def nginx_command(root: Path) -> list[str]:
    """nginx in the foreground on the config :func:`nginx_prepare` wrote under ``root``."""
    return [nginx_binary(), "-p", str(root), "-e", "stderr", "-c", str(root / "nginx.conf")]


def _mongo_ready() -> bool:
    import pymongo  # the project's own dependency; imported late so `install` runs without it

    if not port_open(MONGO_PORT):
        return False  # at once: pymongo would keep trying a refused port until its timeout
    # 10 s: on a busy machine the JVM server can take seconds to answer a ping
    # (4 s measured here), and a test run that found it "not running" stopped at once.
    client: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(
        f"mongodb://{HOST}:{MONGO_PORT}", serverSelectionTimeoutMS=10000, connectTimeoutMS=10000
    )
    try:
        client.admin.command("ping")
        return True
    except pymongo.errors.PyMongoError:
        return False
    finally:
        client.close()


def _mongo_command() -> list[str]:
    data = STACK_DIR / "mongo"
    data.mkdir(parents=True, exist_ok=True)
    return [
        _java(),
        "-Xmx512m",
        "-cp",
        f"{java_lib_dir()}/*",
        str(DEVSTACK / "java" / "MongoServerLauncher.java"),
        HOST,
        str(MONGO_PORT),
        str(data / "mongo.mv.db"),
    ]


def kafka_prepare(
    root: Path | None = None,
    port: int = KAFKA_PORT,
    controller_port: int = KAFKA_CONTROLLER_PORT,
    users: dict[str, str] | None = None,
) -> Path:
    """Write a broker's configuration under ``root`` and format its log dir once (KRaft).

    Returns the properties file.  The stack's broker lives in .stack/kafka;
    tests start private brokers (to stop and restart them) the same way.
    With ``users`` (name to password; the secure stack's by default) clients
    must authenticate with SASL/SCRAM as one of them, ``KAFKA_ADMIN`` is the
    super user, and everyone else may do only what an ACL allows.
    """
    root = root or STACK_DIR / "kafka"
    data = root / "data"
    users = dict(KAFKA_USERS) if users is None and SECURE else users
    template = (DEVSTACK / "kafka" / "server.properties").read_text()
    scram: list[str] = []
    if users:
        template += "\n" + (DEVSTACK / "kafka" / "sasl.properties").read_text()
        template = (
            template.replace("@MECHANISM@", KAFKA_SCRAM_MECHANISM)
            .replace("@MECHANISM_LOWER@", KAFKA_SCRAM_MECHANISM.lower())
            .replace("@ADMIN_USER@", KAFKA_ADMIN)
            .replace("@ADMIN_PASSWORD@", users[KAFKA_ADMIN])
        )
        for name, password in users.items():
            scram += ["--add-scram", f"{KAFKA_SCRAM_MECHANISM}=[name={name},password={password}]"]
    config = (
        template.replace("@HOST@", HOST)
        .replace("@PORT@", str(port))
        .replace("@CONTROLLER_PORT@", str(controller_port))
        .replace("@DATA_DIR@", str(data))
    )
    root.mkdir(parents=True, exist_ok=True)
    properties = root / "server.properties"
    properties.write_text(config)
    if not (data / "meta.properties").exists():
        cluster_id = "-"
        while cluster_id.startswith("-"):  # the storage tool would read it as an option
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        log(f"formatting Kafka log dir {data} (cluster {cluster_id})")
        subprocess.run(
            [
                _java(),
                "-Xmx256m",
                *SHORT_LIVED_JVM,
                "-cp",
                f"{java_lib_dir()}/*",
                *_kafka_jvm_flags(root),
                "kafka.tools.StorageTool",
                "format",
                "--ignore-formatted",
                "-t",
                cluster_id,
                "-c",
                str(properties),
                *scram,
            ],
            check=True,
            capture_output=True,
        )
    return properties


def _kafka_jvm_flags(root: Path) -> list[str]:
    logs = root / "logs" if root != STACK_DIR / "kafka" else STACK_DIR / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    return [
        f"-Dlog4j2.configurationFile={DEVSTACK / 'kafka' / 'log4j2.properties'}",
        f"-Dkafka.logs.dir={logs}",
    ]


def kafka_command(root: Path | None = None, heap: str = "768m", *, short_lived: bool = False) -> list[str]:
    """The broker prepared under ``root``; ``short_lived`` for a test's private broker (SHORT_LIVED_JVM)."""
    root = root or STACK_DIR / "kafka"
    return [
        _java(),
        "-Xms256m",
        f"-Xmx{heap}",
        "-XX:+UseG1GC",
        *(SHORT_LIVED_JVM if short_lived else []),
        "-cp",
        f"{java_lib_dir()}/*",
        *_kafka_jvm_flags(root),
        "kafka.Kafka",
        str(root / "server.properties"),
    ]


def kafka_client_options(
    port: int = KAFKA_PORT, user: str | None = None, password: str | None = None
) -> dict[str, str]:
    """kafka-python options to reach a broker of the stack, as ``user`` (the admin on the secure stack)."""
    if user is None and SECURE:
        user, password = KAFKA_ADMIN, KAFKA_USERS[KAFKA_ADMIN]
    options = {"bootstrap_servers": f"{HOST}:{port}"}
    if user:
        options.update(
            security_protocol="SASL_PLAINTEXT",
            sasl_mechanism=KAFKA_SCRAM_MECHANISM,
            sasl_plain_username=user,
            sasl_plain_password=password or "",
        )
    return options


def secure_env(*, force: bool = False) -> dict[str, str]:
    """The settings the service needs on the secure stack (DEVSTACK_SECURE=1): empty otherwise."""
    if not (SECURE or force):
        return {}
    return {
        "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "KAFKA_SASL_MECHANISM": KAFKA_SCRAM_MECHANISM,
        "KAFKA_SASL_USERNAME": KAFKA_SERVICE,
        "KAFKA_SASL_PASSWORD": KAFKA_USERS[KAFKA_SERVICE],
        "CELERY_BROKER_URL": redis_url(password=REDIS_PASSWORD),
    }


def kafka_ready(port: int = KAFKA_PORT, user: str | None = None, password: str | None = None) -> bool:
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    if not port_open(port):
        return False
    try:
        admin = KafkaAdminClient(**kafka_client_options(port, user, password), request_timeout_ms=3000)
    except (KafkaError, OSError, ValueError):
        return False
    try:
        admin.describe_cluster()
        return True
    except (KafkaError, OSError):
        return False
    finally:
        admin.close()


SERVERS: dict[str, Server] = {
    "redis": Server("redis", REDIS_PORT, redis_command, _redis_ready, start_timeout=30),
    "mongo": Server("mongo", MONGO_PORT, _mongo_command, _mongo_ready, start_timeout=60),
    "kafka": Server(
        "kafka", KAFKA_PORT, kafka_command, kafka_ready, prepare=kafka_prepare, start_timeout=120
    ),
}


def up(names: Sequence[str] = tuple(SERVERS), record: Path | None = None) -> list[str]:
    """Start each named server that does not answer yet; return those started.

    With ``record``, the names started are appended to that file, so that
    ``down(record=...)`` later stops exactly those and nothing someone else
    was already running.
    """
    install()
    started: list[str] = []
    for name in names:
        server = SERVERS[name]
        if server.ready():
            log(f"{name} already answers on {HOST}:{server.port}")
            continue
        if port_open(server.port):
            raise StackError(
                f"port {server.port} is taken by something that is not {name}; "
                f"free it or set DEVSTACK_{name.upper()}_PORT"
            )
        t0 = time.monotonic()
        server.start()
        started.append(name)
        if record is not None:
            with record.open("a") as fh:
                fh.write(name + "\n")
        log(f"{name} up on {HOST}:{server.port} in {time.monotonic() - t0:.1f}s")
    return started


def down(names: Sequence[str] | None = None, record: Path | None = None) -> None:
    """Stop the named servers (all by default), or those listed in ``record``."""
    if record is not None:
        names = record.read_text().split() if record.exists() else []
        record.unlink(missing_ok=True)
    for name in reversed(list(names if names is not None else SERVERS)):
        if SERVERS[name].stop():
            log(f"{name} stopped")


def status() -> dict[str, bool]:
    return {name: server.ready() for name, server in SERVERS.items()}
