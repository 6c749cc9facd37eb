"""Typed settings of every process of the payment service.

Each environment variable maps to one named, typed setting.  Settings are read
once, by an entry point calling :func:`load_settings`, never at import time,
and validated at start: a bad or missing value stops the process with a message
that names the variable.  Development values live in ``.env.example``.
"""

from __future__ import annotations

import ipaddress
import os
import sys
from enum import StrEnum
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from limits import parse_many
from pydantic import (
    AliasChoices,
    Field,
    HttpUrl,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Environment(StrEnum):
    DEVELOPMENT = "development"
    TEST = "test"
    PRODUCTION = "production"


class ConfigurationError(Exception):
    """The environment does not describe a runnable service."""


#: Secrets that are public because the repository holds them (.env.example,
#: the test suite's environment, devstack's secure stack).  Production refuses
#: them; tests/unit/shared/test_settings.py keeps this list in step with those files.
DEVELOPMENT_SECRETS = frozenset(
    {
        "dev-only-jwt-secret-change-me-0123456789",
        "dev-only-card-fingerprint-key-0123456789",
        "dev-flower-password",
        "test-jwt-secret-0123456789abcdefghijkl",
        "test-card-fingerprint-key-0123456789abcdef",
        "test-flower-password",
        "dev-kafka-admin-password",
        "dev-kafka-payments-password",
        "dev-kafka-orders-password",
        "dev-redis-password",
    }
)
#: A secret with one of these in it was never meant to be one.
_PLACEHOLDER_MARKERS = ("dev-only", "change-me", "changeme")

#: The narrowest prefix production accepts in FIND_TOKENLESS_NETWORKS: a /16
#: is a site; anything wider is a typo or a wish to open the route to all.
MIN_TOKENLESS_PREFIX = {4: 16, 6: 48}
#: IPv6 prefixes whose last 32 bits are an IPv4 address (mapped, NAT64, compatible):
#: within them the IPv4 rule applies to the embedded part.
_IPV4_EMBEDDING = tuple(ipaddress.IPv6Network(n) for n in ("::ffff:0:0/96", "64:ff9b::/96", "::/96"))


def _too_wide(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    """Whether a token-less network is wider than an operator would mean."""
    if isinstance(network, ipaddress.IPv6Network):
        for embedding in _IPV4_EMBEDDING:
            if network.subnet_of(embedding):
                return network.prefixlen - 96 < MIN_TOKENLESS_PREFIX[4]
    return network.prefixlen < MIN_TOKENLESS_PREFIX[network.version]


def _split_csv(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """All configuration; field docs are the configuration reference."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
        populate_by_name=True,
    )

    environment: Environment = Field(
        Environment.DEVELOPMENT,
        validation_alias="PAYMENT_ENV",
        description="development, test or production; production refuses unsafe defaults.",
    )
    port: int = Field(
        8080,
        ge=1,
        le=65535,
        validation_alias="PAYMENT_SERVICE_PORT",
        description="Public port of the HTTP API, served by the proxy (nginx) in front of gunicorn.",
    )
    web_workers: int = Field(
        2, ge=1, le=64, validation_alias="WEB_CONCURRENCY", description="gunicorn worker processes."
    )
    web_threads: int = Field(
        4, ge=1, le=64, validation_alias="WEB_THREADS", description="Threads per gunicorn worker."
    )
    mongo_url: str = Field(
        "mongodb://127.0.0.1:27017/payments",
        validation_alias="MONGO_URL",
        description="MongoDB connection string; its path names the database.",
    )
    jwt_secret: SecretStr = Field(
        validation_alias="JWT_SEC",
        description="HS256 secret shared with the user service (required, >= 32 bytes).",
    )
    kafka_bootstrap: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["127.0.0.1:9092"],
        validation_alias="KAFKA_URI",
        description="Kafka bootstrap servers, comma-separated host:port.",
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT",
        validation_alias="KAFKA_SECURITY_PROTOCOL",
        description="How every Kafka client connects: PLAINTEXT, SASL_PLAINTEXT or SASL_SSL.",
    )
    kafka_sasl_mechanism: Literal["SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        "SCRAM-SHA-512",
        validation_alias="KAFKA_SASL_MECHANISM",
        description="SASL mechanism with a SASL_* protocol.",
    )
    kafka_sasl_username: str | None = Field(
        None,
        validation_alias="KAFKA_SASL_USERNAME",
        description="Kafka principal of this service (required with a SASL_* protocol).",
    )
    kafka_sasl_password: SecretStr | None = Field(
        None,
        validation_alias="KAFKA_SASL_PASSWORD",
        description="Password of KAFKA_SASL_USERNAME (required with a SASL_* protocol).",
    )
    broker_url: str = Field(
        "redis://127.0.0.1:6379/0",
        validation_alias=AliasChoices("CELERY_BROKER_URL", "REDIS_URL"),
        description="Celery broker (Redis); also used for job notifications.",
    )
    broker_key_prefix: str = Field(
        "",
        validation_alias="CELERY_KEY_PREFIX",
        description="Prefix of every Redis key Celery uses (isolates test runs).",
    )
    broker_visibility_timeout: int = Field(
        900,
        ge=10,
        le=86400,
        validation_alias="CELERY_VISIBILITY_TIMEOUT",
        description="Seconds after which Redis redelivers a task a dead worker had taken.",
    )
    broker_restore_seconds: int = Field(
        100,
        ge=1,
        le=3600,
        validation_alias="CELERY_RESTORE_SECONDS",
        description=(
            "Seconds between a worker's sweeps that send back the tasks a dead worker had taken "
            "(once their visibility timeout has passed); kombu's default."
        ),
    )
    task_max_retries: int = Field(
        8,
        ge=0,
        le=100,
        validation_alias="TASK_MAX_RETRIES",
        description="Retries of a job or refund task after a transient failure, before it ends failed.",
    )
    task_retry_backoff_max_seconds: int = Field(
        60,
        ge=1,
        le=3600,
        validation_alias="TASK_RETRY_BACKOFF_MAX_SECONDS",
        description="Cap of the exponential backoff (full jitter) between a task's retries.",
    )
    worker_pool: Literal["prefork", "threads"] = Field(
        "prefork",
        validation_alias="WORKER_POOL",
        description="Pool of a Celery worker node started without --pool: prefork or threads.",
    )
    worker_concurrency: int | None = Field(
        None,
        ge=1,
        le=64,
        validation_alias="WORKER_CONCURRENCY",
        description="Tasks a worker node started without --concurrency runs at once (default: CPUs).",
    )
    job_unstarted_requeue_seconds: float = Field(
        45.0,
        ge=5,
        le=600,
        validation_alias="JOB_UNSTARTED_REQUEUE_SECONDS",
        description=(
            "A queued job whose message may be lost (sent before a broker restart, or its queue"
            " empty) is sent again after this many seconds."
        ),
    )
    checkout_service_url: HttpUrl = Field(
        HttpUrl("http://127.0.0.1:8090"),
        validation_alias="CHECKOUT_SERVICE_URL",
        description="Base URL of the checkout service.",
    )
    checkout_timeout_seconds: float = Field(
        5.0,
        gt=0,
        le=60,
        validation_alias="CHECKOUT_TIMEOUT_SECONDS",
        description="Connect and read timeout of each checkout service call.",
    )
    card_fingerprint_key: SecretStr = Field(
        validation_alias="CARD_FINGERPRINT_KEY",
        description="HMAC key of the card-number fingerprint (required, >= 32 characters).",
    )
    kafka_topic_prefix: str = Field(
        "",
        validation_alias="KAFKA_TOPIC_PREFIX",
        description="Prefix added to every topic and consumer group name.",
    )
    topic_payment_accepted: str = Field(
        "paymentService-payment-service-accept",
        validation_alias="KAFKA_TOPIC_PAYMENT_ACCEPTED",
        description="Topic of the payment-accepted event (the order service listens on it).",
    )
    topic_order_refunded: str = Field(
        "orderService-orderRefunded",
        validation_alias="KAFKA_TOPIC_ORDER_REFUNDED",
        description="Topic of whole-order refunds (consumed).",
    )
    topic_product_refunded: str = Field(
        "orderService-productFromOrderRefunded",
        validation_alias="KAFKA_TOPIC_PRODUCT_REFUNDED",
        description="Topic of product refunds (consumed).",
    )
    topic_refund_applied: str = Field(
        "paymentService-refund-applied",
        validation_alias="KAFKA_TOPIC_REFUND_APPLIED",
        description="Topic of the refund-applied event (published).",
    )
    topic_dead_letter: str = Field(
        "paymentService-refund-dead-letter",
        validation_alias="KAFKA_TOPIC_DEAD_LETTER",
        description="Where the bridge sets aside refund messages it cannot apply.",
    )
    bridge_group_id: str = Field(
        "payment-service-refunds",
        validation_alias="KAFKA_BRIDGE_GROUP",
        description="Consumer group of the refund bridge instances.",
    )
    bridge_session_timeout_ms: int = Field(
        45000,
        ge=6000,
        le=300000,
        validation_alias="KAFKA_BRIDGE_SESSION_TIMEOUT_MS",
        description="How long the group waits for a silent bridge before moving its partitions.",
    )
    rate_limit_writes: str = Field(
        "30/minute",
        validation_alias="RATE_LIMIT_WRITES",
        description="Writes (POST, DELETE) one user may send, e.g. 30/minute; several with ';'.",
    )
    rate_limit_reads: str = Field(
        "600/minute",
        validation_alias="RATE_LIMIT_READS",
        description="Reads (GET) one user may send, e.g. 600/minute; several with ';'.",
    )
    rate_limit_service_reads: str = Field(
        "6000/minute",
        validation_alias="RATE_LIMIT_SERVICE_READS",
        description=(
            "Reads the shop's services may send: a token whose userType holds 'service', or a"
            " token-less GET /find from FIND_TOKENLESS_NETWORKS (the order service), per token or address."
        ),
    )
    open_jobs_per_user: int = Field(
        5,
        ge=1,
        le=10000,
        validation_alias="OPEN_JOBS_PER_USER",
        description="Queued or running jobs one user may have; another write answers 429.",
    )
    job_retention_days: int = Field(
        30,
        # Idempotency-Key records are kept 48 hours and point at their job.
        ge=2,
        le=3650,
        validation_alias="JOB_RETENTION_DAYS",
        description="Days an ended job is kept before its TTL index (or the hourly purge) removes it.",
    )
    stale_sweep_batch: int = Field(
        200,
        ge=1,
        le=100000,
        validation_alias="STALE_SWEEP_BATCH",
        description="Most jobs plus refund events the stale-job sweep sends again per run.",
    )
    metrics_address: str = Field(
        "127.0.0.1",
        validation_alias="METRICS_ADDRESS",
        description="Address the API's and the bridge's Prometheus metrics listen on.",
    )
    api_metrics_port: int = Field(
        9101,
        ge=0,
        le=65535,
        validation_alias="API_METRICS_PORT",
        description="Port of the API's metrics, served by the gunicorn master (not the API port); 0: off.",
    )
    bridge_metrics_port: int = Field(
        9102,
        ge=0,
        le=65535,
        validation_alias="BRIDGE_METRICS_PORT",
        description="Port of the refund bridge's metrics; 0: off.",
    )
    find_tokenless_networks: Annotated[list[ipaddress.IPv4Network | ipaddress.IPv6Network], NoDecode] = Field(
        default_factory=list,
        validation_alias="FIND_TOKENLESS_NETWORKS",
        description="CIDRs allowed to call GET /find without a token (off when empty).",
    )
    flower_user: str = Field("admin", validation_alias="FLOWER_USER", description="Flower basic-auth user.")
    flower_password: SecretStr | None = Field(
        None,
        validation_alias="FLOWER_PASSWORD",
        description="Flower basic-auth password (required in production).",
    )
    flower_port: int = Field(5555, ge=1, le=65535, validation_alias="FLOWER_PORT", description="Flower port.")
    flower_address: str = Field(
        "127.0.0.1", validation_alias="FLOWER_ADDRESS", description="Address Flower listens on."
    )
    log_level: str = Field("INFO", validation_alias="LOG_LEVEL", description="Root log level.")
    web_bind: str = Field(
        "127.0.0.1:8000",
        validation_alias="WEB_BIND",
        description="Where gunicorn listens, for the proxy only: loopback host:port or unix:/path.",
    )
    trusted_proxy_hops: int = Field(
        0,
        ge=0,
        le=5,
        validation_alias="TRUSTED_PROXY_HOPS",
        description="Proxies in front of the API whose X-Forwarded-For is trusted (1 behind nginx, 0 bare).",
    )
    jwt_leeway_seconds: int = Field(
        30,
        ge=0,
        le=300,
        validation_alias="JWT_LEEWAY_SECONDS",
        description="Clock skew allowed when checking a token's exp and nbf.",
    )
    readyz_cache_seconds: float = Field(
        5.0,
        ge=0,
        le=60,
        validation_alias="READYZ_CACHE_SECONDS",
        description="How long /readyz answers from its last check before checking again.",
    )
    readyz_timeout_seconds: float = Field(
        2.0,
        gt=0,
        le=30,
        validation_alias="READYZ_TIMEOUT_SECONDS",
        description="Time each /readyz check may take before it counts as failed.",
    )
    failpoints: Annotated[frozenset[str], NoDecode] = Field(
        default_factory=frozenset,
        validation_alias="PAYMENT_FAILPOINTS",
        description=(
            "Test only: named points where a worker kills itself (NAME) or stalls (stall:NAME) on a job's"
            " first attempt, or fails as if the database were away until its retries ran out (fail:NAME);"
            " NAME@SUFFIX: only for keys ending with SUFFIX."
        ),
    )

    @field_validator("kafka_bootstrap", "find_tokenless_networks", "failpoints", mode="before")
    @classmethod
    def _csv(cls, value: Any) -> Any:
        return _split_csv(value)

    @field_validator("kafka_bootstrap")
    @classmethod
    def _host_ports(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one host:port is needed")
        for server in value:
            host, sep, port = server.rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(f"{server!r} is not host:port")
        return value

    @field_validator("rate_limit_writes", "rate_limit_reads", "rate_limit_service_reads")
    @classmethod
    def _rate_limit(cls, value: str) -> str:
        try:
            parsed = parse_many(value)
        except ValueError:
            parsed = []
        if not parsed or any(item.amount < 1 for item in parsed):
            raise ValueError("must be a rate such as 30/minute or 10/second;300/hour")
        return value

    @field_validator("mongo_url")
    @classmethod
    def _mongo_scheme(cls, value: str) -> str:
        if not value.startswith(("mongodb://", "mongodb+srv://")):
            raise ValueError("must start with mongodb:// or mongodb+srv://")
        return value

    @field_validator("broker_url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://")):
            raise ValueError("must be a redis:// or rediss:// URL")
        return value

    @field_validator("web_bind")
    @classmethod
    def _bind(cls, value: str) -> str:
        if value.startswith("unix:"):
            if not value.removeprefix("unix:").startswith("/"):
                raise ValueError("a unix socket must be an absolute path: unix:/path")
            return value
        host, sep, port = value.rpartition(":")
        if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ValueError(f"{value!r} is not host:port or unix:/path")
        try:
            loopback = ipaddress.ip_address(host.strip("[]")).is_loopback
        except ValueError:
            loopback = host == "localhost"
        if not loopback:
            # Only the proxy may talk to gunicorn: it has no header timeouts.
            raise ValueError("gunicorn must listen on loopback or a unix socket, behind the proxy")
        return value

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
        return level

    @model_validator(mode="after")
    def _safe_secrets(self) -> Settings:
        # RFC 7518 3.2: an HS256 key has at least 256 bits.
        if len(self.jwt_secret.get_secret_value().encode()) < 32:
            raise ValueError("JWT_SEC must be at least 32 bytes (RFC 7518 3.2)")
        if len(self.card_fingerprint_key.get_secret_value()) < 32:
            raise ValueError("CARD_FINGERPRINT_KEY must be at least 32 characters")
        if self.failpoints and self.environment is not Environment.TEST:
            raise ValueError("PAYMENT_FAILPOINTS is only allowed with PAYMENT_ENV=test")
        if self.environment is Environment.PRODUCTION and self.flower_password is None:
            raise ValueError("FLOWER_PASSWORD is required in production")
        if self.kafka_security_protocol.startswith("SASL_") and not (
            self.kafka_sasl_username and self.kafka_sasl_password
        ):
            raise ValueError(
                f"KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD are required with "
                f"KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol}"
            )
        if self.environment is Environment.PRODUCTION:
            self._refuse_development_values()
        return self

    def _refuse_development_values(self) -> None:
        """Production refuses what the repository makes public and what opens the API to all."""
        secrets = {
            "JWT_SEC": self.jwt_secret,
            "CARD_FINGERPRINT_KEY": self.card_fingerprint_key,
            "FLOWER_PASSWORD": self.flower_password,
            "KAFKA_SASL_PASSWORD": self.kafka_sasl_password,
        }
        for variable, secret in secrets.items():
            value = secret.get_secret_value() if secret is not None else ""
            if value in DEVELOPMENT_SECRETS or any(m in value.lower() for m in _PLACEHOLDER_MARKERS):
                raise ValueError(f"{variable} is a development secret; production needs its own")
        # Passwords in the servers' URLs (the secure dev stack's Redis has one).
        for variable, url in (("CELERY_BROKER_URL", self.broker_url), ("MONGO_URL", self.mongo_url)):
            password = urlsplit(url).password or ""
            if password in DEVELOPMENT_SECRETS or any(m in password.lower() for m in _PLACEHOLDER_MARKERS):
                raise ValueError(f"{variable} has a development password; production needs its own")
        for network in self.find_tokenless_networks:
            if _too_wide(network):
                minimum = MIN_TOKENLESS_PREFIX[network.version]
                raise ValueError(
                    f"FIND_TOKENLESS_NETWORKS: {network} is wider than /{minimum}; "
                    "production lets only a known site call GET /find without a token"
                )

    def topic(self, name: str) -> str:
        """The real name of a configured topic, with the run's prefix."""
        return f"{self.kafka_topic_prefix}{name}"

    @property
    def kafka_client_options(self) -> dict[str, Any]:
        """What every Kafka client (kafka-python) needs to reach and authenticate to the brokers."""
        options: dict[str, Any] = {
            "bootstrap_servers": self.kafka_bootstrap,
            "security_protocol": self.kafka_security_protocol,
        }
        if self.kafka_security_protocol.startswith("SASL_"):
            assert self.kafka_sasl_password is not None  # checked at start
            options.update(
                sasl_mechanism=self.kafka_sasl_mechanism,
                sasl_plain_username=self.kafka_sasl_username,
                sasl_plain_password=self.kafka_sasl_password.get_secret_value(),
            )
        return options

    @property
    def consumed_topics(self) -> list[str]:
        return [self.topic(self.topic_order_refunded), self.topic(self.topic_product_refunded)]

    @property
    def all_topics(self) -> list[str]:
        return [
            self.topic(t)
            for t in (
                self.topic_payment_accepted,
                self.topic_order_refunded,
                self.topic_product_refunded,
                self.topic_refund_applied,
                self.topic_dead_letter,
            )
        ]


def load_settings(**overrides: Any) -> Settings:
    """Read and validate the settings, or raise ConfigurationError naming each problem.

    Production reads the process environment only: a ``.env`` file is for
    development, and one left on a server must not change a production process.
    """
    declared = overrides.get("PAYMENT_ENV", os.environ.get("PAYMENT_ENV", ""))
    production = str(declared).strip().lower() == Environment.PRODUCTION
    # A caller may name its own file (None: none at all); production never reads one.
    env_file = None if production else overrides.pop("_env_file", ".env")
    try:
        settings = Settings(_env_file=env_file, **overrides)  # type: ignore[call-arg]
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            where = ".".join(str(p) for p in error["loc"]) or "settings"
            problems.append(f"  {where}: {error['msg']}")
        raise ConfigurationError("invalid configuration:\n" + "\n".join(problems)) from None
    if settings.environment is Environment.PRODUCTION and not production:
        raise ConfigurationError(
            "invalid configuration:\n  PAYMENT_ENV: production comes from .env; "
            "production reads no .env file, set PAYMENT_ENV=production in the environment"
        )
    return settings


def load_settings_or_exit() -> Settings:
    """For command-line entry points: the settings, or exit 2 with each problem on stderr."""
    try:
        return load_settings()
    except ConfigurationError as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(2) from None
