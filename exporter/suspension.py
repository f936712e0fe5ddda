"""Windows credentials the exporter stops sending after repeated HTTP 401s, so it cannot lock the account out.

Active Directory locks an account after a number of bad passwords (the domain's lockout threshold), and
the account is shared with production BEMS: after a password change, every sign-in with the old one is a
bad password. After ``limits.suspend_after_unauthorized`` consecutive sign-ins of one credential answered
HTTP 401, the credential is *suspended*: a check that would send it fails with ``unauthorized`` and a
message that says it was not sent. Each run of a check may still try once (``ProbeContext.trial_sign_in``):
runs come at most once per interval per check, scheduled or standing in for a late scheduled run through
``/probe``, so a fixed password is noticed at the next run without anyone stepping in. A sign-in answered
with anything but a 401 ends the suspension, and so does a reload that changes the credential.

Only Basic and NTLM are counted: they present the password to the domain controller. A bearer token is
not a password guess, and Entra ID answers a wrong client secret at the token endpoint (``token``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client.core import GaugeMetricFamily, Metric

from .config import Config, WindowsCredential
from .metrics import MetricSpec

SUSPENDED = MetricSpec(
    "bems_credential_suspended",
    "1 while the credential is not sent after limits.suspend_after_unauthorized consecutive HTTP 401 sign-ins; "
    "each check run still tries it once.",
    labels=("credential",),
    per_target=False,
)
SUSPENDED_HINT = (
    "the password was probably changed in Active Directory: put the new one in the credential's password source "
    "and reload (that lifts the suspension at once), or the next run of each check tries once; check the account "
    "(Get-ADUser BEMSAdmin -Properties LockedOut,BadLogonCount,PasswordLastSet)"
)


@dataclass
class _Count:
    credential: WindowsCredential  # what the count is about: a changed password or user starts a new one
    unauthorized: int = 0  # consecutive sign-ins answered HTTP 401


class Suspensions:
    """Consecutive 401 sign-ins per Windows credential, and whether that suspends it. Used on the event loop only."""

    def __init__(self) -> None:
        self.threshold = 3
        self._counts: dict[str, _Count] = {}

    def configure(self, config: Config) -> None:
        """Adopt a (re)loaded config: a credential whose user or password changed starts with a clean count."""
        self.threshold = config.limits.suspend_after_unauthorized
        counts: dict[str, _Count] = {}
        for name, credential in config.credentials.items():
            if isinstance(credential, WindowsCredential):
                known = self._counts.get(name)
                counts[name] = known if known is not None and known.credential == credential else _Count(credential)
        self._counts = counts

    def suspended(self, name: str) -> bool:
        count = self._counts.get(name)
        return count is not None and count.unauthorized >= self.threshold

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
