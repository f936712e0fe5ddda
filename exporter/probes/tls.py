"""``tls``: the TLS handshake completes, the chain verifies against the system store or
``defaults.tls.ca_file``, and the certificate names the host. Reports the earliest ``notAfter`` of the
chain the server presented and the negotiated protocol version.
"""

from __future__ import annotations

import _ssl
import functools
import ssl
import time
from dataclasses import dataclass

from cryptography import x509

from .. import net
from ..config import Target
from ..metrics import MetricSpec
from ..results import CheckResult, ProbeFailure, Reason
from .base import Check, ProbeContext, every_target

HANDSHAKE = MetricSpec("bems_tls_handshake_seconds", "Time the last TLS check took for the handshake.")
CERT_EXPIRY = MetricSpec(
    "bems_tls_cert_expiry_timestamp_seconds",
    "Earliest notAfter (Unix time) of the certificate chain the endpoint presented in the last TLS check.",
)
VERSION = MetricSpec(
    "bems_tls_version_info", "TLS protocol version negotiated in the last TLS check.", "info", ("version",)
)

# OpenSSL verify codes (x509_vfy.h) that call for different remedies.
_EXPIRED, _NOT_YET_VALID = 10, 9
_HOST_MISMATCH, _IP_MISMATCH = 62, 64


@dataclass(frozen=True, slots=True)
class Chain:
    """What the check reports of a presented chain: the leaf first."""

    certificates: tuple[x509.Certificate, ...]
    names: tuple[str, ...]  # the leaf's DNS names and IP addresses
    expires_at: float  # the earliest notAfter in the chain, Unix time
    described: str  # the report's line, short of the days left

    @property
    def leaf(self) -> x509.Certificate:
        return self.certificates[0]


@functools.lru_cache(maxsize=1024)
def _summarise(ders: tuple[bytes, ...]) -> Chain:
    # A server presents the same chain on every run: parse and summarise it once.
    certificates = tuple(x509.load_der_x509_certificate(der) for der in ders)
    names = tuple(_names(certificates[0]))
    earliest = min(c.not_valid_after_utc for c in certificates)
    described = f"certificate for {', '.join(names)}, chain expires {earliest:%Y-%m-%d}"
    return Chain(certificates, names, earliest.timestamp(), described)


def _presented_chain(ssl_object: ssl.SSLObject) -> Chain:
    chain_fn = getattr(ssl_object, "get_unverified_chain", None)  # public from Python 3.13
    if chain_fn is None:
        chain_fn = ssl_object._sslobj.get_unverified_chain  # type: ignore[attr-defined]
    ders = tuple(cert if isinstance(cert, bytes) else cert.public_bytes(_ssl.ENCODING_DER) for cert in chain_fn() or ())
    if not ders:  # a server that sent nothing would have failed the handshake; keep the leaf anyway
        leaf = ssl_object.getpeercert(binary_form=True)
        if not leaf:
            raise ssl.SSLError("the server presented no certificate")
        ders = (leaf,)
    return _summarise(ders)


def _names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [attr.value for attr in cert.subject if attr.oid == x509.NameOID.COMMON_NAME]  # type: ignore[misc]
    return [str(name) for name in san.get_values_for_type(x509.DNSName)] + [
        str(ip) for ip in san.get_values_for_type(x509.IPAddress)
    ]


def _certificate_hint(err: ssl.SSLCertVerificationError, where: str, chain: Chain | None) -> str:
    leaf = chain.leaf if chain is not None else None
    if err.verify_code == _EXPIRED and leaf is not None:
        return f"renew the certificate on {where}: it expired on {leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
    if err.verify_code == _NOT_YET_VALID and leaf is not None:
        return f"the certificate on {where} is valid only from {leaf.not_valid_before_utc:%Y-%m-%d}: check clocks"
    if err.verify_code in (_HOST_MISMATCH, _IP_MISMATCH):
        names = ", ".join(chain.names) if chain is not None else "other names"
        return f"the certificate on {where} is for {names}: install one whose subjectAltName includes the host"
    return (
        f"the chain presented on {where} does not lead to a trusted root: install the intermediate "
        "certificates on the server, or point defaults.tls.ca_file at your internal CA"
    )


async def _unverified_chain(target: Target, ctx: ProbeContext) -> Chain | None:
    """After a verification failure, look at what the server presents, for the hint and the expiry."""
    scratch = type(ctx.rec)(target.name, ctx.rec.check)  # its steps are not part of the report
    conn = await net.connect(target.host, target.port, ctx.proxy(target), scratch)
    try:
        return _presented_chain(await net.tls_handshake(conn, ctx.ssl_context(verify=False), target.host))
    except (ssl.SSLError, OSError):
        return None
    finally:
        conn.close()


async def probe(target: Target, ctx: ProbeContext) -> CheckResult:
    where = f"{target.host}:{target.port}"
    conn = await net.connect(target.host, target.port, ctx.proxy(target), ctx.rec)
    try:
        async with ctx.rec.step(
            f"TLS handshake with {where}",
            f"{where} accepts connections but does not complete the TLS handshake: an overloaded server, "
            "or a device in the path that holds connections",
        ) as detail:
            try:
                ssl_object = await net.tls_handshake(conn, ctx.ssl_context(), target.host)
                chain = _presented_chain(ssl_object)
            except ssl.SSLCertVerificationError as err:
                rejected = await _unverified_chain(target, ctx)
                if rejected is not None:
                    ctx.rec.measure(CERT_EXPIRY.name, rejected.expires_at)
                raise ProbeFailure(
                    Reason.CERTIFICATE,
                    f"certificate rejected: {err.verify_message}",
                    _certificate_hint(err, where, rejected),
                ) from None
            except (ssl.SSLError, ConnectionError) as err:
                raise ProbeFailure(
                    Reason.TLS,
                    f"TLS handshake failed: {getattr(err, 'reason', None) or err}",
                    f"check that {where} speaks TLS 1.2 or later (is it plain HTTP, or a TLS-inspecting device?)",
                ) from None
            version = ssl_object.version() or "unknown"
            detail.append(f"{version}, {chain.described} ({(chain.expires_at - time.time()) // 86400:.0f} days)")
    finally:
        conn.close()
    ctx.rec.measure(HANDSHAKE.name, ctx.rec.steps[-1].seconds)
    ctx.rec.measure(CERT_EXPIRY.name, chain.expires_at)
    ctx.rec.measure(VERSION.name, 1, version=version)
    return ctx.rec.passed()


CHECK = Check("tls", probe, every_target, (HANDSHAKE, CERT_EXPIRY, VERSION))
