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
INTERMEDIATE_NAME = "BEMS Exchange Simulator Issuing CA"
INTERMEDIATE_EXPIRES_IN = timedelta(days=30)  # before the leaf's 90 days
NOT_YET_VALID_FOR = timedelta(days=2)


# OpenSSL's X509_V_FLAG_NO_CHECK_TIME, which Python's ssl.VerifyFlags does not name.
_NO_CHECK_TIME = 0x200000


class CertificateVariant(StrEnum):
    VALID = "valid"
    EXPIRED = "expired"
    NOT_YET_VALID = "not-yet-valid"
    WRONG_HOST = "wrong-host"
    UNTRUSTED = "untrusted"
    # Leaf and intermediate presented together, the intermediate expiring first (in 30 days) or expired.
    INTERMEDIATE_EXPIRES_FIRST = "intermediate-expires-first"
    INTERMEDIATE_EXPIRED = "intermediate-expired"


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
        self._client_issuer = trusted  # a user CA of its own: rotate() renews the servers' CA only
        self._directory = directory
        self._ip_address = ip_address
        self._contexts: dict[tuple[str, CertificateVariant, bool], ssl.SSLContext] = {}
        self._end_point_hashes: dict[ssl.SSLContext, bytes] = {}

    def context(
        self, endpoint: str, hostnames: list[str], variant: CertificateVariant, ask_client_certificate: bool = False
    ) -> ssl.SSLContext:
        """The endpoint's context; ``ask_client_certificate``: one that asks for a client certificate in the
        handshake and takes any from ``client_issuers``, whatever its dates (IIS judges them: ``onprem_auth``)."""
        key = (endpoint, variant, ask_client_certificate)
        if key not in self._contexts:
            cert_pem, key_pem = self._issue(hostnames, variant)
            path = self._directory / f"{endpoint}-{variant}.pem"
            write_private_file(path, cert_pem + key_pem)
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.load_cert_chain(path)
            if ask_client_certificate:
                context.verify_mode = ssl.CERT_OPTIONAL
                context.load_verify_locations(cadata=b"".join(ca.cert_pem for ca in self.client_issuers).decode())
                context.verify_flags |= _NO_CHECK_TIME
            self._contexts[key] = context
            self._end_point_hashes[context] = tls_server_end_point(x509.load_pem_x509_certificate(cert_pem))
        return self._contexts[key]

    def end_point_hash(self, context: ssl.SSLContext) -> bytes:
        """The RFC 5929 hash of the certificate that ``context`` (one of ours) presents.

        Python cannot read a server's own certificate off a connection, so a connection's context,
        which ``ssl_object.context`` gives, is the way back to it.
        """
        return self._end_point_hashes[context]

    @property
    def client_issuers(self) -> tuple[CertificateAuthority, CertificateAuthority]:
        """The CAs whose client certificates the handshake takes: the issuing one, and the one nobody is told
        about, whose certificates IIS then refuses as untrusted (403.16), as HTTP.sys takes any."""
        return self._client_issuer, self._untrusted

    def rotate(self, trusted: CertificateAuthority) -> None:
        """Issue every later certificate from ``trusted``, as after a CA rotation; endpoints pick the new
        certificates up when their listener restarts."""
        self._trusted = trusted
        self._contexts.clear()  # the hashes of the old contexts stay: their connections may still ask

    def _issue(self, right_names: list[str], variant: CertificateVariant) -> tuple[bytes, bytes]:
        now = datetime.now(UTC)
        match variant:
            case CertificateVariant.VALID:
                return self._trusted.issue(right_names, [self._ip_address])
            case CertificateVariant.EXPIRED:
                return self._trusted.issue(
                    right_names,
                    [self._ip_address],
                    not_before=now - timedelta(days=91),
                    not_after=now - timedelta(days=1),
                )
            case CertificateVariant.NOT_YET_VALID:  # with an intermediate that is valid: the leaf is the one
                return self._trusted.intermediate(INTERMEDIATE_NAME).issue(
                    right_names,
                    [self._ip_address],
                    not_before=now + NOT_YET_VALID_FOR,
                    not_after=now + NOT_YET_VALID_FOR + timedelta(days=90),
                )
            case CertificateVariant.WRONG_HOST:
                return self._trusted.issue([WRONG_HOSTNAME])
            case CertificateVariant.UNTRUSTED:
                return self._untrusted.issue(right_names, [self._ip_address])
            case CertificateVariant.INTERMEDIATE_EXPIRES_FIRST:
                issuing = self._trusted.intermediate(INTERMEDIATE_NAME, not_after=now + INTERMEDIATE_EXPIRES_IN)
                return issuing.issue(right_names, [self._ip_address])
            case CertificateVariant.INTERMEDIATE_EXPIRED:
                issuing = self._trusted.intermediate(
                    INTERMEDIATE_NAME, not_before=now - timedelta(days=365), not_after=now - timedelta(days=1)
                )
                return issuing.issue(right_names, [self._ip_address])


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
