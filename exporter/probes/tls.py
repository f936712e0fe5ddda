"""``tls``: the TLS handshake completes, the chain verifies against the system store or
``defaults.tls.ca_file``, and the certificate names the host. Reports the earliest ``notAfter`` of the
chain the server presented and the negotiated protocol version.
"""

from __future__ import annotations

import _ssl
import functools
import ssl
from datetime import UTC, datetime

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


@functools.lru_cache(maxsize=4096)
def _parse(der: bytes) -> x509.Certificate:
    # The same few certificates come back on every run: parse each once.
    return x509.load_der_x509_certificate(der)


def _presented_chain(ssl_object: ssl.SSLObject) -> list[x509.Certificate]:
    chain_fn = getattr(ssl_object, "get_unverified_chain", None)  # public from Python 3.13
    if chain_fn is None:
        chain_fn = ssl_object._sslobj.get_unverified_chain  # type: ignore[attr-defined]
    ders = []
    for cert in chain_fn() or ():
        ders.append(cert if isinstance(cert, bytes) else cert.public_bytes(_ssl.ENCODING_DER))
    if not ders:  # a server that sent nothing would have failed the handshake; keep the leaf anyway
        leaf = ssl_object.getpeercert(binary_form=True)
        ders = [leaf] if leaf else []
    return [_parse(der) for der in ders]


def _names(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [attr.value for attr in cert.subject if attr.oid == x509.NameOID.COMMON_NAME]  # type: ignore[misc]
    return [str(name) for name in san.get_values_for_type(x509.DNSName)] + [
        str(ip) for ip in san.get_values_for_type(x509.IPAddress)
    ]


def _certificate_hint(err: ssl.SSLCertVerificationError, where: str, chain: list[x509.Certificate]) -> str:
    leaf = chain[0] if chain else None
    if err.verify_code == _EXPIRED and leaf is not None:
        return f"renew the certificate on {where}: it expired on {leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
    if err.verify_code == _NOT_YET_VALID and leaf is not None:
        return f"the certificate on {where} is valid only from {leaf.not_valid_before_utc:%Y-%m-%d}: check clocks"
    if err.verify_code in (_HOST_MISMATCH, _IP_MISMATCH):
        names = ", ".join(_names(leaf)) if leaf is not None else "other names"
        return f"the certificate on {where} is for {names}: install one whose subjectAltName includes the host"
    return (
        f"the chain presented on {where} does not lead to a trusted root: install the intermediate "
        "certificates on the server, or point defaults.tls.ca_file at your internal CA"
    )


async def _handshake(conn: net.Connection, ctx: ProbeContext, host: str, verify: bool) -> ssl.SSLObject:
    await conn.writer.start_tls(ctx.ssl_context(verify), server_hostname=host, ssl_handshake_timeout=ctx.timeout)
    return conn.writer.get_extra_info("ssl_object")


async def _unverified_chain(target: Target, ctx: ProbeContext) -> list[x509.Certificate]:
    """After a verification failure, look at what the server presents, for the hint and the expiry."""
    scratch = type(ctx.rec)(target.name, ctx.rec.check)  # its steps are not part of the report
    conn = await net.connect(target.host, target.port, ctx.proxy(target), scratch)
    try:
        return _presented_chain(await _handshake(conn, ctx, target.host, verify=False))
    except (ssl.SSLError, OSError):
        return []
    finally:
        conn.writer.transport.abort()


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
                ssl_object = await _handshake(conn, ctx, target.host, verify=True)
            except ssl.SSLCertVerificationError as err:
                chain = await _unverified_chain(target, ctx)
                if chain:
                    ctx.rec.measure(CERT_EXPIRY.name, min(c.not_valid_after_utc for c in chain).timestamp())
                raise ProbeFailure(
                    Reason.CERTIFICATE,
                    f"certificate rejected: {err.verify_message}",
                    _certificate_hint(err, where, chain),
                ) from None
            except (ssl.SSLError, ConnectionError) as err:
                raise ProbeFailure(
                    Reason.TLS,
                    f"TLS handshake failed: {getattr(err, 'reason', None) or err}",
                    f"check that {where} speaks TLS 1.2 or later (is it plain HTTP, or a TLS-inspecting device?)",
                ) from None
            chain = _presented_chain(ssl_object)
            earliest = min(chain, key=lambda c: c.not_valid_after_utc)
            version = ssl_object.version() or "unknown"
            detail.append(
                f"{version}, certificate for {', '.join(_names(chain[0]))}, chain expires "
                f"{earliest.not_valid_after_utc:%Y-%m-%d} ({_days_left(earliest)} days)"
            )
    finally:
        conn.writer.transport.abort()
    ctx.rec.measure(HANDSHAKE.name, ctx.rec.steps[-1].seconds)
    ctx.rec.measure(CERT_EXPIRY.name, earliest.not_valid_after_utc.timestamp())
    ctx.rec.measure(VERSION.name, 1, version=version)
    return ctx.rec.passed()


def _days_left(cert: x509.Certificate) -> int:
    return (cert.not_valid_after_utc - datetime.now(UTC)).days


CHECK = Check("tls", probe, every_target, (HANDSHAKE, CERT_EXPIRY, VERSION))
