"""What a check run produces: an immutable result with its steps, reason and measurements."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .metrics import MetricSpec


class Reason(StrEnum):
    """Why a check failed: a small fixed set, documented in docs/metrics.md (a public contract)."""

    DNS = "dns"  # the host name did not resolve
    REFUSED = "refused"  # nothing listens on the port (TCP RST)
    UNREACHABLE = "unreachable"  # no route, network down, connection reset during connect
    TIMEOUT = "timeout"  # no answer within the check's timeout
    PROXY = "proxy"  # the configured proxy could not be used or refused the CONNECT
    TLS = "tls"  # the TLS handshake failed (protocol, version, cipher, not TLS at all)
    CERTIFICATE = "certificate"  # expired, wrong host name, or not trusted
    REDIRECT_BLOCKED = "redirect_blocked"  # a redirect away from the configured origin, or to http://
    UNAUTHORIZED = "unauthorized"  # the method is offered but the server rejected the credentials (401)
    METHOD_NOT_OFFERED = "method_not_offered"  # the server's 401 does not advertise the method
    CHANNEL_BINDING_MISMATCH = "channel_binding_mismatch"  # Windows sign-in works only without channel binding
    KERBEROS_UNKNOWN_SPN = "kerberos_unknown_spn"  # the KDC knows no such service principal
    KERBEROS_CLOCK_SKEW = "kerberos_clock_skew"  # clocks differ by more than the realm allows
    KERBEROS_KDC_UNREACHABLE = "kerberos_kdc_unreachable"  # no KDC of the realm answered
    KERBEROS_WRONG_PASSWORD = "kerberos_wrong_password"  # pre-authentication failed: password or keytab key
    KERBEROS_ACCOUNT_REVOKED = "kerberos_account_revoked"  # the account is locked out, disabled or expired
    KERBEROS_ENCRYPTION_TYPE = "kerberos_encryption_type"  # no encryption type the KDC and the keys share
    KERBEROS = "kerberos"  # another Kerberos failure
    CERTIFICATE_NOT_REQUESTED = "certificate_not_requested"  # the client certificate was not asked for or taken
    CERTIFICATE_REJECTED = "certificate_rejected"  # IIS refused the client certificate (403.12, .13, .16)
    CERTIFICATE_EXPIRED = "certificate_expired"  # the client certificate is out of its validity (IIS 403.17)
    FORBIDDEN = "forbidden"  # signed in, but access denied (ErrorAccessDenied, HTTP 403)
    TOKEN = "token"  # Entra ID issued no token (AADSTS error, unreachable, bad configuration)
    BAD_RESPONSE = "bad_response"  # not the HTTP/SOAP/XML answer the protocol calls for
    THROTTLED = "throttled"  # ErrorServerBusy / ErrorExceededConnectionCount / HTTP 429, or backing off
    IMPERSONATION_DENIED = "impersonation_denied"  # the account may not act as the mailbox
    MAILBOX_NOT_FOUND = "mailbox_not_found"  # no such mailbox (or not in Exchange Online)
    EWS_DISABLED = "ews_disabled"  # Exchange Online answers EWS with its policy block (403, empty body)
    SOAP_FAULT = "soap_fault"  # another EWS SOAP fault
    ADMIN_API_NOT_PERMITTED = "admin_api_not_permitted"  # the Exchange admin API refuses the app (401/403)
    SERVICE_HEALTH_NOT_PERMITTED = "service_health_not_permitted"  # Graph's 403: no ServiceHealth.Read.All
    PUSH_STALLED = "push_stalled"  # no notification within stall_after, or the write probe's never came
    INTERNAL = "internal"  # a bug in the exporter: see the log


@dataclass(frozen=True, slots=True)
class Step:
    """One line of the ``probe`` report: what was attempted, whether it worked, and how long it took."""

    name: str
    ok: bool
    seconds: float
    detail: str = ""
    hint: str = ""


@dataclass(frozen=True, slots=True)
class Measurement:
    """A sample for a metric family owned by a check; ``target`` and ``exchange`` are added later.

    ``labels`` are (name, value) pairs in the spec's order; readers look them up by name (``label``).
    """

    metric: str
    value: float
    labels: tuple[tuple[str, str], ...] = ()

    def label(self, name: str) -> str:
        """The value of the label ``name`` (KeyError if the sample has no such label)."""
        for key, value in self.labels:
            if key == name:
                return value
        raise KeyError(name)


@dataclass(frozen=True, slots=True)
class CheckResult:
    target: str
    check: str
    success: bool
    started: float  # Unix time
    duration: float  # seconds
    reason: Reason | None = None
    message: str = ""
    hint: str = ""
    steps: tuple[Step, ...] = ()
    measurements: tuple[Measurement, ...] = ()


class ProbeFailure(Exception):
    """Raised inside a probe to end it with a reason; the message is shown to operators."""

    def __init__(self, reason: Reason, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.hint = hint


@dataclass(slots=True)
class Recorder:
    """Collects a running check's steps and measurements, then freezes them into a CheckResult."""

    target: str
    check: str
    started: float = field(default_factory=time.time)
    _t0: float = field(default_factory=time.perf_counter)
    steps: list[Step] = field(default_factory=list)
    measurements: list[Measurement] = field(default_factory=list)

    def step(self, name: str, timeout_hint: str = "") -> _StepTimer:
        """Time one step (``async with``); the yielded list takes an optional detail line for the report.

        ``timeout_hint`` says what to fix when the check's timeout ends this step.
        """
        return _StepTimer(self.steps, name, timeout_hint)

    def measure(self, spec: MetricSpec, value: float, **labels: str) -> None:
        """Record a sample of ``spec`` with exactly the spec's own labels, given by name in any order.

        A missing or extra label is a bug in the check (its tests catch it): it raises ValueError here
        rather than expose a sample whose labels are shifted or absent.
        """
        if labels.keys() != set(spec.labels):
            missing = sorted(set(spec.labels) - labels.keys())
            extra = sorted(labels.keys() - set(spec.labels))
            raise ValueError(f"{spec.name} takes the labels {list(spec.labels)}: missing {missing}, extra {extra}")
        self.measurements.append(Measurement(spec.name, value, tuple((name, labels[name]) for name in spec.labels)))

    def elapsed(self) -> float:
        return time.perf_counter() - self._t0

    def continue_from(self, started: float, elapsed: float, steps: Sequence[Step]) -> None:
        """Start this check where another left off: its start, its time so far and its steps come first
        (a check that goes on over a connection another check of the same round opened)."""
        self.started = started
        self._t0 = time.perf_counter() - elapsed
        self.steps[:0] = steps

    def passed(self) -> CheckResult:
        return CheckResult(
            self.target,
            self.check,
            True,
            self.started,
            self.elapsed(),
            steps=tuple(self.steps),
            measurements=tuple(self.measurements),
        )

    def failed(self, reason: Reason, message: str, hint: str = "") -> CheckResult:
        return CheckResult(
            self.target,
            self.check,
            False,
            self.started,
            self.elapsed(),
            reason,
            message,
            hint,
            tuple(self.steps),
            tuple(self.measurements),
        )


class _StepTimer:
    """``Recorder.step``: a plain class, as every check enters a few of these on every run."""

    __slots__ = ("_detail", "_name", "_steps", "_t0", "_timeout_hint")

    def __init__(self, steps: list[Step], name: str, timeout_hint: str) -> None:
        self._steps = steps
        self._name = name
        self._timeout_hint = timeout_hint
        self._detail: list[str] = []
        self._t0 = 0.0

    async def __aenter__(self) -> list[str]:
        self._t0 = time.perf_counter()
        return self._detail

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, _tb: object) -> None:
        seconds = time.perf_counter() - self._t0
        if exc is None:
            self._steps.append(Step(self._name, True, seconds, self._detail[0] if self._detail else ""))
        elif isinstance(exc, ProbeFailure):
            self._steps.append(Step(self._name, False, seconds, exc.message, exc.hint))
        else:
            # Timeout (cancellation) or a bug: the step did not finish; the caller names the reason.
            self._steps.append(Step(self._name, False, seconds, "did not finish", self._timeout_hint))
