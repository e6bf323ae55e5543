"""The Kafka link's security settings (connectors/kafka_link.py) reach every client library
as its own options: kafka-python's, aiokafka's and faust's; passwords stay out of reprs
and error messages. (TLS end to end, over a real TLS terminator: tests/integration/
test_kafka_tls.py; the embedded broker has no SASL, so SASL is checked here.)"""

from __future__ import annotations

import datetime
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import SecretStr, ValidationError

from churnguard.errors import UserError
from connectors.kafka_link import KafkaLink, KafkaSecurity

PASSWORD = "s3cret-Password"


def _ca(tmp_path: Path) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "churnguard test CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    path = tmp_path / "ca.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def test_plaintext_is_the_default_and_adds_nothing() -> None:
    link = KafkaLink("127.0.0.1:9092")
    assert link.client_options() == {"bootstrap_servers": "127.0.0.1:9092",
                                   "security_protocol": "PLAINTEXT"}
    assert link.faust_credentials() is None


def test_tls_gives_every_client_one_context(tmp_path: Path) -> None:
    ca = _ca(tmp_path)
    link = KafkaLink("broker:9093", KafkaSecurity(security_protocol="SSL", ssl_ca_file=ca))
    for options in (link.client_options(),):
        assert options["security_protocol"] == "SSL"
        context = options["ssl_context"]
        assert isinstance(context, ssl.SSLContext)
        assert context.check_hostname
        assert context.verify_mode == ssl.CERT_REQUIRED
        assert "sasl_mechanism" not in options
    import faust

    assert isinstance(link.faust_credentials(), faust.SSLCredentials)
    unchecked = KafkaLink("broker:9093", KafkaSecurity(
        security_protocol="SSL", ssl_ca_file=ca, ssl_check_hostname=False))
    context = unchecked.client_options()["ssl_context"]
    assert not context.check_hostname
    assert context.verify_mode == ssl.CERT_REQUIRED  # the chain is still checked


def test_sasl_reaches_the_client_objects(tmp_path: Path) -> None:
    security = KafkaSecurity(security_protocol="SASL_SSL", ssl_ca_file=_ca(tmp_path),
                             sasl_mechanism="SCRAM-SHA-512", sasl_username="churnguard",
                             sasl_password=SecretStr(PASSWORD))
    link = KafkaLink("broker:9093", security)
    assert PASSWORD not in repr(security)
    assert PASSWORD not in str(security.model_dump())
    from kafka import KafkaConsumer

    # (api_version given: the consumer does not ask a broker for it when made.)
    consumer = KafkaConsumer(**link.client_options(), api_version=(2, 8, 0))
    try:
        assert (consumer.config["security_protocol"], consumer.config["sasl_mechanism"],
                consumer.config["sasl_plain_username"],
                consumer.config["sasl_plain_password"]) == (
            "SASL_SSL", "SCRAM-SHA-512", "churnguard", PASSWORD)
        assert isinstance(consumer.config["ssl_context"], ssl.SSLContext)
    finally:
        consumer.close()
    import faust

    credentials = link.faust_credentials()
    assert isinstance(credentials, faust.SASLCredentials)
    assert (credentials.username, credentials.password) == ("churnguard", PASSWORD)
    assert credentials.mechanism.value == "SCRAM-SHA-512"
    assert credentials.ssl_context is not None
    app = faust.App("link-test", broker="kafka://broker:9093", broker_credentials=credentials)
    assert app.conf.broker_credentials is credentials


async def test_aiokafka_takes_the_options() -> None:
    from aiokafka import AIOKafkaProducer

    link = KafkaLink("broker:9092", KafkaSecurity(
        security_protocol="SASL_PLAINTEXT", sasl_mechanism="SCRAM-SHA-256",
        sasl_username="u", sasl_password=SecretStr(PASSWORD)))
    producer = AIOKafkaProducer(**link.client_options())
    client = producer.client
    assert (client._security_protocol, client._sasl_mechanism, client._sasl_plain_username,
            client._sasl_plain_password) == ("SASL_PLAINTEXT", "SCRAM-SHA-256", "u", PASSWORD)
    await producer.stop()


def test_incomplete_settings_are_refused() -> None:
    with pytest.raises(ValidationError, match="needs CHURNGUARD_KAFKA__SASL_USERNAME"):
        KafkaSecurity(security_protocol="SASL_SSL")
    with pytest.raises(ValidationError, match="a client certificate needs its key"):
        KafkaSecurity(security_protocol="SSL", ssl_cert_file=Path("client.pem"))


def test_a_missing_ca_file_is_one_clear_error(tmp_path: Path) -> None:
    link = KafkaLink("broker:9093", KafkaSecurity(security_protocol="SSL",
                                                  ssl_ca_file=tmp_path / "nope.pem"))
    with pytest.raises(UserError, match=r"nope\.pem \(No such file or directory\); check "
                                        "CHURNGUARD_KAFKA__SSL_CA_FILE"):
        link.client_options()


def test_a_settings_error_never_echoes_the_password(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    from churnguard import cli

    monkeypatch.setenv("CHURNGUARD_KAFKA__SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("CHURNGUARD_KAFKA__SASL_USERNAME", "u")
    monkeypatch.setenv("CHURNGUARD_KAFKA__SASL_PASSWORD", PASSWORD)
    monkeypatch.setenv("CHURNGUARD_KAFKA__SASL_MECHANISM", "SCRAM-SHA-1")
    assert cli.main(["topics"]) == 2
    err = capsys.readouterr().err
    assert "CHURNGUARD_KAFKA__SASL_MECHANISM" in err
    assert PASSWORD not in err
    assert len(err.strip().splitlines()) == 1
