"""Kafka over TLS for the integration tests: a throw-away CA and a server certificate for
localhost / 127.0.0.1 (the `cryptography` package), and the embedded Tansu broker
(plaintext) behind Debian's stunnel4 as the TLS terminator, Tansu advertising stunnel's
port so that every connection a client makes after the bootstrap goes through TLS too."""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from connectors.embedded_broker import EmbeddedBroker, free_port, start_broker
from connectors.kafka_link import KafkaSecurity

STUNNEL = Path("/usr/bin/stunnel4")  # Debian's `stunnel4` package
READY_TIMEOUT_S = 20.0


def require_stunnel() -> None:
    """Skip (saying what to install) when stunnel4 is missing."""
    if not STUNNEL.exists():
        pytest.skip(f"no {STUNNEL}: install Debian's stunnel4 package (apt-get install "
                    "stunnel4) to run the Kafka-over-TLS tests")


# -- certificates ------------------------------------------------------------------------

@dataclass(frozen=True)
class Issuer:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "churnguard tests"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _validity(builder: x509.CertificateBuilder) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return builder.not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(
        now + datetime.timedelta(days=2))


def make_ca(common_name: str) -> Issuer:
    key = ec.generate_private_key(ec.SECP256R1())
    builder = _validity(x509.CertificateBuilder()
                        .subject_name(_name(common_name)).issuer_name(_name(common_name))
                        .public_key(key.public_key())
                        .serial_number(x509.random_serial_number()))
    cert = (builder
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
    return Issuer(key, cert)


def issue(ca: Issuer, common_name: str, *, server: bool,
          dns: tuple[str, ...] = (), ips: tuple[str, ...] = ()) -> Issuer:
    """A leaf certificate signed by `ca` (a server's with its SANs, or a client's)."""
    key = ec.generate_private_key(ec.SECP256R1())
    builder = _validity(x509.CertificateBuilder()
                        .subject_name(_name(common_name)).issuer_name(ca.cert.subject)
                        .public_key(key.public_key())
                        .serial_number(x509.random_serial_number()))
    builder = (builder
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage(
                   [ExtendedKeyUsageOID.SERVER_AUTH if server
                    else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                   ca.key.public_key()), critical=False))
    names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    names += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return Issuer(key, builder.sign(ca.key, hashes.SHA256()))


def _write_cert(path: Path, cert: x509.Certificate) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> Path:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)
    return path


@dataclass(frozen=True)
class Pki:
    """PEM files: the test CA, the server's certificate and key (SAN DNS:localhost,
    IP:127.0.0.1), a client certificate and key of the same CA, and an unrelated CA (a
    client trusting only it must refuse the server)."""

    ca_file: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca_file: Path


def write_pki(directory: Path) -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    ca = make_ca("churnguard test CA")
    server = issue(ca, "localhost", server=True, dns=("localhost",), ips=("127.0.0.1",))
    client = issue(ca, "churnguard test client", server=False)
    other = make_ca("an unrelated CA")
    return Pki(
        ca_file=_write_cert(directory / "ca.pem", ca.cert),
        server_cert=_write_cert(directory / "server.pem", server.cert),
        server_key=_write_key(directory / "server.key", server.key),
        client_cert=_write_cert(directory / "client.pem", client.cert),
        client_key=_write_key(directory / "client.key", client.key),
        other_ca_file=_write_cert(directory / "other-ca.pem", other.cert),
    )


# -- stunnel -----------------------------------------------------------------------------

@dataclass
class Stunnel:
    """stunnel4 in the foreground, in its own session: TLS on `port`, plaintext to
    `target`."""

    port: int
    target: int
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def accepted(self) -> int:
        """Connections stunnel accepted and handed on to the broker (TLS handshakes done)."""
        return self.log().count("connected remote server")

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)


def start_stunnel(directory: Path, pki: Pki, port: int, target: int) -> Stunnel:
    directory.mkdir(parents=True, exist_ok=True)
    log_path = directory / "stunnel.log"
    config = directory / "stunnel.conf"
    config.write_text("\n".join([
        "foreground = yes",
        "pid =",
        "syslog = no",
        f"output = {log_path}",
        "debug = info",  # "connected remote server" lines: what accepted() counts
        "[kafka]",
        f"accept = 127.0.0.1:{port}",
        f"connect = 127.0.0.1:{target}",
        f"cert = {pki.server_cert}",
        f"key = {pki.server_key}",
        "",
    ]))
    with (directory / "stunnel.stderr").open("wb") as stderr:
        process = subprocess.Popen(
            [str(STUNNEL), str(config)], stdout=subprocess.DEVNULL, stderr=stderr,
            stdin=subprocess.DEVNULL, start_new_session=True)
    tunnel = Stunnel(port=port, target=target, process=process, log_path=log_path)
    try:
        _wait_handshake(tunnel, pki.ca_file)
    except BaseException:
        tunnel.stop()
        raise
    return tunnel


def _wait_handshake(tunnel: Stunnel, ca_file: Path) -> None:
    """Until a TLS handshake on the port succeeds with the test CA and host name check."""
    context = ssl.create_default_context(cafile=str(ca_file))
    deadline = time.monotonic() + READY_TIMEOUT_S
    last: Exception | None = None
    while time.monotonic() < deadline:
        if tunnel.process.poll() is not None:
            raise RuntimeError(
                f"stunnel exited with code {tunnel.process.returncode}: {tunnel.log()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", tunnel.port), timeout=1) as raw, \
                    context.wrap_socket(raw, server_hostname="127.0.0.1"):
                return
        except (OSError, ssl.SSLError) as exc:
            last = exc
        time.sleep(0.05)  # polling a socket that has no readiness event to await
    raise TimeoutError(f"stunnel did not complete a TLS handshake on {tunnel.port} within "
                       f"{READY_TIMEOUT_S}s ({last!r}); its log: {tunnel.log_path}")


# -- the broker behind it ----------------------------------------------------------------

@dataclass
class TlsBroker:
    """Tansu on a plaintext port nobody is given, stunnel on `tls_port` in front of it."""

    broker: EmbeddedBroker
    tunnel: Stunnel
    pki: Pki

    @property
    def tls_port(self) -> int:
        return self.tunnel.port

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.tls_port}"

    @property
    def url(self) -> str:
        return f"kafka://{self.bootstrap}"

    @property
    def plaintext_port(self) -> int:
        return self.broker.port

    def security(self, *, ca_file: Path | None = None, **fields: object) -> KafkaSecurity:
        return KafkaSecurity(security_protocol="SSL",
                             ssl_ca_file=ca_file or self.pki.ca_file, **fields)

    def stop(self) -> None:
        self.tunnel.stop()
        self.broker.stop()


@contextlib.contextmanager
def tls_broker(directory: Path) -> Iterator[TlsBroker]:
    """The certificates, Tansu advertising the TLS port, stunnel on it; stopped after."""
    require_stunnel()
    pki = write_pki(directory / "pki")
    tls_port = free_port()
    broker = start_broker(advertised=f"127.0.0.1:{tls_port}")
    try:
        tunnel = start_stunnel(directory / "stunnel", pki, tls_port, broker.port)
    except BaseException:
        broker.stop()
        raise
    running = TlsBroker(broker=broker, tunnel=tunnel, pki=pki)
    try:
        yield running
    finally:
        running.stop()


def security_env(security: KafkaSecurity) -> dict[str, str]:
    """CHURNGUARD_KAFKA__* for these settings (the commands read them from the
    environment)."""
    env = {"CHURNGUARD_KAFKA__SECURITY_PROTOCOL": security.security_protocol,
           "CHURNGUARD_KAFKA__SSL_CHECK_HOSTNAME": str(security.ssl_check_hostname).lower()}
    for name in ("ssl_ca_file", "ssl_cert_file", "ssl_key_file"):
        value = getattr(security, name)
        if value is not None:
            env[f"CHURNGUARD_KAFKA__{name.upper()}"] = str(value)
    return env
