"""A throw-away certificate authority for the simulator's HTTPS endpoints.

EC P-256 keys keep key generation and TLS handshakes cheap, so a test can mint a fresh CA and a dozen
leaf certificates in a few milliseconds. Certificates follow what OpenSSL's strict verification
(``VERIFY_X509_STRICT``, the default from Python 3.13) insists on: critical BasicConstraints, AKI on
leaves, SKI on the CA, so clients verify them with stock settings.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Back-dated so that deliberately expired leaves still fall inside the issuer's own validity.
_CA_VALIDITY_BEFORE_NOW = timedelta(days=365)
_CA_VALIDITY_AFTER_NOW = timedelta(days=3650)
DEFAULT_LEAF_VALIDITY_BEFORE_NOW = timedelta(days=1)
DEFAULT_LEAF_VALIDITY_AFTER_NOW = timedelta(days=90)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _private_key_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _key_usage(*, signs_certificates: bool) -> x509.KeyUsage:
    # ECDSA keys only ever sign: digitalSignature for the TLS handshake, certSign/cRLSign for a CA.
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=signs_certificates,
        crl_sign=signs_certificates,
        encipher_only=False,
        decipher_only=False,
    )


@dataclass(frozen=True)
class CertificateAuthority:
    """A self-signed root, or an intermediate CA below one, that issues TLS server certificates."""

    certificate: x509.Certificate
    private_key: ec.EllipticCurvePrivateKey
    # What a server sends after its leaf: this CA and the intermediates above it, never the root.
    presented: tuple[x509.Certificate, ...] = ()

    @classmethod
    def create(cls, common_name: str) -> CertificateAuthority:
        key = _new_key()
        certificate = (
            _self_signed(key, common_name, _CA_VALIDITY_BEFORE_NOW, _CA_VALIDITY_AFTER_NOW)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(_key_usage(signs_certificates=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(certificate=certificate, private_key=key)

    @property
    def cert_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def intermediate(
        self, common_name: str, not_before: datetime | None = None, not_after: datetime | None = None
    ) -> CertificateAuthority:
        """An intermediate CA issued by this one, valid from ``not_before`` to ``not_after`` (by default as
        long as a root); the leaves it issues come with it, as a server presents them."""
        now = datetime.now(UTC)
        key = _new_key()
        certificate = (
            self._issued(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]), key)
            .not_valid_before(not_before or now - _CA_VALIDITY_BEFORE_NOW)
            .not_valid_after(not_after or now + _CA_VALIDITY_AFTER_NOW)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(signs_certificates=True), critical=True)
            .sign(self.private_key, hashes.SHA256())
        )
        return CertificateAuthority(certificate, key, (certificate, *self.presented))

    def _issued(self, subject: x509.Name, key: ec.EllipticCurvePrivateKey) -> x509.CertificateBuilder:
        """A builder for a certificate of ``key`` that this CA signs, with the key identifiers that chain it."""
        issuer_ski = self.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_ski), critical=False)
        )

    def issue(
        self,
        hostnames: list[str],
        ip_addresses: Iterable[IPAddress | str] = (),
        not_before: datetime | None = None,
        not_after: datetime | None = None,
    ) -> tuple[bytes, bytes]:
        """Issue a TLS server certificate; returns ``(cert_pem, key_pem)``, ``cert_pem`` followed by the
        intermediates a server presents with it.

        The first hostname becomes the subject CN (for humans reading ``openssl x509``); clients
        match only the SAN. Validity defaults to one day ago until 90 days from now.
        """
        if not hostnames:
            raise ValueError("a server certificate needs at least one hostname")
        alternative_names: list[x509.GeneralName] = [x509.DNSName(host) for host in hostnames]
        alternative_names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
        return self._leaf(hostnames[0], ExtendedKeyUsageOID.SERVER_AUTH, alternative_names, not_before, not_after)

    def issue_client(
        self, user_principal_name: str, not_before: datetime | None = None, not_after: datetime | None = None
    ) -> tuple[bytes, bytes]:
        """Issue a TLS client certificate for an account, as an enterprise CA's User template does: clientAuth,
        the user principal name in the subject CN and as an email SAN; returns ``(cert_pem, key_pem)``."""
        return self._leaf(
            user_principal_name, ExtendedKeyUsageOID.CLIENT_AUTH, [x509.RFC822Name(user_principal_name)],
            not_before, not_after,
        )  # fmt: skip

    def _leaf(
        self,
        common_name: str,
        usage: x509.ObjectIdentifier,
        alternative_names: list[x509.GeneralName],
        not_before: datetime | None,
        not_after: datetime | None,
    ) -> tuple[bytes, bytes]:
        now = datetime.now(UTC)
        key = _new_key()
        certificate = (
            self._issued(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]), key)
            .not_valid_before(not_before or now - DEFAULT_LEAF_VALIDITY_BEFORE_NOW)
            .not_valid_after(not_after or now + DEFAULT_LEAF_VALIDITY_AFTER_NOW)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(signs_certificates=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.SubjectAlternativeName(alternative_names), critical=False)
            .sign(self.private_key, hashes.SHA256())
        )
        chain_pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (certificate, *self.presented))
        return chain_pem, _private_key_pem(key)


def create_signing_certificate(common_name: str, validity: timedelta = timedelta(days=365)) -> tuple[bytes, bytes]:
    """A self-signed RSA certificate for signing JWTs, as an Entra app registration holds; returns PEMs.

    RSA, not EC: Entra accepts RS256/PS256 client assertions only, and those are what MSAL signs.
    """
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    certificate = _self_signed(key, common_name, DEFAULT_LEAF_VALIDITY_BEFORE_NOW, validity).sign(key, hashes.SHA256())
    return certificate.public_bytes(serialization.Encoding.PEM), _private_key_pem(key)


def _self_signed(
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, common_name: str, before: timedelta, after: timedelta
) -> x509.CertificateBuilder:
    """A builder for a certificate that names ``common_name`` as both subject and issuer."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - before)
        .not_valid_after(now + after)
    )
