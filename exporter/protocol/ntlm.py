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
from typing import TypeVar

import requests
from requests.auth import AuthBase
from requests_ntlm import HttpNtlmAuth

from ..config import Target, WindowsCredential
from ..results import ProbeFailure, Reason
from .http_client import ForeignOriginError, HttpResponse, from_requests, origin, read_bounded, requests_session
from .tcp_tls import CERTIFICATE_HINT, Proxy, ca_file_stamp, connect_failure, tls_failure

E = TypeVar("E", bound=BaseException)


# How a session signs in: the target, the URL's host's credential and whether to send channel bindings.
AuthFactory = Callable[[Target, str, WindowsCredential, bool], AuthBase]


def ntlm_auth(_target: Target, _url: str, credential: WindowsCredential, bind_channel: bool) -> AuthBase:
    assert credential.password is not None  # the configuration allows ntlm only with a password
    return HttpNtlmAuth(credential.username, credential.password.get_secret_value(), send_cbt=bind_channel)


class WindowsSessions:
    """One requests session per target and origin, rebuilt when its credential, service principal, proxy,
    CA file or the CA file's content changes (so a CA rotation reaches NTLM when it reaches the ``tls`` check).

    Autodiscover may send a target's requests to another allowed host: that host gets its own session
    (and its own handshake), and every session sends only to its own origin.
    """

    def __init__(self, auth: AuthFactory = ntlm_auth) -> None:
        self._auth = auth
        self._sessions: dict[tuple[str, tuple[str, str, int]], tuple[object, requests.Session, threading.Lock]] = {}
        self._lock = threading.Lock()

    def _session(
        self, target: Target, url: str, credential: WindowsCredential, ca_file: str | None, proxy: Proxy | None
    ) -> tuple[requests.Session, threading.Lock]:
        key = (target.name, origin(url))
        identity = (credential, target.spn, ca_file, ca_file_stamp(ca_file), proxy)
        with self._lock:
            known = self._sessions.get(key)
            if known is not None and known[0] == identity:
                return known[1], known[2]
            if known is not None:
                known[1].close()
            session = requests_session(url, ca_file, proxy)
            session.auth = self._auth(target, url, credential, True)
            entry = (identity, session, threading.Lock())
            self._sessions[key] = entry
            return session, entry[2]

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
        bind_channel: bool = True,
    ) -> HttpResponse:
        """POST signed in (blocking; call from a worker thread). Redirects are returned, not followed.

        ``bind_channel`` False signs in without channel bindings, on a session of its own that is closed
        afterwards: only the Extended Protection diagnosis does that, never to sign in for a check.
        """
        if not bind_channel:
            with requests_session(url, ca_file, proxy) as session:
                session.auth = self._auth(target, url, credential, False)
                return self._post(session, threading.Lock(), target, url, body, headers, timeout)
        session, lock = self._session(target, url, credential, ca_file, proxy)
        return self._post(session, lock, target, url, body, headers, timeout)

    def _post(
        self, session: requests.Session, lock: threading.Lock, target: Target, url: str, body: bytes,
        headers: dict[str, str], timeout: float,
    ) -> HttpResponse:  # fmt: skip
        deadline = time.monotonic() + timeout
        with lock:  # a session's connection carries one handshake at a time
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
            for _, session, _ in self._sessions.values():
                session.close()
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
