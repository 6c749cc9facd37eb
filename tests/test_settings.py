"""Settings are typed, validated at start, and name the variable that is wrong."""

from __future__ import annotations

import ipaddress

import pytest

from shared.settings import ConfigurationError, Environment, Settings, load_settings

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
