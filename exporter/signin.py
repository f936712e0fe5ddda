"""Requests to Exchange and Graph as the configured account, shared by every check that signs in.

- Credentials per method: Basic (aiohttp), NTLM (requests-ntlm in a worker thread), OAuth bearer
  tokens from MSAL's cache.
- Back-off: when Exchange answers ``ErrorServerBusy`` with ``BackOffMilliseconds`` (or Graph a 429
  with ``Retry-After``), no request of that account goes to that host until the time has passed; a
  check due meanwhile fails with ``throttled`` without sending anything. The account is shared with
  production BEMS, whose own budget the exporter must not eat.
"""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from . import ews
from .config import AuthMethod, EntraCredential, Exchange, Target, WindowsCredential
from .entra import TokenError
from .httpclient import MAX_REDIRECTS, HttpResponse, redirect_target
from .results import ProbeFailure, Reason

if TYPE_CHECKING:  # probes import this module
    from .probes.base import ProbeContext

THROTTLED_HINT = (
    "Exchange throttles the account BEMS shares with the exporter: check EWS throttling policies "
    "(Get-ThrottlingPolicyAssociation BEMSAdmin) and what else uses the account"
)


def _host(url: str) -> str:
    return (urlsplit(url).hostname or "").lower()


def check_backoff(ctx: ProbeContext, target: Target, url: str) -> None:
    """ProbeFailure(throttled) while Exchange's back-off for this account and host lasts."""
    if target.credential is None:
        return
    remaining = ctx.resources.backoff.remaining(target.credential, _host(url))
    if remaining > 0:
        raise ProbeFailure(
            Reason.THROTTLED,
            f"not sent: Exchange asked {target.credential} to back off from {_host(url)} for {remaining:.0f} more s",
            THROTTLED_HINT,
        )


def hold_off(ctx: ProbeContext, target: Target, url: str, seconds: float) -> None:
    if target.credential is not None:
        ctx.resources.backoff.hold(target.credential, _host(url), seconds)


async def token(ctx: ProbeContext, target: Target, scope: str) -> str:
    credential = ctx.config.credentials.get(target.credential or "")
    assert isinstance(credential, EntraCredential)
    try:
        issued = await ctx.resources.run_blocking(
            ctx.resources.entra.acquire, target.credential, credential, scope,
            ca_file=ctx.ca_file, proxy=ctx.proxy(target), timeout=ctx.timeout,
        )  # fmt: skip
    except TokenError as err:
        raise ProbeFailure(Reason.TOKEN, f"no token from Entra ID: {err}") from None
    return issued.access_token


async def send(
    ctx: ProbeContext,
    target: Target,
    url: str,
    *,
    method: AuthMethod | None,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    scope: str = "",
    http_method: str = "POST",
    follow: bool = False,
) -> HttpResponse:
    """A request to ``url`` with ``method``'s credentials (None: anonymously).

    Redirects are returned; with ``follow``, those within the target's own origin are followed (any
    other is ``redirect_blocked``).
    """
    visited = {url}
    for _ in range(MAX_REDIRECTS + 1):
        response = await _send_once(ctx, target, url, method, body, dict(headers or {}), scope, http_method)
        next_url = redirect_target(response, target.url) if follow else None
        if next_url is None:
            return response
        if next_url in visited:  # a loop: nothing more to learn, and no reason to resend credentials
            raise ProbeFailure(Reason.REDIRECT_BLOCKED, f"redirect loop at {next_url}: not followed again")
        visited.add(next_url)
        url = next_url
    raise ProbeFailure(Reason.REDIRECT_BLOCKED, f"more than {MAX_REDIRECTS} redirects: not followed further")


async def _send_once(
    ctx: ProbeContext, target: Target, url: str, method: AuthMethod | None, body: bytes | None,
    headers: dict[str, str], scope: str, http_method: str,
) -> HttpResponse:  # fmt: skip
    if method is not None:
        check_backoff(ctx, target, url)
    proxy, resources = ctx.proxy(target), ctx.resources
    credential = ctx.config.credentials.get(target.credential or "")
    if method == AuthMethod.NTLM:
        assert isinstance(credential, WindowsCredential)
        return await resources.run_blocking(
            resources.ntlm.post, target, credential, url, body or b"", headers,
            ca_file=ctx.ca_file, proxy=proxy, timeout=ctx.timeout,
        )  # fmt: skip
    if method == AuthMethod.BASIC:
        assert isinstance(credential, WindowsCredential)
        pair = f"{credential.username}:{credential.password.get_secret_value()}".encode()
        headers["Authorization"] = f"Basic {base64.b64encode(pair).decode()}"
    elif method == AuthMethod.OAUTH:
        headers["Authorization"] = f"Bearer {await token(ctx, target, scope)}"
    return await resources.http.request(http_method, url, ca_file=ctx.ca_file, proxy=proxy, headers=headers, body=body)


def ews_answer(ctx: ProbeContext, target: Target, url: str, response: HttpResponse) -> ews.Answer:
    """Read an EWS answer; throttling answers start the back-off and end the check as ``throttled``."""
    answer = ews.read(response)
    if answer.code in ews.THROTTLED_CODES:
        seconds = (answer.backoff_ms or 0) / 1000
        hold_off(ctx, target, url, seconds)
        raise ProbeFailure(
            Reason.THROTTLED,
            f"Exchange is throttling the account: {answer.code}"
            + (f", back off {seconds:.1f} s" if seconds else "")
            + f" ({answer.message[:150]})",
            THROTTLED_HINT,
        )
    return answer


def is_ews_disabled(target: Target, response: HttpResponse) -> bool:
    """Exchange Online's EWS policy block (EWSEnabled, EwsAllowedAppIDs, retirement): 403, empty body."""
    return target.exchange == Exchange.ONLINE and response.status == 403 and not response.body.strip()


EWS_DISABLED_HINT = (
    "Exchange Online refuses EWS for this app: check Get-OrganizationConfig | fl EwsEnabled,EwsAllowedAppIDs "
    "and Get-CASMailbox | fl EwsEnabled. EWS in Exchange Online is retired for good on 2027-04-01: move BEMS "
    "to Microsoft Graph"
)


def ews_disabled_failure() -> ProbeFailure:
    return ProbeFailure(Reason.EWS_DISABLED, "Exchange Online blocks EWS (HTTP 403, empty body)", EWS_DISABLED_HINT)


def method_for(ctx: ProbeContext, target: Target) -> AuthMethod:
    """How EWS calls other than ``auth`` sign in: online with the app's token; on-premises with the
    method the last auth check signed in with (before one ran, the first configured)."""
    if target.exchange == Exchange.ONLINE or AuthMethod.OAUTH in ctx.config.auth_methods_of(target):
        return AuthMethod.OAUTH
    return ctx.resources.working_methods.get(target.name) or ctx.config.auth_methods_of(target)[0]


def ews_result(ctx: ProbeContext, target: Target, response: HttpResponse) -> ews.Answer:
    """The successful answer of a signed-in EWS call, or the failure it shows."""
    if response.status == 401:
        raise ProbeFailure(Reason.UNAUTHORIZED, f"credentials rejected (HTTP 401){ews.diagnostics(response)}")
    if is_ews_disabled(target, response):
        raise ews_disabled_failure()
    if response.status not in (200, 500):
        raise ProbeFailure(Reason.BAD_RESPONSE, f"unexpected HTTP {response.status}")
    answer = ews_answer(ctx, target, target.url, response)
    if answer.ok:
        return answer
    if answer.code in ews.IMPERSONATION_DENIED_CODES or answer.code in ews.ACCESS_DENIED_CODES:
        reason = Reason.IMPERSONATION_DENIED  # signed in, but not allowed into this mailbox
    elif answer.code in ews.MAILBOX_NOT_FOUND_CODES:
        reason = Reason.MAILBOX_NOT_FOUND
    else:
        reason = Reason.SOAP_FAULT
    raise ProbeFailure(reason, f"{answer.code}: {answer.message[:200]}")
