"""Windows credentials the exporter stops sending after repeated HTTP 401s, so it cannot lock the account out.

Active Directory locks an account after a number of bad passwords (the domain's lockout threshold), and
the account is shared with production BEMS: after a password change, every sign-in with the old one is a
bad password. After ``limits.suspend_after_unauthorized`` consecutive sign-ins of one credential answered
HTTP 401, the credential is *suspended*: a check that would send it fails with ``unauthorized`` and a
message that says it was not sent. Once per *retry interval* (``limits.suspended_retry_interval``, or the
shortest check interval of the credential's targets if that is longer) one sign-in is still let through, by
whichever check runs first, so a fixed password is noticed within that interval without anyone stepping in,
and a wrong one costs one failed logon per retry interval, however many checks and ``/probe`` clients there
are.
A sign-in answered with anything but a 401 ends the suspension, and so does a reload that changes the
credential.

Only Basic and NTLM are counted: they present the password to the domain controller. A bearer token is
not a password guess, and Entra ID answers a wrong client secret at the token endpoint (``token``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client.core import GaugeMetricFamily, Metric

from ..config import Config, WindowsCredential
from ..metrics import MetricSpec

SUSPENDED = MetricSpec(
    "bems_credential_suspended",
    "1 while the credential is not sent after limits.suspend_after_unauthorized consecutive HTTP 401 sign-ins; "
    "one sign-in per limits.suspended_retry_interval still tries it.",
    labels=("credential",),
    per_target=False,
)
SUSPENDED_HINT = (
    "the password was probably changed in Active Directory: put the new one in the credential's password source "
    "and reload (that lifts the suspension at once), or wait: one sign-in per limits.suspended_retry_interval still "
    "tries it; check the "
    "account "
    "(Get-ADUser BEMSAdmin -Properties LockedOut,BadLogonCount,PasswordLastSet)"
)


@dataclass
class _Count:
    credential: WindowsCredential  # what the count is about: a changed password or user starts a new one
    retry_seconds: float  # while suspended, one sign-in may try this often
    unauthorized: int = 0  # consecutive sign-ins answered HTTP 401
    last_trial: float | None = None  # Suspensions' monotonic clock at the last sign-in let through while suspended


class Suspensions:
    """Consecutive 401 sign-ins per Windows credential, and whether that suspends it. Used on the event loop only."""

    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._monotonic = monotonic  # a test's fake clock moves it
        self.threshold = 3
        self._counts: dict[str, _Count] = {}

    def configure(self, config: Config) -> None:
        """Adopt a (re)loaded config: a credential whose user or password changed starts with a clean count."""
        self.threshold = config.limits.suspend_after_unauthorized
        counts: dict[str, _Count] = {}
        for name, credential in config.credentials.items():
            if not isinstance(credential, WindowsCredential):
                continue
            intervals = [config.interval_of(t).total_seconds() for t in config.targets if t.credential == name]
            shortest = min(intervals, default=config.defaults.interval.total_seconds())
            retry = max(config.limits.suspended_retry_interval.total_seconds(), shortest)
            known = self._counts.get(name)
            if known is not None and known.credential == credential:
                known.retry_seconds = retry
                counts[name] = known
            else:
                counts[name] = _Count(credential, retry)
        self._counts = counts

    def suspended(self, name: str) -> bool:
        count = self._counts.get(name)
        return count is not None and count.unauthorized >= self.threshold

    def claim_trial(self, name: str, now: float | None = None) -> bool:
        """Whether this sign-in of a suspended credential may go: the first one in each retry interval."""
        count = self._counts.get(name)
        if count is None:
            return False
        now = self._monotonic() if now is None else now
        if count.last_trial is not None and now - count.last_trial < count.retry_seconds:
            return False
        count.last_trial = now
        return True

    def retry_seconds(self, name: str) -> float:
        count = self._counts.get(name)
        return count.retry_seconds if count is not None else 0.0

    def unauthorized_in_a_row(self, name: str) -> int:
        count = self._counts.get(name)
        return count.unauthorized if count is not None else 0

    def observe(self, name: str, unauthorized: bool) -> None:
        """Count a sign-in's answer: a 401 adds one, anything else proves the credential and clears the count."""
        count = self._counts.get(name)
        if count is not None:
            count.unauthorized = count.unauthorized + 1 if unauthorized else 0

    def families(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(SUSPENDED.name, SUSPENDED.help, labels=list(SUSPENDED.labels))
        for name in self._counts:
            family.add_metric([name], 1.0 if self.suspended(name) else 0.0)
        yield family
