"""How every churnguard client reaches Kafka: the bootstrap servers and the link's security
(TLS: a CA, a client certificate and key, the host name check; SASL: PLAIN or SCRAM-SHA-256/
512 with a user name and a password), as one object each client library is configured from
— faust in the worker, aiokafka in the gateway, deliver and the rules feed, kafka-python in
the tools. Settings: CHURNGUARD_KAFKA__* (docs/security.md). Passwords are `SecretStr`:
never logged, never echoed in an error."""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, SecretStr, model_validator

from churnguard.errors import UserError

Protocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
Mechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
# How long a command (`topics`, `rules ...`) waits for a broker to answer at all.
TOOL_TIMEOUT_S = 10.0


class KafkaSecurity(BaseModel):
    model_config = ConfigDict(frozen=True)

    security_protocol: Protocol = "PLAINTEXT"
    # TLS (SSL, SASL_SSL): the CA that signed the brokers' certificates (default: the
    # system's), and a client certificate and key when the brokers ask for one.
    ssl_ca_file: Path | None = None
    ssl_cert_file: Path | None = None
    ssl_key_file: Path | None = None
    ssl_key_password: SecretStr | None = None
    # Whether a broker's certificate must name the host it is reached at.
    ssl_check_hostname: bool = True
    # SASL (SASL_PLAINTEXT, SASL_SSL).
    sasl_mechanism: Mechanism = "PLAIN"
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None

    @model_validator(mode="after")
    def _complete(self) -> KafkaSecurity:
        if self.security_protocol.startswith("SASL") and not (
                self.sasl_username and self.sasl_password):
            raise ValueError(f"security_protocol {self.security_protocol} needs "
                             "CHURNGUARD_KAFKA__SASL_USERNAME and CHURNGUARD_KAFKA__SASL_PASSWORD")
        if (self.ssl_cert_file is None) != (self.ssl_key_file is None):
            raise ValueError("a client certificate needs its key: set both "
                             "CHURNGUARD_KAFKA__SSL_CERT_FILE and CHURNGUARD_KAFKA__SSL_KEY_FILE")
        return self

    @property
    def tls(self) -> bool:
        return self.security_protocol in ("SSL", "SASL_SSL")


@dataclass(frozen=True)
class KafkaLink:
    bootstrap: str
    security: KafkaSecurity = field(default_factory=KafkaSecurity)

    def client_options(self) -> dict[str, Any]:
        """The client settings of kafka-python (KafkaConsumer, KafkaProducer,
        KafkaAdminClient) and of aiokafka (AIOKafkaProducer, AIOKafkaConsumer): both take
        these names."""
        options: dict[str, Any] = {"bootstrap_servers": self.bootstrap,
                                   "security_protocol": self.security.security_protocol}
        if self.security.tls:
            options["ssl_context"] = self.ssl_context()
        options.update(self._sasl())
        return options

    def tool_options(self, timeout_s: float = TOOL_TIMEOUT_S) -> dict[str, Any]:
        """client_options for a command's kafka-python client, which gives up on a broker it
        cannot reach (down, or refusing the link's security) after `timeout_s` instead of
        kafka-python's 30 s."""
        return {**self.client_options(), "bootstrap_timeout_ms": round(timeout_s * 1000)}

    def faust_credentials(self) -> Any:
        """faust's `broker_credentials` (None: plaintext)."""
        import faust

        security = self.security
        if security.security_protocol.startswith("SASL"):
            return faust.SASLCredentials(
                username=security.sasl_username,
                password=_secret(security.sasl_password),
                mechanism=security.sasl_mechanism,
                ssl_context=self.ssl_context() if security.tls else None)
        if security.tls:
            return faust.SSLCredentials(self.ssl_context())
        return None

    def ssl_context(self) -> ssl.SSLContext:
        security = self.security
        try:
            context = ssl.create_default_context(
                cafile=None if security.ssl_ca_file is None else str(security.ssl_ca_file))
            context.check_hostname = security.ssl_check_hostname
            if not security.ssl_check_hostname:
                context.verify_mode = ssl.CERT_REQUIRED  # the chain is still checked
            if security.ssl_cert_file is not None and security.ssl_key_file is not None:
                context.load_cert_chain(str(security.ssl_cert_file), str(security.ssl_key_file),
                                        password=_secret(security.ssl_key_password))
        except (OSError, ssl.SSLError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            files = ", ".join(str(p) for p in (security.ssl_ca_file, security.ssl_cert_file,
                                               security.ssl_key_file) if p is not None)
            raise UserError(f"Kafka TLS: cannot load {files or 'the system CA store'} "
                            f"({reason}); check CHURNGUARD_KAFKA__SSL_CA_FILE, "
                            "SSL_CERT_FILE, SSL_KEY_FILE and SSL_KEY_PASSWORD") from None
        return context

    def send_one(self, topic: str, key: bytes | None, value: bytes) -> None:
        """One record, acknowledged by every in-sync replica (a command's write, kafka-python);
        raises kafka-python's KafkaError."""
        from kafka import KafkaProducer

        producer = KafkaProducer(**self.client_options(), acks="all")
        try:
            producer.send(topic, key=key, value=value).get(timeout=30)
        finally:
            producer.close(timeout=5)

    def _sasl(self) -> dict[str, Any]:
        security = self.security
        if not security.security_protocol.startswith("SASL"):
            return {}
        return {"sasl_mechanism": security.sasl_mechanism,
                "sasl_plain_username": security.sasl_username,
                "sasl_plain_password": _secret(security.sasl_password)}

    def unreachable_hint(self) -> str:
        """What to check when the brokers did not answer."""
        if self.security.security_protocol == "PLAINTEXT":
            return ("check that it runs and --broker / CHURNGUARD_BROKER; if its listener "
                    "wants TLS or SASL, set CHURNGUARD_KAFKA__SECURITY_PROTOCOL "
                    "(docs/security.md)")
        return (f"check that it runs, --broker / CHURNGUARD_BROKER, and that its listener "
                f"speaks {self.security.security_protocol} with these credentials "
                "(CHURNGUARD_KAFKA__*, docs/security.md)")


def link_of(where: KafkaLink | str) -> KafkaLink:
    """A link, or plaintext to a bootstrap string (tests, the embedded broker)."""
    return where if isinstance(where, KafkaLink) else KafkaLink(where)


def _secret(value: SecretStr | None) -> str | None:
    return None if value is None else value.get_secret_value()
