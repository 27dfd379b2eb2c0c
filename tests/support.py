"""Helpers shared by the test tiers: servers on free ports, certificates, metrics scraping."""

from __future__ import annotations

import datetime
import ipaddress
import re
import socket
import urllib.request
from pathlib import Path

from benchmarks.echo import (  # noqa: F401 (re-export)
    ECHO_SERVICE,
    echo_bytes_stub,
    echo_chunk_bytes_stub,
    echo_service,
    echo_stubs,
)
from services.models.vae import VAE_CONFIGS

SMALL_LATENT_CHANNELS = VAE_CONFIGS["small"]["latent_channels"]
"""Latent channels of the seeded small VAE that services load without trained weights."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(metrics_port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as reply:
        return reply.read().decode()


def metric_value(text: str, name: str, **labels: str) -> float:
    """Value of one sample in Prometheus text format (0.0 when absent)."""
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line[: line.rindex("}")]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def make_certificates(directory: Path) -> dict[str, Path]:
    """A CA, a server certificate for localhost/127.0.0.1 and a client certificate (PEM)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def key():
        return ec.generate_private_key(ec.SECP256R1())

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def cert(subject_key, cn, issuer_key, issuer_name, ca=False, san=None):
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(cn))
            .issuer_name(issuer_name)
            .public_key(subject_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key = key()
    ca_cert = cert(ca_key, "genaug-test-ca", ca_key, name("genaug-test-ca"), ca=True)
    server_key, client_key = key(), key()
    san = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    server_cert = cert(server_key, "localhost", ca_key, ca_cert.subject, san=san)
    client_cert = cert(client_key, "genaug-test-client", ca_key, ca_cert.subject)

    paths = {}
    for label, obj in (("ca", ca_cert), ("server", server_cert), ("client", client_cert)):
        paths[f"{label}_cert"] = directory / f"{label}.crt"
        paths[f"{label}_cert"].write_bytes(obj.public_bytes(serialization.Encoding.PEM))
    for label, obj in (("server", server_key), ("client", client_key)):
        paths[f"{label}_key"] = directory / f"{label}.key"
        paths[f"{label}_key"].write_bytes(
            obj.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return paths


def report_lines(config, title: str, lines: list[str]) -> None:
    """Print `lines` under a `title` rule in pytest's output, even with capturing on (figures
    that `make test` and `make soak` show)."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        return
    capture = config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled():
        reporter.ensure_newline()
        reporter.write_sep("-", title)
        for line in lines:
            reporter.write_line(line)
