"""The deployment files: docker-compose.yml, the Dockerfile and .dockerignore.

These checks read files only.  They keep compose in step with the typed
settings (every variable it sets is a setting, every required setting is
given, the environment loads as valid production settings, secrets come from
the host), keep the scalable services scalable, and check that every command
names a module that exists in the repository.  Where the Docker CLI has the
compose plugin, ``docker compose config`` validates the file as well.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, get_args

import pytest
import yaml
from pydantic import AliasChoices, SecretStr
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource
from typing_extensions import override

import celeryconfig
from shared.settings import Environment, Settings
from tests.environment import ROOT

COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

BACKING_SERVICES = ("mongo", "kafka-format", "kafka", "redis")
EDGE_SERVICES = ("proxy",)
APP_SERVICES = ("topics", "api", "worker", "beat", "bridge", "flower")
MONITORING_SERVICES = ("prometheus",)
PROMETHEUS_CONFIG = ROOT / "prometheus.yml"
SCALABLE_SERVICES = ("worker", "bridge")
NAMED_SECRETS = {"JWT_SEC", "CARD_FINGERPRINT_KEY", "FLOWER_PASSWORD", "KAFKA_SASL_PASSWORD"}
#: Secrets of the servers that are not settings of ours (passwords in URLs, other principals).
SERVER_SECRETS = {
    "MONGO_PASSWORD",
    "MONGO_ROOT_PASSWORD",
    "REDIS_PASSWORD",
    "KAFKA_ADMIN_PASSWORD",
    "KAFKA_ORDERS_PASSWORD",
}
#: The one-shot that creates topics and ACLs runs as Kafka's admin: only these differ.
ADMIN_OVERRIDES = {
    "topics": {
        "KAFKA_SASL_USERNAME": "admin",
        "KAFKA_SASL_PASSWORD": "${KAFKA_ADMIN_PASSWORD:?set KAFKA_ADMIN_PASSWORD}",
    }
}
HEALTHCHECKED_SERVICES = ("mongo", "kafka", "redis", "proxy", "api", "worker", "flower", "prometheus")
NGINX_TEMPLATE = ROOT / "devstack" / "nginx" / "payment.conf.template"

#: Stand-ins for the secrets the host provides, long enough to pass validation.
DUMMY_SECRETS = {
    "JWT_SEC": "compose-test-jwt-secret-0123456789",
    "CARD_FINGERPRINT_KEY": "compose-test-card-fingerprint-key-0123456789",
    "FLOWER_PASSWORD": "compose-test-flower-password",
    "KAFKA_SASL_PASSWORD": "compose-test-kafka-password",
    "MONGO_PASSWORD": "compose-test-mongo-password",
    "MONGO_ROOT_PASSWORD": "compose-test-mongo-root-password",
    "REDIS_PASSWORD": "compose-test-redis-password",
    "KAFKA_ADMIN_PASSWORD": "compose-test-kafka-admin-password",
    "KAFKA_ORDERS_PASSWORD": "compose-test-kafka-orders-password",
}

#: The modules the process entry points live in (``True``: run with ``-m``).
ENTRY_MODULES = {
    ("web.gunicorn_conf", False),
    ("web.wsgi", False),
    ("workers.celery_app", False),
    ("workers.topics", True),
    ("workers.bridge", True),
    ("workers.flower", True),
}

# A compose variable reference: $$, ${NAME}, ${NAME<op><arg>} or $NAME.
_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|ms|s|m|h)")
_DURATION_SECONDS = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


# --- helpers -----------------------------------------------------------------


def _load_compose() -> dict[str, Any]:
    with COMPOSE_FILE.open(encoding="utf-8") as handle:
        document = yaml.safe_load(handle)
    assert isinstance(document, dict), "docker-compose.yml is not a mapping"
    return document


def _service(name: str) -> dict[str, Any]:
    service = _load_compose()["services"][name]
    assert isinstance(service, dict)
    return service


def _environment(service: Mapping[str, Any]) -> dict[str, str]:
    """A service's environment as a mapping, from either compose syntax."""
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        pairs = (entry.split("=", 1) for entry in raw)
        return {pair[0]: pair[1] if len(pair) == 2 else "" for pair in pairs}
    return {key: "" if value is None else str(value) for key, value in raw.items()}


def _interpolate(value: str, env: Mapping[str, str]) -> str:
    """Compose's variable substitution, reading variables from ``env`` only."""

    def replace(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name = match["name"] or match["bare"]
        current = env.get(name)
        op, arg = match["op"], match["arg"] or ""
        if op is None:
            return current or ""
        missing = current is None or (op.startswith(":") and current == "")
        if op.endswith("-"):
            return arg if missing else str(current)
        if op.endswith("+"):
            return "" if missing else arg
        if missing:
            raise LookupError(f"required variable {name} is missing: {arg}")
        return str(current)

    return _VARIABLE.sub(replace, value)


def _aliases(name: str, field: FieldInfo) -> set[str]:
    """The environment variable names a settings field is read from."""
    alias = field.validation_alias
    if alias is None:
        return {name.upper()}
    if isinstance(alias, AliasChoices):
        return {choice for choice in alias.choices if isinstance(choice, str)}
    if isinstance(alias, str):
        return {alias}
    return set()


def _known_variables() -> set[str]:
    return {a for name, field in Settings.model_fields.items() for a in _aliases(name, field)}


def _is_secret(field: FieldInfo) -> bool:
    return field.annotation is SecretStr or SecretStr in get_args(field.annotation)


def _secret_variables() -> set[str]:
    return {
        alias
        for name, field in Settings.model_fields.items()
        if _is_secret(field)
        for alias in _aliases(name, field)
    }


class _ComposeSettings(Settings):
    """Settings read from keyword arguments only: no process environment, no .env file."""

    @classmethod
    @override
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


def _argv(command: str | list[Any]) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


def _healthcheck_argv(service: Mapping[str, Any]) -> list[str]:
    test = _argv(service["healthcheck"]["test"])
    if test[0] == "CMD-SHELL":
        return shlex.split(" ".join(test[1:]))
    return test[1:] if test[0] == "CMD" else test


def _option(argv: list[str], *names: str) -> str | None:
    for index, part in enumerate(argv):
        if part in names and index + 1 < len(argv):
            return argv[index + 1]
        for name in names:
            if name.startswith("--") and part.startswith(f"{name}="):
                return part.split("=", 1)[1]
    return None


def _entry_modules(argv: list[str]) -> set[tuple[str, bool]]:
    """The repository modules a command runs: (dotted name, run as ``-m``)."""
    program = Path(argv[0]).name
    found: set[tuple[str, bool]] = set()
    if program.startswith("python"):
        module = _option(argv, "-m")
        if module:
            found.add((module, True))
    elif program == "celery":
        app = _option(argv, "-A", "--app")
        if app:
            found.add((app.split(":", 1)[0], False))
    elif program == "gunicorn":
        config = _option(argv, "-c", "--config")
        if config and config.startswith("python:"):
            found.add((config.removeprefix("python:"), False))
        found.add((argv[-1].split(":", 1)[0], False))
    return found


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, arguments = (pending + stripped).partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        pending = ""
    return instructions


def _dockerfile_cmd() -> list[str]:
    commands = [args for keyword, args in _dockerfile_instructions() if keyword == "CMD"]
    assert commands, "the Dockerfile has no CMD"
    last = commands[-1]
    return json.loads(last) if last.startswith("[") else shlex.split(last)


def _copy_sources() -> list[str]:
    sources: list[str] = []
    for keyword, arguments in _dockerfile_instructions():
        if keyword not in {"COPY", "ADD"}:
            continue
        parts = [part for part in shlex.split(arguments) if not part.startswith("--")]
        sources.extend(parts[:-1])
    return sources


def _all_commands() -> Iterator[tuple[str, list[str]]]:
    """Every command the image runs: the Dockerfile's CMD, compose's commands."""
    yield "Dockerfile CMD", _dockerfile_cmd()
    for name in APP_SERVICES:
        service = _service(name)
        if "command" in service:
            yield f"{name} command", _argv(service["command"])
        if "healthcheck" in service:
            yield f"{name} healthcheck", _healthcheck_argv(service)


def _referenced_modules() -> list[tuple[str, bool]]:
    return sorted({module for _, argv in _all_commands() for module in _entry_modules(argv)})


def _module_file(module: str, *, runnable: bool) -> Path | None:
    base = ROOT.joinpath(*module.split("."))
    candidates = [base.with_suffix(".py"), base / ("__main__.py" if runnable else "__init__.py")]
    return next((path for path in candidates if path.is_file()), None)


def _ports(service: Mapping[str, Any]) -> list[tuple[str | None, str]]:
    """(host port or None, container port) of each published port."""
    ports: list[tuple[str | None, str]] = []
    for entry in service.get("ports", []):
        if isinstance(entry, dict):
            published = entry.get("published")
            ports.append((str(published) if published else None, str(entry["target"])))
            continue
        parts = str(entry).split("/", 1)[0].rsplit(":", 2)
        ports.append((parts[-2] if len(parts) > 1 else None, parts[-1]))
    return ports


def _seconds(duration: str) -> float:
    parts = _DURATION.findall(duration)
    assert parts, f"{duration!r} is not a compose duration"
    assert "".join(number + unit for number, unit in parts) == duration, duration
    return sum(float(number) * _DURATION_SECONDS[unit] for number, unit in parts)


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regular expression (Go filepath.Match plus **)."""
    out, index = [], 0
    while index < len(pattern):
        if pattern.startswith("**/", index):
            out.append("(?:.*/)?")
            index += 3
        elif pattern.startswith("**", index):
            out.append(".*")
            index += 2
        elif pattern[index] == "*":
            out.append("[^/]*")
            index += 1
        elif pattern[index] == "?":
            out.append("[^/]")
            index += 1
        elif pattern[index] == "[" and "]" in pattern[index:]:
            end = pattern.index("]", index)
            body = pattern[index + 1 : end]
            out.append("[" + ("^" + body[1:] if body.startswith(("!", "^")) else body) + "]")
            index = end + 1
        else:
            out.append(re.escape(pattern[index]))
            index += 1
    return re.compile("".join(out))


def _ignored_by_docker(path: str) -> bool:
    """Whether .dockerignore keeps ``path`` out of the build context (last match wins)."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: end + 1]) for end in range(len(parts))]
    ignored = False
    for raw in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        regex = _glob_regex(line.lstrip("!").strip().strip("/"))
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            ignored = not negated
    return ignored


# --- the compose file --------------------------------------------------------


def test_the_compose_file_parses_and_defines_every_service() -> None:
    services = _load_compose()["services"]
    assert set(services) == {*BACKING_SERVICES, *EDGE_SERVICES, *APP_SERVICES, *MONITORING_SERVICES}


@pytest.mark.parametrize("name", APP_SERVICES)
def test_every_app_service_runs_the_one_image_with_the_shared_environment(name: str) -> None:
    compose = _load_compose()
    service = compose["services"][name]
    shared = {**compose["x-app-env"], **ADMIN_OVERRIDES.get(name, {})}
    assert _environment(service) == _environment({"environment": shared})
    assert service["image"] == compose["services"]["api"]["image"]
    assert service["build"] == "."


@pytest.mark.parametrize("name", APP_SERVICES)
def test_every_variable_set_on_an_app_service_is_a_setting(name: str) -> None:
    unknown = set(_environment(_service(name))) - _known_variables()
    assert not unknown, f"{name} sets variables shared/settings.py does not read: {sorted(unknown)}"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_every_required_setting_is_given_to_every_app_service(name: str) -> None:
    given = set(_environment(_service(name)))
    for field_name, field in Settings.model_fields.items():
        if field.is_required():
            assert _aliases(field_name, field) & given, f"{name} lacks the required {field_name}"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_the_environment_of_every_app_service_loads_as_valid_production_settings(name: str) -> None:
    # Strings, as a process environment gives them; the settings parse them.
    environment: dict[str, Any] = {
        key: _interpolate(value, DUMMY_SECRETS) for key, value in _environment(_service(name)).items()
    }
    settings = _ComposeSettings(**environment)
    assert settings.environment is Environment.PRODUCTION
    assert settings.jwt_secret.get_secret_value() == DUMMY_SECRETS["JWT_SEC"]
    # Every server authenticates the service.
    assert settings.mongo_url.startswith(f"mongodb://payments:{DUMMY_SECRETS['MONGO_PASSWORD']}@")
    assert settings.broker_url.startswith(f"redis://:{DUMMY_SECRETS['REDIS_PASSWORD']}@")
    assert settings.kafka_security_protocol == "SASL_PLAINTEXT"


def test_every_secret_setting_is_one_of_the_secrets_compose_requires_from_the_host() -> None:
    assert _secret_variables() == NAMED_SECRETS


@pytest.mark.parametrize("name", APP_SERVICES)
def test_secrets_are_never_literal_but_required_from_the_host_environment(name: str) -> None:
    environment = _environment(_service(name))
    overrides = ADMIN_OVERRIDES.get(name, {})
    for variable in sorted(_secret_variables() & set(environment)):
        source = "KAFKA_ADMIN_PASSWORD" if variable in overrides else variable
        pattern = rf"\$\{{{source}:\?[^}}]+\}}"
        assert re.fullmatch(pattern, environment[variable]), (
            f"{name}: {variable} must be ${{{source}:?message}}, not {environment[variable]!r}"
        )
    assert set(environment) >= NAMED_SECRETS


def test_every_server_password_is_required_from_the_host_environment() -> None:
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    for variable in sorted(SERVER_SECRETS | NAMED_SECRETS):
        assert re.search(rf"\$\{{{variable}:\?[^}}]+\}}", text), f"{variable} is not required"
    with pytest.raises(LookupError, match="REDIS_PASSWORD"):
        _interpolate(_environment(_service("api"))["CELERY_BROKER_URL"], {})
    with pytest.raises(LookupError, match="MONGO_PASSWORD"):
        _interpolate(_environment(_service("api"))["MONGO_URL"], {})


def test_compose_fails_with_a_message_when_a_secret_is_missing() -> None:
    environment = _environment(_service("api"))
    for variable in sorted(NAMED_SECRETS):
        others = {key: value for key, value in DUMMY_SECRETS.items() if key != variable}
        with pytest.raises(LookupError, match=variable):
            _interpolate(environment[variable], others)


@pytest.mark.parametrize("name", SCALABLE_SERVICES)
def test_scalable_services_have_no_container_name_and_no_host_port(name: str) -> None:
    service = _service(name)
    assert "container_name" not in service
    assert [host for host, _ in _ports(service) if host] == []


def test_beat_runs_as_exactly_one_instance_with_a_persistent_schedule() -> None:
    beat = _service("beat")
    assert beat.get("deploy", {}).get("replicas", 1) == 1
    assert beat.get("scale", 1) == 1
    assert f"beat-data:{beat['working_dir']}" in beat["volumes"]


def test_kafka_does_not_create_topics_on_first_use() -> None:
    environment = _environment(_service("kafka"))
    assert environment["KAFKA_AUTO_CREATE_TOPICS_ENABLE"].lower() == "false"


def test_kafka_is_a_single_kraft_node_with_replication_factor_one() -> None:
    environment = _environment(_service("kafka"))
    assert environment["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert environment["KAFKA_ADVERTISED_LISTENERS"] == "SASL_PLAINTEXT://kafka:9092"
    factors = {key: value for key, value in environment.items() if key.endswith("REPLICATION_FACTOR")}
    assert factors
    assert set(factors.values()) == {"1"}
    assert _environment(_service("api"))["KAFKA_URI"] == "kafka:9092"


def test_kafka_authenticates_every_client_and_authorizes_by_acl() -> None:
    kafka = _environment(_service("kafka"))
    app = _environment(_service("api"))
    assert "PLAINTEXT://" not in kafka["KAFKA_LISTENERS"].replace("SASL_PLAINTEXT://", "")
    assert "CONTROLLER://localhost:" in kafka["KAFKA_LISTENERS"], (
        "the controller listener stays in the container"
    )
    assert kafka["KAFKA_SASL_ENABLED_MECHANISMS"] == app["KAFKA_SASL_MECHANISM"]
    assert app["KAFKA_SECURITY_PROTOCOL"] == "SASL_PLAINTEXT"
    assert kafka["KAFKA_AUTHORIZER_CLASS_NAME"].endswith("StandardAuthorizer")
    assert kafka["KAFKA_ALLOW_EVERYONE_IF_NO_ACL_FOUND"] == "false"
    assert _service("kafka")["depends_on"] == {
        "kafka-format": {"condition": "service_completed_successfully"}
    }
    # Each principal has a SCRAM user; the topics one-shot grants the ACLs to ours and the order service's.
    script = _service("kafka-format")["command"][-1]
    users = set(re.findall(r"name=(\w+),password=", script))
    topics = _argv(_service("topics")["command"])
    service, order_service = topics[topics.index("--grant") + 1 :][:2]
    assert service == app["KAFKA_SASL_USERNAME"]
    assert users == {"admin", service, order_service}


def test_redis_runs_append_only_and_asks_for_a_password() -> None:
    argv = _argv(_service("redis")["command"])
    server = shlex.split(argv[-1]) if argv[0] == "sh" else argv
    assert server[server.index("--appendonly") + 1] == "yes"
    assert server[server.index("--requirepass") + 1] == "$$REDIS_PASSWORD"
    assert "REDISCLI_AUTH" in " ".join(_argv(_service("redis")["healthcheck"]["test"]))


def test_mongodb_has_a_root_user_and_creates_the_services_own() -> None:
    mongo = _service("mongo")
    environment = _environment(mongo)
    assert environment["MONGO_INITDB_ROOT_PASSWORD"].startswith("${MONGO_ROOT_PASSWORD:?")
    init = next(str(v).split(":")[0] for v in mongo["volumes"] if "docker-entrypoint-initdb.d" in str(v))
    script = (ROOT / init).read_text(encoding="utf-8")
    assert 'role: "readWrite", db: "payments"' in script
    assert environment["PAYMENTS_DB_PASSWORD"] == "${MONGO_PASSWORD:?set MONGO_PASSWORD}"


@pytest.mark.parametrize(
    ("name", "path"),
    [
        ("mongo", "/data/db"),
        ("kafka", "/var/lib/kafka/data"),
        ("redis", "/data"),
        ("beat", "/var/lib/celery-beat"),
    ],
)
def test_stateful_services_keep_their_data_in_named_volumes(name: str, path: str) -> None:
    compose = _load_compose()
    mounts = dict(str(volume).split(":", 1) for volume in compose["services"][name]["volumes"])
    source = next(source for source, target in mounts.items() if target.split(":")[0] == path)
    assert source in compose["volumes"]


def test_every_dependency_waits_on_a_condition_the_dependency_can_meet() -> None:
    services = _load_compose()["services"]
    for name, service in services.items():
        depends_on = service.get("depends_on", {})
        assert isinstance(depends_on, dict), f"{name}: depends_on must name a condition"
        for dependency, spec in depends_on.items():
            condition = spec.get("condition")
            assert condition in {"service_healthy", "service_completed_successfully"}, (name, dependency)
            if condition == "service_healthy":
                assert "healthcheck" in services[dependency], f"{dependency} has no healthcheck"
            else:
                assert services[dependency]["restart"] == "no", f"{dependency} is not one-shot"


@pytest.mark.parametrize("name", ["api", "worker", "bridge"])
def test_the_api_workers_and_bridge_start_only_after_the_topics_exist(name: str) -> None:
    depends_on = _service(name)["depends_on"]
    assert depends_on["topics"]["condition"] == "service_completed_successfully"
    for backing in ("mongo", "redis", "kafka"):
        assert depends_on[backing]["condition"] == "service_healthy"


def test_the_topics_service_is_a_one_shot_that_waits_for_kafka() -> None:
    topics = _service("topics")
    assert topics["restart"] == "no"
    assert topics["depends_on"] == {"kafka": {"condition": "service_healthy"}}


@pytest.mark.parametrize("name", HEALTHCHECKED_SERVICES)
def test_long_running_services_have_a_healthcheck(name: str) -> None:
    test = _argv(_service(name)["healthcheck"]["test"])
    assert test[0] in {"CMD", "CMD-SHELL"}
    assert len(test) > 1


def test_the_proxy_is_published_and_checked_on_the_apis_configured_port() -> None:
    proxy = _service("proxy")
    port = _environment(_service("api"))["PAYMENT_SERVICE_PORT"]
    assert _environment(proxy)["PROXY_LISTEN"] == port
    assert _ports(proxy) == [(port, port)]
    assert f"http://127.0.0.1:{port}/healthz" in " ".join(_healthcheck_argv(proxy))
    assert proxy["depends_on"] == {"api": {"condition": "service_healthy"}}


def test_the_proxy_runs_the_repositorys_nginx_template_filled_with_what_it_is_given() -> None:
    proxy = _service("proxy")
    mounts = {target: source for source, target in (str(v).split(":", 2)[:2] for v in proxy["volumes"])}
    source = mounts["/etc/nginx/templates/default.conf.template"]
    assert (ROOT / source).resolve() == NGINX_TEMPLATE.resolve()
    # The image's envsubst fills the ${NAME}s it is given: exactly those the template uses.
    placeholders = set(re.findall(r"\$\{([A-Z_]+)\}", NGINX_TEMPLATE.read_text(encoding="utf-8")))
    assert placeholders == set(_environment(proxy))


def test_gunicorn_listens_only_on_a_socket_the_proxy_shares_and_is_not_published() -> None:
    api, proxy = _service("api"), _service("proxy")
    environment = _environment(api)
    socket_path = environment["WEB_BIND"].removeprefix("unix:")
    assert environment["WEB_BIND"].startswith("unix:/")
    assert _environment(proxy)["API_UPSTREAM"] == environment["WEB_BIND"]
    assert environment["TRUSTED_PROXY_HOPS"] == "1"
    assert _ports(api) == []
    socket_dir = str(Path(socket_path).parent)
    shared = {str(v).split(":")[0] for v in api["volumes"] if str(v).split(":")[1] == socket_dir}
    assert shared
    assert shared & {str(v).split(":")[0] for v in proxy["volumes"] if str(v).split(":")[1] == socket_dir}
    assert shared <= set(_load_compose()["volumes"])
    assert f"'{socket_path}'" in " ".join(_healthcheck_argv(api))


def test_flower_is_published_and_checked_on_its_configured_port() -> None:
    flower = _service("flower")
    environment = _environment(flower)
    port = environment["FLOWER_PORT"]
    assert ipaddress.ip_address(environment["FLOWER_ADDRESS"]).is_unspecified, (
        "Flower must listen beyond loopback"
    )
    assert [container for _, container in _ports(flower)] == [port]
    assert f"http://127.0.0.1:{port}/healthcheck" in " ".join(_healthcheck_argv(flower))


def _scrape_targets() -> dict[str, set[str]]:
    """job name -> the host:port targets prometheus.yml scrapes (static or by DNS name)."""
    with PROMETHEUS_CONFIG.open(encoding="utf-8") as handle:
        config = yaml.safe_load(handle)
    targets: dict[str, set[str]] = {}
    for job in config["scrape_configs"]:
        found = targets.setdefault(job["job_name"], set())
        for static in job.get("static_configs", []):
            found.update(static["targets"])
        for dns in job.get("dns_sd_configs", []):
            found.update(f"{name}:{dns['port']}" for name in dns["names"])
    return targets


def test_prometheus_scrapes_the_api_flower_and_every_bridge_on_their_configured_ports() -> None:
    environment = _environment(_service("api"))
    assert _scrape_targets() == {
        "api": {f"api:{environment['API_METRICS_PORT']}"},
        "workers": {f"flower:{environment['FLOWER_PORT']}"},
        "bridge": {f"bridge:{environment['BRIDGE_METRICS_PORT']}"},
    }
    prometheus = _service("prometheus")
    assert "./prometheus.yml:/etc/prometheus/prometheus.yml:ro" in prometheus["volumes"]
    assert all(host.startswith("127.0.0.1:") for host in prometheus["ports"])


def test_the_metrics_ports_are_reachable_on_the_compose_network_but_never_published() -> None:
    environment = _environment(_service("api"))
    assert ipaddress.ip_address(environment["METRICS_ADDRESS"]).is_unspecified
    metrics_ports = {environment["API_METRICS_PORT"], environment["BRIDGE_METRICS_PORT"]}
    for name in APP_SERVICES:
        assert not metrics_ports & {container for _, container in _ports(_service(name))}, name


def test_the_worker_healthcheck_pings_its_own_node_through_a_shell() -> None:
    test = _argv(_service("worker")["healthcheck"]["test"])
    assert test[0] == "CMD-SHELL"
    assert "celery@$$HOSTNAME" in test[1]


def test_the_worker_stop_grace_period_outlasts_the_hard_task_time_limit() -> None:
    grace = _seconds(_service("worker")["stop_grace_period"])
    assert grace > celeryconfig.task_time_limit


def test_the_worker_serves_every_queue_celeryconfig_declares() -> None:
    command = _argv(_service("worker")["command"])
    assert command[command.index("-Q") + 1] == celeryconfig.ALL_QUEUES
    assert f"-Q {celeryconfig.ALL_QUEUES}" in (ROOT / "README.md").read_text()


def test_the_api_stop_grace_period_outlasts_gunicorns_graceful_timeout() -> None:
    assert _seconds(_service("api")["stop_grace_period"]) > 30


# --- the image ---------------------------------------------------------------


def test_the_image_is_python_311_slim_and_runs_as_an_unprivileged_user() -> None:
    instructions = _dockerfile_instructions()
    assert ("FROM", "python:3.11-slim") in instructions
    users = [args for keyword, args in instructions if keyword == "USER"]
    assert users
    assert users[-1].split(":")[0] not in {"root", "0"}


def test_the_image_installs_without_a_pip_cache_and_writes_no_bytecode() -> None:
    instructions = _dockerfile_instructions()
    runs = " ".join(args for keyword, args in instructions if keyword == "RUN")
    assert "pip install --no-cache-dir -r requirements.txt" in runs
    env = " ".join(args for keyword, args in instructions if keyword == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    assert "PYTHONUNBUFFERED=1" in env


def test_the_image_runs_the_api_by_default() -> None:
    assert _dockerfile_cmd() == _argv(_service("api")["command"])


@pytest.mark.parametrize(
    "source",
    [source for source in _copy_sources() if not any(char in source for char in "*?[")],
)
def test_every_path_the_dockerfile_copies_exists(source: str) -> None:
    assert (ROOT / source).exists(), f"the Dockerfile copies {source}, which the repository lacks"


@pytest.mark.parametrize(
    "path",
    [
        source.rstrip("/") + "/module.py" if source.endswith("/") else source
        for source in _copy_sources()
        if not any(char in source for char in "*?[")
    ],
)
def test_the_build_context_keeps_what_the_dockerfile_copies(path: str) -> None:
    assert not _ignored_by_docker(path)


@pytest.mark.parametrize(
    "path",
    [
        ".env",
        "web/.env",
        ".git/config",
        ".venv/bin/python",
        ".stack/mongo/db",
        "tests/unit/test_compose.py",
        "shared/__pycache__/settings.cpython-311.pyc",
    ],
)
def test_the_build_context_leaves_out_secrets_and_local_state(path: str) -> None:
    assert _ignored_by_docker(path)


# --- the commands name real modules ------------------------------------------


def test_every_app_command_names_the_entry_point_it_runs() -> None:
    for where, argv in _all_commands():
        if "healthcheck" in where and argv[0] == "python":
            continue  # an inline urllib probe, not an entry point
        assert _entry_modules(argv), f"{where} runs no module this test knows: {argv}"
    assert set(_referenced_modules()) == ENTRY_MODULES


@pytest.mark.parametrize(
    ("module", "runnable"),
    _referenced_modules(),
    ids=[f"{module} -m" if runnable else module for module, runnable in _referenced_modules()],
)
def test_every_module_a_command_runs_exists_in_the_repository(module: str, runnable: bool) -> None:
    expected = f"{module.replace('.', '/')}{'.py or /__main__.py' if runnable else '.py or /__init__.py'}"
    assert _module_file(module, runnable=runnable), f"{expected} does not exist"


# --- compose itself ----------------------------------------------------------


@pytest.fixture
def docker_compose(tmp_path: Path) -> list[str]:
    """``docker compose`` on this file, reading no .env file; skipped without the plugin."""
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("the docker CLI is not installed")
    try:
        version = subprocess.run(
            [docker, "compose", "version"], capture_output=True, text=True, timeout=60, check=False
        )
    except subprocess.TimeoutExpired:
        pytest.skip("`docker compose version` did not answer within 60 s")
    if version.returncode != 0:
        output = (version.stderr or version.stdout).strip().splitlines()
        pytest.skip(f"the docker compose plugin is not available: {output[0] if output else 'no output'}")
    empty_env_file = tmp_path / "empty.env"
    empty_env_file.write_text("", encoding="utf-8")
    return [
        docker,
        "compose",
        "--project-directory",
        str(ROOT),
        "--env-file",
        str(empty_env_file),
        "-f",
        str(COMPOSE_FILE),
    ]


def _compose_environment(secrets: Mapping[str, str]) -> dict[str, str]:
    environment = {
        key: value for key, value in os.environ.items() if key not in NAMED_SECRETS | SERVER_SECRETS
    }
    environment.update(secrets)
    return environment


def test_docker_compose_accepts_the_file_when_the_secrets_are_set(docker_compose: list[str]) -> None:
    result = subprocess.run(
        [*docker_compose, "config", "-q"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=_compose_environment(DUMMY_SECRETS),
    )
    assert result.returncode == 0, result.stderr


def test_docker_compose_refuses_the_file_when_a_secret_is_missing(docker_compose: list[str]) -> None:
    secrets = {key: value for key, value in DUMMY_SECRETS.items() if key != "JWT_SEC"}
    result = subprocess.run(
        [*docker_compose, "config", "-q"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=_compose_environment(secrets),
    )
    assert result.returncode != 0
    assert "JWT_SEC" in result.stderr
