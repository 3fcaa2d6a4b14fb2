"""A throwaway certificate authority for the TLS tests (Kafka SASL_SSL, PostgreSQL ssl=on).

Why: clients must be tested the way users run them, verifying the server's certificate
against a CA (``verify-full``: chain and host name). The tests make their own CA and server
certificates (SAN 127.0.0.1 and localhost) with the ``cryptography`` package, so nothing
depends on the machine's trust store or on ``openssl`` command-line quirks.

Usage::

    ca = CertificateAuthority.create(tmp_dir)
    cert = ca.issue_server_cert(tmp_dir, "kafka")
    # cert.cert_file / cert.key_file for the server, cert.ca_file (== ca.cert_file) for clients
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_HOSTS: tuple[str, ...] = ("127.0.0.1", "localhost")
"""Names a test server certificate is valid for: the harness's loopback address and name."""

_VALIDITY = dt.timedelta(days=30)
_CLOCK_SKEW = dt.timedelta(hours=1)


@dataclass(frozen=True)
class ServerCert:
    """PEM files of a server certificate: leaf cert, unencrypted PKCS#8 key, issuing CA."""

    cert_file: Path
    key_file: Path
    ca_file: Path

    def key_pem(self) -> str:
        """The private key as PEM text (Kafka takes it inline: ``ssl.keystore.key``)."""
        return self.key_file.read_text()

    def cert_pem(self) -> str:
        """The certificate as PEM text (Kafka: ``ssl.keystore.certificate.chain``)."""
        return self.cert_file.read_text()


def _name(common_name: str) -> x509.Name:
    """An X.509 name with only a common name."""
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    """Write ``key`` as unencrypted PKCS#8 PEM, readable by its owner only."""
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _san(host: str) -> x509.GeneralName:
    """A subjectAltName entry: an IP address if ``host`` is one, else a DNS name."""
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


class CertificateAuthority:
    """A self-signed CA (EC P-256) whose key stays in memory to sign server certificates."""

    def __init__(self, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey, cert_file: Path):
        """Wrap an existing CA; use `create` to make one."""
        self.cert = cert
        self.key = key
        self.cert_file = cert_file
        """The CA certificate (PEM): what clients trust (``ssl.ca.location``, ``cafile``)."""

    @classmethod
    def create(cls, directory: Path, name: str = "data-ingest test CA") -> CertificateAuthority:
        """Make a new CA and write its certificate to ``directory/<slug>-ca.pem``."""
        directory.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(_name(name))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _CLOCK_SKEW)
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256())
        )
        cert_file = directory / f"{name.lower().replace(' ', '-')}-ca.pem"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cls(cert, key, cert_file)

    def issue_server_cert(
        self, directory: Path, name: str, hosts: Sequence[str] = DEFAULT_HOSTS
    ) -> ServerCert:
        """Sign a server certificate for ``hosts``; write ``<name>.pem`` and ``<name>-key.pem``."""
        directory.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        ca_ski = self.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(hosts[0]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _CLOCK_SKEW)
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=True,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName([_san(h) for h in hosts]), critical=False)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        cert_file = directory / f"{name}.pem"
        key_file = directory / f"{name}-key.pem"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(key, key_file)
        return ServerCert(cert_file=cert_file, key_file=key_file, ca_file=self.cert_file)
