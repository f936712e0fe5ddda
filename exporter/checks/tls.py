"""``tls``: the TLS handshake completes, the chain verifies against the system store or
``defaults.tls.ca_file``, and the certificate names the host. Reports the earliest ``notAfter`` of the
chain the server presented, the negotiated protocol version, and whether the public roots trust the
chain too (what cloud BEMS, which knows no internal CA, needs).
"""

from __future__ import annotations

import bisect
import functools
import ipaddress
import re
import ssl
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import certifi
from cryptography import x509
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509 import verification

from ..config import Target
from ..metrics import MetricSpec
from ..protocol import tcp_tls
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
PUBLICLY_TRUSTED = MetricSpec(
    "bems_tls_publicly_trusted",
    "1 if the chain the endpoint presented in the last TLS check, with its host name, also verifies against "
    "the public root store, else 0.",
)

# Python 3.13 made the presented chain public (SSLObject.get_unverified_chain, DER bytes); before it only the
# leaf is (getpeercert(binary_form=True)), and the check reads no private attribute to get more.
PRESENTED_CHAIN_IS_PUBLIC = hasattr(ssl.SSLObject, "get_unverified_chain")
VERDICTS_KEPT = 1024  # public-trust verdicts from a handshake, one per (leaf, host, roots): oldest dropped first

# OpenSSL verify codes (x509_vfy.h) that call for different remedies.
_EXPIRED, _NOT_YET_VALID = 10, 9
_HOST_MISMATCH, _IP_MISMATCH = 62, 64


@dataclass(frozen=True, slots=True)
class Chain:
    """What the check reports of a presented chain: the leaf first (the leaf alone before Python 3.13)."""

    certificates: tuple[x509.Certificate, ...]
    names: tuple[str, ...]  # the leaf's DNS names and IP addresses
    expires_at: float  # the earliest notAfter in the chain, Unix time
    described: str  # the report's line, short of the days left
    validity_changes: tuple[float, ...]  # every notBefore and notAfter in the chain, Unix time, in order

    @property
    def leaf(self) -> x509.Certificate:
        return self.certificates[0]

    def role(self, certificate: x509.Certificate) -> str:
        if certificate is self.leaf:
            return "certificate"
        return f"intermediate certificate {certificate.subject.rfc4514_string()}"

    def next_validity_change(self, now: float) -> float:
        """When the next certificate of the chain becomes valid or expires, after ``now``."""
        later = bisect.bisect_right(self.validity_changes, now)
        return self.validity_changes[later] if later < len(self.validity_changes) else float("inf")


@functools.lru_cache(maxsize=1024)
def _summarise(ders: tuple[bytes, ...]) -> Chain:
    # A server presents the same chain on every run: parse and summarise it once.
    certificates = tuple(x509.load_der_x509_certificate(der) for der in ders)
    names = tuple(_names(certificates[0]))
    earliest = min(c.not_valid_after_utc for c in certificates)
    described = f"certificate for {', '.join(names)}, chain expires {earliest:%Y-%m-%d}"
    changes = sorted(t.timestamp() for c in certificates for t in (c.not_valid_before_utc, c.not_valid_after_utc))
    return Chain(certificates, names, earliest.timestamp(), described, tuple(changes))


def _presented_chain(ssl_object: ssl.SSLObject) -> Chain:
    ders: tuple[bytes, ...] = ()
    if PRESENTED_CHAIN_IS_PUBLIC:
        ders = tuple(ssl_object.get_unverified_chain() or ())  # type: ignore[attr-defined]
    if not ders:
        leaf = ssl_object.getpeercert(binary_form=True)
        if not leaf:  # a server that sent nothing would have failed the handshake
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
    # OpenSSL does not say which certificate of the chain failed: the one whose dates explain the code does.
    if err.verify_code == _EXPIRED and chain is not None:
        expired = min(chain.certificates, key=lambda c: c.not_valid_after_utc)
        when = f"{expired.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
        if expired.not_valid_after_utc.timestamp() > time.time():  # the expired one is not among those we see
            valid = f"the {chain.role(expired)} is valid until {when}"
            return f"renew the expired intermediate certificate on {where} ({valid})"
        return f"renew the {chain.role(expired)} on {where}: it expired on {when}"
    if err.verify_code == _NOT_YET_VALID and chain is not None:
        pending = max(chain.certificates, key=lambda c: c.not_valid_before_utc)
        return (
            f"the {chain.role(pending)} on {where} is valid only from {pending.not_valid_before_utc:%Y-%m-%d %H:%M} "
            "UTC: check the clocks of this host and of the issuing CA"
        )
    if err.verify_code in (_HOST_MISMATCH, _IP_MISMATCH):
        names = ", ".join(chain.names) if chain is not None else "other names"
        return f"the certificate on {where} is for {names}: install one whose subjectAltName includes the host"
    return (
        f"the chain presented on {where} does not lead to a trusted root: install the intermediate "
        "certificates on the server, or point defaults.tls.ca_file at your internal CA"
    )


def public_roots_file(configured: str | None) -> str:
    """The bundle that stands for the public roots: ``defaults.tls.public_ca_file``, else certifi's.

    certifi's bundle (Mozilla's CA program, kept current with every certifi release) rather than the
    system store: on the hosts this exporter runs on, the system store often carries the company's
    internal CA as well (update-ca-certificates), which would make an internal chain look public.
    """
    return configured or certifi.where()


_PEM_CERTIFICATE = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)


@functools.lru_cache(maxsize=4)
def _public_store(path: str, _stamp: object) -> verification.Store:
    certificates = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CryptographyDeprecationWarning)  # roots with serials RFC 5280 disallows
        for block in _PEM_CERTIFICATE.findall(Path(path).read_bytes()):
            try:
                certificates.append(x509.load_pem_x509_certificate(block))
            except ValueError:  # a root this cryptography cannot parse cannot anchor a chain either
                continue
    return verification.Store(certificates)


def _subject(host: str) -> x509.DNSName | x509.IPAddress:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


@functools.lru_cache(maxsize=1024)
def _public_distrust(chain: Chain, host: str, roots: str, roots_stamp: object, _valid_until: float) -> str | None:
    """Why the public roots do not trust ``chain`` for ``host``, or None when they do.

    Only the certificates the server presented are used, as a client that fetches no missing
    intermediates (Java's default) does. Cached per chain until one of its certificates becomes valid
    or expires (``_valid_until``), so a server presenting the same chain costs one verification.
    """
    try:
        store = _public_store(roots, roots_stamp)
        verifier = verification.PolicyBuilder().store(store).build_server_verifier(_subject(host))
        verifier.verify(chain.leaf, list(chain.certificates[1:]))
    except (OSError, ValueError, verification.VerificationError) as err:
        return str(err)[:300]
    return None


_handshake_verdicts: dict[tuple[Chain, str, str, object, float], str | None] = {}


async def _public_distrust_by_handshake(
    chain: Chain, target: Target, ctx: ProbeContext, roots: str, roots_stamp: object, valid_until: float
) -> str | None:
    """Why the public roots do not trust the endpoint's chain, from a handshake that verifies against them.

    Where only the leaf can be read (before Python 3.13), OpenSSL itself judges the chain the server
    presents, with the public roots as the only trust: one more handshake per leaf, host and roots, kept
    until a certificate of the leaf becomes valid or expires, as ``_public_distrust``'s verdicts are.
    """
    key = (chain, target.host, roots, roots_stamp, valid_until)
    if key in _handshake_verdicts:
        return _handshake_verdicts[key]
    scratch = type(ctx.rec)(target.name, ctx.rec.check)  # its steps are not part of the report
    conn = await ctx.connect(target, scratch)
    try:
        await tcp_tls.tls_handshake(conn, tcp_tls.client_ssl_context(roots), target.host)
        distrust = None
    except ssl.SSLCertVerificationError as err:
        distrust = str(err.verify_message)[:300]
    except (ssl.SSLError, OSError) as err:  # no verdict: say why, and ask again next run
        return f"not measured: {getattr(err, 'reason', None) or err}"
    finally:
        conn.close()
    if len(_handshake_verdicts) >= VERDICTS_KEPT:
        del _handshake_verdicts[next(iter(_handshake_verdicts))]
    _handshake_verdicts[key] = distrust
    return distrust


async def _measure_public_trust(chain: Chain, target: Target, ctx: ProbeContext) -> str:
    """Measure whether the public roots trust the endpoint's chain too; the report's words.

    From the presented chain without another handshake where Python hands it over (3.13), else by one
    handshake per chain that verifies against the public roots.
    """
    roots = public_roots_file(ctx.config.defaults.tls.public_ca_file)
    stamp, valid_until = tcp_tls.ca_file_stamp(roots), chain.next_validity_change(time.time())
    if PRESENTED_CHAIN_IS_PUBLIC:
        distrust = _public_distrust(chain, target.host, roots, stamp, valid_until)
    else:
        distrust = await _public_distrust_by_handshake(chain, target, ctx, roots, stamp, valid_until)
    ctx.rec.measure(PUBLICLY_TRUSTED, 1 if distrust is None else 0)
    return "trusted by the public roots" if distrust is None else f"not trusted by the public roots ({distrust})"


async def _unverified_chain(target: Target, ctx: ProbeContext) -> Chain | None:
    """After a verification failure, look at what the server presents, for the hint and the expiry."""
    scratch = type(ctx.rec)(target.name, ctx.rec.check)  # its steps are not part of the report
    conn = await ctx.connect(target, scratch)
    try:
        return _presented_chain(await tcp_tls.tls_handshake(conn, ctx.ssl_context(verify=False), target.host))
    except (ssl.SSLError, OSError):
        return None
    finally:
        conn.close()


async def probe(target: Target, ctx: ProbeContext) -> CheckResult:
    where = f"{target.host}:{target.port}"
    conn = await ctx.connect(target, ctx.rec)
    try:
        async with ctx.rec.step(
            f"TLS handshake with {where}",
            f"{where} accepts connections but does not complete the TLS handshake: an overloaded server, "
            "or a device in the path that holds connections",
        ) as detail:
            try:
                ssl_object = await tcp_tls.tls_handshake(conn, ctx.ssl_context(), target.host)
                chain = _presented_chain(ssl_object)
            except ssl.SSLCertVerificationError as err:
                rejected = await _unverified_chain(target, ctx)
                if rejected is not None:
                    ctx.rec.measure(CERT_EXPIRY, rejected.expires_at)
                    await _measure_public_trust(rejected, target, ctx)
                raise ProbeFailure(
                    Reason.CERTIFICATE,
                    f"certificate rejected: {err.verify_message}",
                    _certificate_hint(err, where, rejected),
                ) from None
            except (ssl.SSLError, ConnectionError) as err:
                raise tcp_tls.tls_failure(err, where) from None
            version = ssl_object.version() or "unknown"
            days = (chain.expires_at - time.time()) // 86400
            public_trust = await _measure_public_trust(chain, target, ctx)
            detail.append(f"{version}, {chain.described} ({days:.0f} days), {public_trust}")
    finally:
        conn.close()
    ctx.rec.measure(HANDSHAKE, ctx.rec.steps[-1].seconds)
    ctx.rec.measure(CERT_EXPIRY, chain.expires_at)
    ctx.rec.measure(VERSION, 1, version=version)
    return ctx.rec.passed()


CHECK = Check("tls", probe, every_target, (HANDSHAKE, CERT_EXPIRY, VERSION, PUBLICLY_TRUSTED))
