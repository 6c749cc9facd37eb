"""Settings are typed, validated at start, and name the variable that is wrong."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from shared.settings import DEVELOPMENT_SECRETS, ConfigurationError, Environment, Settings, load_settings
from tests.environment import ROOT

SECRETS = {"JWT_SEC": "a-long-enough-jwt-secret-0123456789", "CARD_FINGERPRINT_KEY": "k" * 32}


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for field in Settings.model_fields.values():
        alias = field.validation_alias
        for name in getattr(alias, "choices", [alias]):
            monkeypatch.delenv(str(name), raising=False)
    monkeypatch.chdir("/")  # no .env file here


def test_missing_secrets_stop_the_process_naming_each_variable() -> None:
    with pytest.raises(ConfigurationError) as exc:
        load_settings()
    assert "JWT_SEC: Field required" in str(exc.value)
    assert "CARD_FINGERPRINT_KEY: Field required" in str(exc.value)


def test_seed_variables_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        **SECRETS,
        "PAYMENT_SERVICE_PORT": "9100",
        "MONGO_URL": "mongodb://db:27017/pay",
        "KAFKA_URI": "k1:9092, k2:9092",
        "FIND_TOKENLESS_NETWORKS": "10.1.0.0/16,::1/128",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = load_settings()
    assert settings.port == 9100
    assert settings.mongo_url == "mongodb://db:27017/pay"
    assert settings.kafka_bootstrap == ["k1:9092", "k2:9092"]
    assert settings.jwt_secret.get_secret_value() == SECRETS["JWT_SEC"]
    assert ipaddress.ip_network("10.1.0.0/16") in settings.find_tokenless_networks
    assert settings.environment is Environment.DEVELOPMENT


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("PAYMENT_SERVICE_PORT", "eighty", "PAYMENT_SERVICE_PORT"),
        ("PAYMENT_SERVICE_PORT", "70000", "PAYMENT_SERVICE_PORT"),
        ("MONGO_URL", "postgres://x", "mongodb://"),
        ("KAFKA_URI", "no-port", "not host:port"),
        ("CELERY_BROKER_URL", "amqp://x", "redis://"),
        ("JWT_SEC", "short", "at least 32 bytes"),
        ("CARD_FINGERPRINT_KEY", "short", "at least 32"),
        ("FIND_TOKENLESS_NETWORKS", "not-a-network", "FIND_TOKENLESS_NETWORKS"),
        ("LOG_LEVEL", "LOUD", "LOG_LEVEL"),
    ],
)
def test_a_bad_value_is_refused_with_a_clear_message(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, message: str
) -> None:
    for key, secret in SECRETS.items():
        monkeypatch.setenv(key, secret)
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError, match=message):
        load_settings()


def test_production_refuses_to_run_flower_without_a_password(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, secret in SECRETS.items():
        monkeypatch.setenv(key, secret)
    monkeypatch.setenv("PAYMENT_ENV", "production")
    with pytest.raises(ConfigurationError, match="FLOWER_PASSWORD is required"):
        load_settings()
    monkeypatch.setenv("FLOWER_PASSWORD", "a-real-password")
    assert load_settings().environment is Environment.PRODUCTION


def test_topic_prefix_applies_to_every_topic(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, secret in SECRETS.items():
        monkeypatch.setenv(key, secret)
    monkeypatch.setenv("KAFKA_TOPIC_PREFIX", "run1.")
    settings = load_settings()
    assert settings.topic(settings.topic_payment_accepted) == "run1.paymentService-payment-service-accept"
    assert all(topic.startswith("run1.") for topic in settings.all_topics)
    assert len(set(settings.all_topics)) == 5


# -- production refuses what development allows --------------------------------------

PRODUCTION = {
    "PAYMENT_ENV": "production",
    "JWT_SEC": "a-long-enough-jwt-secret-0123456789",
    "CARD_FINGERPRINT_KEY": "k" * 32,
    "FLOWER_PASSWORD": "a-real-password",
}


def _env_file_values(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line and line[0] != "#")
    return {key.strip(): value.strip() for key, value in pairs}


def _repository_secrets() -> dict[str, set[str]]:
    """Every secret value the repository holds, by variable: .env.example and the suite's environment."""
    from devstack import servers
    from tests.environment import TEST_ENV

    found: dict[str, set[str]] = {}
    for source in (_env_file_values(ROOT / ".env.example"), TEST_ENV, servers.secure_env(force=True)):
        for variable in sorted(_secret_variables()):
            if source.get(variable):
                found.setdefault(variable, set()).add(source[variable])
    found.setdefault("KAFKA_SASL_PASSWORD", set()).update(servers.KAFKA_USERS.values())
    return found


def _secret_variables() -> set[str]:
    return {
        str(field.validation_alias)
        for field in Settings.model_fields.values()
        if "SecretStr" in str(field.annotation)
    }


def _production(monkeypatch: pytest.MonkeyPatch, **changes: str) -> None:
    for key, value in {**PRODUCTION, **changes}.items():
        monkeypatch.setenv(key, value)


def test_production_loads_with_secrets_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    _production(monkeypatch, FIND_TOKENLESS_NETWORKS="10.20.0.0/16,2001:db8:1::/48,::ffff:10.1.0.0/112")
    assert load_settings().environment is Environment.PRODUCTION


def test_every_secret_the_repository_holds_is_a_known_development_secret() -> None:
    held = _repository_secrets()
    assert {"JWT_SEC", "CARD_FINGERPRINT_KEY", "FLOWER_PASSWORD", "KAFKA_SASL_PASSWORD"} <= set(held)
    for variable, values in held.items():
        assert values <= DEVELOPMENT_SECRETS, f"{variable}: {values - DEVELOPMENT_SECRETS} is not refused"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        (variable, value)
        for variable, values in sorted(_repository_secrets().items())
        for value in sorted(values)
    ]
    + [("JWT_SEC", "please-change-me-before-going-live-0123"), ("FLOWER_PASSWORD", "dev-only")],
)
def test_production_refuses_a_development_secret_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    _production(monkeypatch, **{variable: value})
    with pytest.raises(ConfigurationError, match=f"{variable} is a development secret"):
        load_settings()


@pytest.mark.parametrize(
    ("variable", "url"),
    [
        ("CELERY_BROKER_URL", "redis://:dev-redis-password@redis:6379/0"),
        ("MONGO_URL", "mongodb://payments:dev-only-password@mongo:27017/payments"),
    ],
)
def test_production_refuses_a_development_password_in_a_server_url(
    monkeypatch: pytest.MonkeyPatch, variable: str, url: str
) -> None:
    _production(monkeypatch, **{variable: url})
    with pytest.raises(ConfigurationError, match=f"{variable} has a development password"):
        load_settings()


def test_the_secure_dev_stacks_redis_password_is_a_known_development_secret() -> None:
    from devstack import servers

    assert servers.REDIS_PASSWORD in DEVELOPMENT_SECRETS


def test_development_accepts_the_development_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in _env_file_values(ROOT / ".env.example").items():
        monkeypatch.setenv(key, value)
    assert load_settings().environment is Environment.DEVELOPMENT


@pytest.mark.parametrize(
    "networks",
    [
        "0.0.0.0/0",
        "::/0",
        "10.0.0.0/8",
        "10.20.0.0/15",
        "10.20.0.0/16,172.16.0.0/12",
        "2001:db8::/32",
        "2001:db8::/47",
        "::ffff:0:0/96",
        "::ffff:10.0.0.0/104",
        "64:ff9b::/96",
    ],
)
def test_production_refuses_a_token_less_network_wider_than_meant(
    monkeypatch: pytest.MonkeyPatch, networks: str
) -> None:
    _production(monkeypatch, FIND_TOKENLESS_NETWORKS=networks)
    with pytest.raises(ConfigurationError, match=r"FIND_TOKENLESS_NETWORKS: .* is wider than /"):
        load_settings()
    monkeypatch.setenv("PAYMENT_ENV", "development")
    assert load_settings().find_tokenless_networks


def test_production_reads_no_env_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("LOG_LEVEL=DEBUG\nFIND_TOKENLESS_NETWORKS=0.0.0.0/0\n")
    monkeypatch.chdir(tmp_path)
    for key, value in SECRETS.items():
        monkeypatch.setenv(key, value)
    assert load_settings().log_level == "DEBUG"  # development reads it
    _production(monkeypatch)
    settings = load_settings()
    assert settings.log_level == "INFO"
    assert settings.find_tokenless_networks == []


def test_production_declared_only_in_an_env_file_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / ".env").write_text("PAYMENT_ENV=production\nFLOWER_PASSWORD=a-real-password\n")
    monkeypatch.chdir(tmp_path)
    for key, value in SECRETS.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigurationError, match=r"PAYMENT_ENV: production comes from \.env"):
        load_settings()


# -- the edge and smaller settings -----------------------------------------------------


@pytest.mark.parametrize(
    "bind", ["127.0.0.1:8000", "[::1]:8000", "localhost:8000", "unix:/run/payment/api.sock"]
)
def test_gunicorn_may_listen_on_loopback_or_a_unix_socket(monkeypatch: pytest.MonkeyPatch, bind: str) -> None:
    for key, secret in SECRETS.items():
        monkeypatch.setenv(key, secret)
    monkeypatch.setenv("WEB_BIND", bind)
    assert load_settings().web_bind == bind


@pytest.mark.parametrize("bind", ["0.0.0.0:8000", "[::]:8000", "10.0.0.5:8000", "unix:relative.sock", "8000"])
def test_gunicorn_may_not_listen_where_clients_reach_it_without_the_proxy(
    monkeypatch: pytest.MonkeyPatch, bind: str
) -> None:
    for key, secret in SECRETS.items():
        monkeypatch.setenv(key, secret)
    monkeypatch.setenv("WEB_BIND", bind)
    with pytest.raises(ConfigurationError, match="WEB_BIND"):
        load_settings()


def test_the_bare_app_trusts_no_proxy_and_allows_thirty_seconds_of_clock_skew(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for key, secret in SECRETS.items():
        monkeypatch.setenv(key, secret)
    settings = load_settings()
    assert settings.trusted_proxy_hops == 0
    assert settings.jwt_leeway_seconds == 30
    assert settings.web_bind.startswith("127.0.0.1:")
