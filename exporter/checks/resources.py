"""Long-lived things the checks share: HTTP sessions, worker threads, MSAL apps, NTLM and Kerberos sessions
and Kerberos tickets."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from ..config import AuthMethod
from ..protocol.backoff import Backoff
from ..protocol.dns_lookup import DnsResolvers
from ..protocol.entra_tokens import EntraApps
from ..protocol.http_client import HttpClients
from ..protocol.kerberos import KerberosTickets, negotiate_auth
from ..protocol.ntlm import WindowsSessions
from ..protocol.suspension import Suspensions
from .push_state import PushRegistry

T = TypeVar("T")

# Blocking protocol stacks (requests-ntlm, Kerberos through pyspnego and krb5, MSAL) run here, never on the
# event loop. The per-credential limit already bounds how many run at once per account; this bounds the
# threads in total.
BLOCKING_WORKERS = 16


class Resources:
    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        """``monotonic`` is the clock of back-off, suspension, push delivery and population refreshes: tests pass a
        fake one."""
        self.monotonic = monotonic
        self.dns = DnsResolvers()  # a target's own resolvers (its dns servers)
        self.http = HttpClients(self.dns)
        self.entra = EntraApps()
        self.ntlm = WindowsSessions()
        self.kerberos_tickets = KerberosTickets()
        self.kerberos = WindowsSessions(functools.partial(negotiate_auth, self.kerberos_tickets))
        self.backoff = Backoff(monotonic)
        self.suspensions = Suspensions(monotonic)  # Windows credentials not sent after repeated 401s
        self.push = PushRegistry(monotonic)
        # Extended Protection diagnoses, per (target, method), for the current failure episode (checks/auth.py).
        self.binding_diagnoses: dict[tuple[str, AuthMethod], bool] = {}
        self._executor = ThreadPoolExecutor(max_workers=BLOCKING_WORKERS, thread_name_prefix="bems-blocking")

    async def run_blocking(self, fn: Callable[..., T], /, *args: object, **kwargs: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    async def close(self) -> None:
        await self.http.close()
        await self.dns.close()
        self.ntlm.close()
        self.kerberos.close()
        self.entra.close()
        # Threads blocked on a hung server end with their own socket timeouts; do not wait for them.
        self._executor.shutdown(wait=False, cancel_futures=True)
