"""Windows authentication over requests: NTLM (and NTLM inside Negotiate) through requests-ntlm, and
Kerberos inside Negotiate through ``kerberos.NegotiateAuth``.

Both authenticate a *connection*: NTLM's three-leg handshake must stay on one kept-alive TCP/TLS
connection, and later requests on it (IIS's default for NTLM and Kerberos alike) stay signed in. Each
target keeps its own requests session per method, so a check reuses the connection (no new handshake per
check) for as long as the server keeps it open. Both send channel bindings (Extended Protection, on by
default since Exchange 2019 CU14) taken from the server certificate of that very connection.
"""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import requests
from requests.auth import AuthBase
from requests_ntlm import HttpNtlmAuth

from ..config import Target, WindowsCredential
from ..results import ProbeFailure, Reason
from .http_client import (
    AddressPin,
    ForeignOriginError,
    HttpResponse,
    from_requests,
    origin,
    read_bounded,
    requests_session,
)
from .tcp_tls import CERTIFICATE_HINT, Proxy, ca_file_stamp, connect_failure, tls_failure

E = TypeVar("E", bound=BaseException)


# How a session signs in: the target, the URL's host's credential and whether to send channel bindings.
AuthFactory = Callable[[Target, str, WindowsCredential, bool], AuthBase]


def ntlm_auth(_target: Target, _url: str, credential: WindowsCredential, bind_channel: bool) -> AuthBase:
    assert credential.password is not None  # the configuration allows ntlm only with a password
    return HttpNtlmAuth(credential.username, credential.password.get_secret_value(), send_cbt=bind_channel)


@dataclass(frozen=True, slots=True)
class _TargetSession:
    """A target's session, the lock that keeps one handshake at a time on it, and where it connects (its pin)."""

    session: requests.Session
    lock: threading.Lock
    pin: AddressPin | None


class WindowsSessions:
    """One requests session per target and origin, rebuilt when its credential, service principal, proxy,
    CA file or the CA file's content changes (so a CA rotation reaches NTLM when it reaches the ``tls`` check),
    or when the target starts or stops giving the addresses to connect to (its ``dns``).

    Autodiscover may send a target's requests to another allowed host: that host gets its own session
    (and its own handshake), and every session sends only to its own origin.
    """

    def __init__(self, auth: AuthFactory = ntlm_auth) -> None:
        self._auth = auth
        self._sessions: dict[tuple[str, tuple[str, str, int]], tuple[object, _TargetSession]] = {}
        self._lock = threading.Lock()

    def _session(
        self, target: Target, url: str, credential: WindowsCredential, ca_file: str | None, proxy: Proxy | None,
        pinned: bool,
    ) -> _TargetSession:  # fmt: skip
        key = (target.name, origin(url))
        identity = (credential, target.spn, ca_file, ca_file_stamp(ca_file), proxy, pinned)
        with self._lock:
            known = self._sessions.get(key)
            if known is not None and known[0] == identity:
                return known[1]
            if known is not None:
                known[1].session.close()
            pin = AddressPin() if pinned else None
            session = requests_session(url, ca_file, proxy, pin)
            session.auth = self._auth(target, url, credential, True)
            entry = _TargetSession(session, threading.Lock(), pin)
            self._sessions[key] = (identity, entry)
            return entry

    def post(
        self,
        target: Target,
        credential: WindowsCredential,
        url: str,
        body: bytes,
        headers: dict[str, str],
        *,
        ca_file: str | None,
        proxy: Proxy | None,
        timeout: float,
        addresses: tuple[str, ...] | None = None,
        bind_channel: bool = True,
    ) -> HttpResponse:
        """POST signed in (blocking; call from a worker thread). Redirects are returned, not followed.

        ``addresses``: where to connect, for a target whose ``dns`` servers were asked on the event loop
        (None: the host's resolver). ``bind_channel`` False signs in without channel bindings, on a session
        of its own that is closed afterwards: only the Extended Protection diagnosis does that, never to sign
        in for a check.
        """
        if not bind_channel:
            pin = AddressPin() if addresses is not None else None
            with requests_session(url, ca_file, proxy, pin) as session:
                session.auth = self._auth(target, url, credential, False)
                entry = _TargetSession(session, threading.Lock(), pin)
                return self._post(entry, addresses, target, url, body, headers, timeout)
        entry = self._session(target, url, credential, ca_file, proxy, addresses is not None)
        return self._post(entry, addresses, target, url, body, headers, timeout)

    def _post(
        self, entry: _TargetSession, addresses: tuple[str, ...] | None, target: Target, url: str, body: bytes,
        headers: dict[str, str], timeout: float,
    ) -> HttpResponse:  # fmt: skip
        deadline = time.monotonic() + timeout
        session = entry.session
        with entry.lock:  # a session's connection carries one handshake at a time
            if entry.pin is not None and addresses is not None:  # for the connection it may open now
                entry.pin.addresses = addresses
            try:
                response = session.post(
                    url, data=body, headers=headers, timeout=timeout, allow_redirects=False, stream=True
                )
            except ForeignOriginError as err:  # a redirect is returned, not followed; this is the backstop
                raise ProbeFailure(Reason.REDIRECT_BLOCKED, str(err)) from None
            except requests.exceptions.SSLError as err:
                cause = _cause(err, ssl.SSLError)
                if cause is not None and not isinstance(cause, ssl.SSLCertVerificationError):
                    raise tls_failure(cause, f"{target.host}:{target.port}") from None
                raise ProbeFailure(Reason.CERTIFICATE, f"TLS failed: {_reason(err)}", CERTIFICATE_HINT) from None
            except requests.exceptions.ProxyError as err:
                raise ProbeFailure(Reason.PROXY, f"cannot use the proxy: {_reason(err)}") from None
            except requests.exceptions.Timeout:
                raise ProbeFailure(Reason.TIMEOUT, "no answer within the timeout") from None
            except requests.exceptions.ConnectionError as err:
                cause = _cause(err, OSError)
                if cause is not None:
                    raise connect_failure(cause, target.host, target.port) from None
                raise ProbeFailure(Reason.UNREACHABLE, f"cannot connect: {_reason(err)}") from None
            except PermissionError:  # requests-ntlm: a 401 without a CHALLENGE answered the NEGOTIATE
                raise ProbeFailure(
                    Reason.UNAUTHORIZED,
                    "credentials rejected (HTTP 401): the server answered NTLM's NEGOTIATE without a CHALLENGE, "
                    "so it refuses NTLM (a Negotiate:Kerberos-only virtual directory, or a domain that restricts NTLM)",
                ) from None
            return from_requests(response, read_bounded(response, deadline))

    def close(self) -> None:
        with self._lock:
            for _, entry in self._sessions.values():
                entry.session.close()
            self._sessions.clear()


def _cause(err: BaseException, kind: type[E]) -> E | None:
    """The socket or TLS error at the bottom of what requests and urllib3 wrap around it."""
    seen: BaseException | None = err
    for _ in range(8):  # requests -> urllib3 MaxRetryError -> NewConnectionError/SSLError -> the OSError
        if seen is None:
            return None
        if isinstance(seen, kind) and not isinstance(seen, requests.RequestException):
            return seen
        nested = seen.args[0] if seen.args and isinstance(seen.args[0], BaseException) else None
        reason = getattr(seen, "reason", None)
        seen = nested or (reason if isinstance(reason, BaseException) else None) or seen.__cause__ or seen.__context__
    return None


def _reason(err: Exception) -> str:
    # requests nests urllib3's errors; the innermost one says what happened, without URLs full of noise.
    inner: BaseException = err
    while inner.args and isinstance(inner.args[0], BaseException):
        inner = inner.args[0]
    return str(getattr(inner, "reason", None) or inner)[:300]
