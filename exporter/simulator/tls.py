"""Server-side TLS material: which certificate each endpoint presents, per certificate fault."""

from __future__ import annotations

import ssl
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from .files import write_private_file
from .pki import CertificateAuthority

LOOPBACK_HOSTNAME = "localhost"
WRONG_HOSTNAME = "wrong-host.example.test"


class CertificateVariant(StrEnum):
    VALID = "valid"
    EXPIRED = "expired"
    WRONG_HOST = "wrong-host"
    UNTRUSTED = "untrusted"


class ServerCertificates:
    """Issues each endpoint's certificates on first use and keeps one SSL context per variant.

    Correct certificates name the endpoint's ``hostnames`` and ``ip_address``.

    ``ssl.SSLContext.load_cert_chain`` only reads files, so every certificate and its key are written
    (mode 0600) under ``directory``, where they can also be inspected with ``openssl x509``.
    """

    def __init__(
        self, trusted: CertificateAuthority, untrusted: CertificateAuthority, directory: Path, ip_address: str
    ) -> None:
        self._trusted = trusted
        self._untrusted = untrusted
        self._directory = directory
        self._ip_address = ip_address
        self._contexts: dict[tuple[str, CertificateVariant], ssl.SSLContext] = {}
        self._end_point_hashes: dict[ssl.SSLContext, bytes] = {}

    def context(self, endpoint: str, hostnames: list[str], variant: CertificateVariant) -> ssl.SSLContext:
        key = (endpoint, variant)
        if key not in self._contexts:
            cert_pem, key_pem = self._issue(hostnames, variant)
            path = self._directory / f"{endpoint}-{variant}.pem"
            write_private_file(path, cert_pem + key_pem)
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.load_cert_chain(path)
            self._contexts[key] = context
            self._end_point_hashes[context] = tls_server_end_point(x509.load_pem_x509_certificate(cert_pem))
        return self._contexts[key]

    def end_point_hash(self, context: ssl.SSLContext) -> bytes:
        """The RFC 5929 hash of the certificate that ``context`` (one of ours) presents.

        Python cannot read a server's own certificate off a connection, so a connection's context,
        which ``ssl_object.context`` gives, is the way back to it.
        """
        return self._end_point_hashes[context]

    def _issue(self, right_names: list[str], variant: CertificateVariant) -> tuple[bytes, bytes]:
        match variant:
            case CertificateVariant.VALID:
                return self._trusted.issue(right_names, [self._ip_address])
            case CertificateVariant.EXPIRED:
                now = datetime.now(UTC)
                return self._trusted.issue(
                    right_names,
                    [self._ip_address],
                    not_before=now - timedelta(days=91),
                    not_after=now - timedelta(days=1),
                )
            case CertificateVariant.WRONG_HOST:
                return self._trusted.issue([WRONG_HOSTNAME])
            case CertificateVariant.UNTRUSTED:
                return self._untrusted.issue(right_names, [self._ip_address])


def tls_server_end_point(certificate: x509.Certificate) -> bytes:
    """RFC 5929 ``tls-server-end-point``: the DER certificate hashed with its signature's hash algorithm.

    MD5 and SHA-1 are replaced by SHA-256, as is a signature without a separate hash (Ed25519).
    """
    algorithm = certificate.signature_hash_algorithm
    if algorithm is None or isinstance(algorithm, hashes.MD5 | hashes.SHA1):
        algorithm = hashes.SHA256()
    digest = hashes.Hash(algorithm)
    digest.update(certificate.public_bytes(serialization.Encoding.DER))
    return digest.finalize()
