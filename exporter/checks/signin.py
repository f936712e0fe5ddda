"""Requests to Exchange and Graph as the configured account, shared by every check that signs in.

- Credentials per method: Basic (aiohttp), NTLM (requests-ntlm in a worker thread), Kerberos (pyspnego
  and krb5 in a worker thread, ``protocol/kerberos.py``), OAuth bearer tokens from MSAL's cache, a TLS
  client certificate (aiohttp, a session of its own per certificate).
- Back-off: when Exchange answers ``ErrorServerBusy`` with ``BackOffMilliseconds`` (or Graph a 429
  with ``Retry-After``), nothing more is sent where the back-off applies until the time has passed; a
  check due meanwhile fails with ``throttled`` without sending anything. Exchange budgets per account,
  so its back-off holds the account on that host; Graph's mail limits are per app and mailbox
  (4 concurrent, 10,000 per 10 minutes: learn.microsoft.com/graph/throttling-limits, "Outlook service
  limits"), so a 429 for ``/users/{mailbox}/...`` holds that app and mailbox only, and a 429 elsewhere
  the app on the host. The account is shared with production BEMS, whose own budget the exporter must
  not eat.
- Suspension: after repeated HTTP 401s to Basic or NTLM, or pre-authentication failures at the KDC for
  Kerberos, the credential is not sent (``suspension.py``), so a changed password cannot lock the account
  out; one sign-in per retry interval still tries it.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import itertools
import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from ..config import (
    WINDOWS_METHODS,
    AuthMethod,
    Config,
    EntraCredential,
    Exchange,
    Kind,
    Target,
    WindowsCredential,
)
from ..protocol import ews_soap, graph_wire
from ..protocol.entra_tokens import Resource, TokenError, scope_of
from ..protocol.http_client import MAX_REDIRECTS, HttpResponse, redirect_target
from ..protocol.suspension import SUSPENDED_HINT
from ..results import ProbeFailure, Reason

if TYPE_CHECKING:  # probes import this module
    from .base import ProbeContext

THROTTLED_HINT = (
    "Exchange throttles the account BEMS shares with the exporter: check EWS throttling policies "
    "(Get-ThrottlingPolicyAssociation BEMSAdmin) and what else uses the account"
)


def _host(url: str) -> str:
    return (urlsplit(url).hostname or "").lower()


def _graph_mailbox(target: Target, url: str) -> str | None:
    """The mailbox a Graph URL addresses (``.../users/{mailbox}/...``), None for any other URL."""
    if target.kind != Kind.GRAPH:
        return None
    segments = urlsplit(url).path.split("/")
    for here, following in itertools.pairwise(segments):
        if here.lower() == "users" and following:
            return unquote(following).casefold()
    return None


def _backoff_scopes(target: Target, url: str) -> tuple[str, str | None]:
    """Where a back-off for ``url`` is held: the host, and the host's mailbox for a Graph mailbox URL."""
    host, mailbox = _host(url), _graph_mailbox(target, url)
    return host, (f"{host}/users/{mailbox}" if mailbox is not None else None)


# What each method's 401 challenge looks like (WWW-Authenticate schemes), and what to do when it is missing.
_WANTED = {
    AuthMethod.BASIC: {"basic"},
    AuthMethod.NTLM: {"ntlm", "negotiate"},
    AuthMethod.KERBEROS: {"negotiate"},
    AuthMethod.OAUTH: {"bearer"},
}
_PARAMETER = re.compile(r'[A-Za-z_]+\s*=\s*("[^"]*"|[^,\s]*)')
_SCHEME = re.compile(r"(?:^|,)\s*([A-Za-z][A-Za-z0-9-]*)(?=\s|,|$)")
NOT_OFFERED_HINTS = {
    AuthMethod.BASIC: "enable Basic authentication on the virtual directory (Set-WebServicesVirtualDirectory / "
    "Set-AutodiscoverVirtualDirectory -BasicAuthentication $true), or drop basic from the target's auth list; "
    "Exchange Online has no Basic authentication for EWS",
    AuthMethod.NTLM: "enable Windows authentication on the virtual directory (-WindowsAuthentication $true), or "
    "drop ntlm from the target's auth list",
    AuthMethod.KERBEROS: "enable Windows authentication with the Negotiate provider on the virtual directory "
    "(-WindowsAuthentication $true; IIS's providers Negotiate or Negotiate:Kerberos), or drop kerberos from the "
    "target's auth list",
}


def offered_methods(response: HttpResponse) -> set[str]:
    """Auth schemes in all WWW-Authenticate headers (one per scheme, or comma-joined: IIS sends both)."""
    if response.status != 401:
        return set()
    schemes: set[str] = set()
    for value in response.header_values("WWW-Authenticate"):
        # Parameters (realm="x", error="y") follow a scheme; what is left are the schemes themselves.
        schemes.update(match.lower() for match in _SCHEME.findall(_PARAMETER.sub("", value)))
    return schemes


def offers(method: AuthMethod, offered: set[str]) -> bool:
    """Whether a 401 that offered ``offered`` asked for ``method``'s credentials.

    Basic and NTLM go only where the server asked for them (Basic would otherwise put the password on
    the wire unasked); a bearer token is tried unless the server advertises other schemes only.
    """
    return bool(_WANTED[method] & offered) or (method == AuthMethod.OAUTH and not offered)


def check_backoff(ctx: ProbeContext, target: Target, url: str) -> None:
    """ProbeFailure(throttled) while a back-off that covers this request lasts (see the module doc)."""
    if target.credential is None:
        return
    host, mailbox_scope = _backoff_scopes(target, url)
    backoff = ctx.resources.backoff
    remaining = max(backoff.remaining(target.credential, host),
                    backoff.remaining(target.credential, mailbox_scope) if mailbox_scope else 0.0)  # fmt: skip
    if remaining > 0:
        where = f"{_graph_mailbox(target, url)} on {host}" if mailbox_scope else host
        service = "Graph" if target.kind == Kind.GRAPH else "Exchange"
        raise ProbeFailure(
            Reason.THROTTLED,
            f"not sent: {service} asked {target.credential} to back off from {where} for {remaining:.0f} more s",
            THROTTLED_HINT,
        )


def hold_off(ctx: ProbeContext, target: Target, url: str, seconds: float) -> None:
    if target.credential is not None:
        host, mailbox_scope = _backoff_scopes(target, url)
        ctx.resources.backoff.hold(target.credential, mailbox_scope or host, seconds)


def token_scope(credential: EntraCredential, target: Target, resource: Resource) -> str:
    """The ``.default`` scope a target's token is for: ``resource`` in the credential's cloud, except Exchange
    on-premises with hybrid modern authentication, whose resource is the origin of its own URL.

    Hybrid modern authentication registers the on-premises URLs (``https://mail.contoso.com``) as service
    principal names of Office 365 Exchange Online in Entra ID, and the on-premises server accepts tokens
    issued for them (learn.microsoft.com/microsoft-365/enterprise/configure-exchange-server-for-hybrid-modern-
    authentication, "Add on-premises web service URLs as SPNs"; the EWS OAuth samples ask for
    ``https://<on-premises host>/...`` scopes).
    """
    if target.exchange == Exchange.ONPREM and resource == Resource.EXCHANGE:
        parts = urlsplit(target.url)
        return f"{parts.scheme}://{parts.netloc.lower()}/.default"
    return scope_of(credential, resource)


async def token(ctx: ProbeContext, target: Target, scope: Resource) -> str:
    """An access token for ``scope`` in the cloud of the target's Entra credential (see ``token_scope``)."""
    credential = ctx.config.credentials.get(target.credential or "")
    assert isinstance(credential, EntraCredential)
    try:
        issued = await ctx.resources.run_blocking(
            ctx.resources.entra.acquire, target.credential, credential, token_scope(credential, target, scope),
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
    scope: Resource = Resource.EXCHANGE,
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


async def graph_get(ctx: ProbeContext, target: Target, url: str) -> HttpResponse:
    """A Graph GET with the app's token, following redirects within the target's origin."""
    return await send(
        ctx, target, url, method=AuthMethod.OAUTH, headers={"Accept": "application/json"}, scope=Resource.GRAPH,
        http_method="GET", follow=True,
    )  # fmt: skip


def check_suspension(ctx: ProbeContext, credential: str) -> None:
    """ProbeFailure(unauthorized) while ``credential`` is suspended, but for one sign-in per retry interval."""
    suspensions = ctx.resources.suspensions
    if not suspensions.suspended(credential) or suspensions.claim_trial(credential):
        return
    raise ProbeFailure(
        Reason.UNAUTHORIZED,
        f"not sent: {credential} is suspended after {suspensions.unauthorized_in_a_row(credential)} sign-ins in a "
        f"row answered HTTP 401 (limits.suspend_after_unauthorized: {suspensions.threshold}), so that the exporter "
        f"cannot lock the account out; one sign-in every {suspensions.retry_seconds(credential):g} s still tries it",
        SUSPENDED_HINT,
    )


async def _send_once(
    ctx: ProbeContext, target: Target, url: str, method: AuthMethod | None, body: bytes | None,
    headers: dict[str, str], scope: Resource, http_method: str,
) -> HttpResponse:  # fmt: skip
    if method is not None:
        check_backoff(ctx, target, url)
    if ctx.pace is not None:
        await ctx.pace()
    credential = ctx.config.credentials.get(target.credential or "")
    if method not in WINDOWS_METHODS or target.credential is None:
        return await _send_as(ctx, target, url, method, credential, body, headers, scope, http_method)
    check_suspension(ctx, target.credential)
    try:
        response = await _send_as(ctx, target, url, method, credential, body, headers, scope, http_method)
    except ProbeFailure as failure:
        # Kerberos presents the password (or the keytab's key) to the KDC, not to Exchange.
        if failure.reason == Reason.KERBEROS_WRONG_PASSWORD:
            ctx.resources.suspensions.observe(target.credential, unauthorized=True)
        raise
    # Basic and NTLM present the password to the domain controller: every 401 is a bad password there. A 401
    # to a Kerberos ticket is Exchange's refusal (a binding, a key), and the KDC took the password.
    ctx.resources.suspensions.observe(
        target.credential, unauthorized=response.status == 401 and method != AuthMethod.KERBEROS
    )
    return response


async def _send_as(
    ctx: ProbeContext, target: Target, url: str, method: AuthMethod | None,
    credential: WindowsCredential | EntraCredential | None,
    body: bytes | None, headers: dict[str, str], scope: Resource, http_method: str,
) -> HttpResponse:  # fmt: skip
    proxy, resources = ctx.proxy(target), ctx.resources
    if method in (AuthMethod.NTLM, AuthMethod.KERBEROS):
        return await windows_post(ctx, target, url, method, body or b"", headers)
    if method == AuthMethod.CERTIFICATE:  # in the TLS handshake, not in a header: IIS maps it to the account
        assert isinstance(credential, WindowsCredential)
        return await resources.http.request(
            http_method, url, ca_file=ctx.ca_file, proxy=proxy, dns=ctx.config.dns_of(target), headers=headers,
            body=body, client_certificate=credential.client_certificate,
        )  # fmt: skip
    if method == AuthMethod.BASIC:
        assert isinstance(credential, WindowsCredential) and credential.password is not None
        pair = f"{credential.username}:{credential.password.get_secret_value()}".encode()
        headers["Authorization"] = f"Basic {base64.b64encode(pair).decode()}"
    elif method == AuthMethod.OAUTH:
        headers["Authorization"] = f"Bearer {await token(ctx, target, scope)}"
    return await resources.http.request(
        http_method, url, ca_file=ctx.ca_file, proxy=proxy, dns=ctx.config.dns_of(target), headers=headers, body=body
    )


async def windows_post(
    ctx: ProbeContext, target: Target, url: str, method: AuthMethod, body: bytes, headers: dict[str, str],
    *, bind_channel: bool = True,
) -> HttpResponse:  # fmt: skip
    """POST with NTLM or Kerberos in a worker thread; ``bind_channel`` False only to diagnose Extended Protection."""
    credential = ctx.config.credentials.get(target.credential or "")
    assert isinstance(credential, WindowsCredential)
    sessions = ctx.resources.kerberos if method == AuthMethod.KERBEROS else ctx.resources.ntlm
    dns, addresses = ctx.config.dns_of(target), None
    if dns is not None:  # asked here, on the event loop where the c-ares channel lives; the thread connects there
        found, _seconds = await ctx.resources.dns.lookup(dns, urlsplit(url).hostname or "")
        addresses = tuple(found)
    return await ctx.resources.run_blocking(
        sessions.post, target, credential, url, body, headers,
        ca_file=ctx.ca_file, proxy=ctx.proxy(target), timeout=ctx.timeout, addresses=addresses,
        bind_channel=bind_channel,
    )  # fmt: skip


def ews_answer(ctx: ProbeContext, target: Target, url: str, response: HttpResponse) -> ews_soap.Answer:
    """Read an EWS answer; throttling answers start the back-off and end the check as ``throttled``."""
    answer = ews_soap.read(response)
    if answer.throttled:
        seconds = answer.backoff_seconds()
        hold_off(ctx, target, url, seconds)
        code = answer.code + (f" wrapping {answer.inner_code}" if answer.inner_code else "")
        raise ProbeFailure(
            Reason.THROTTLED,
            f"Exchange is throttling the account: {code}"
            + (f", back off {seconds:.1f} s" if seconds else "")
            + f" ({answer.message[:150]})",
            THROTTLED_HINT,
        )
    return answer


def throttled_http(ctx: ProbeContext, target: Target, url: str, response: HttpResponse) -> None:
    """HTTP 503 from EWS: "requests are queuing in IIS; the client should delay" (ews-throttling-in-exchange).

    exchangelib backs off on it too, for ``Retry-After`` when given (protocol.py ``raise_response_errors``).
    """
    if response.status != 503:
        return
    given = retry_after(response)
    seconds = ews_soap.DEFAULT_BACKOFF_SECONDS if given is None else given
    hold_off(ctx, target, url, seconds)
    raise ProbeFailure(
        Reason.THROTTLED,
        f"Exchange answered HTTP 503 (requests queue in IIS), back off {seconds:.1f} s"
        + ("" if given is not None else " (no Retry-After)"),
        THROTTLED_HINT,
    )


def retry_after(response: HttpResponse) -> float | None:
    """``Retry-After`` in seconds, as delta-seconds or an HTTP date (RFC 9110 10.2.3); None when absent or bad."""
    value = (response.header("Retry-After") or "").strip()
    if value.isdigit():
        return float(value)
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        return None
    return max(0.0, (moment - datetime.now(UTC)).total_seconds())


GRAPH_DEFAULT_RETRY_AFTER = 30.0  # seconds, when Graph's 429 does not say


def graph_answer(ctx: ProbeContext, target: Target, url: str, mailbox: str, response: HttpResponse) -> dict[str, Any]:
    """The JSON object of a 2xx Graph answer (empty for 204), or the failure a Graph error shows.

    A 429 starts the back-off for its ``Retry-After`` (seconds or an HTTP date, as for EWS) before it ends the
    check as ``throttled``.
    """
    if 200 <= response.status < 300:
        return graph_wire.json_object(response)
    code, message = graph_wire.graph_error(response)
    if response.status == 429:
        given = retry_after(response)
        seconds = GRAPH_DEFAULT_RETRY_AFTER if given is None else given
        hold_off(ctx, target, url, seconds)
        raise ProbeFailure(
            Reason.THROTTLED, f"Graph throttles the app: {code or 'HTTP 429'}, retry after {seconds:g} s",
            THROTTLED_HINT,
        )  # fmt: skip
    if response.status == 401:
        raise ProbeFailure(
            Reason.UNAUTHORIZED, f"Graph rejected the token: {code} {message}".strip(),
            "grant the Entra app the Microsoft Graph application permissions Mail.Read and User.Read.All "
            "(with admin consent)",
        )  # fmt: skip
    if response.status == 403:
        client_id = getattr(ctx.config.credentials.get(target.credential or ""), "client_id", "<app id>")
        raise ProbeFailure(
            Reason.FORBIDDEN, f"{code or 'HTTP 403'}: {message}",
            f"the app may not read {mailbox}: New-ManagementRoleAssignment -App {client_id} "
            '-Role "Application Mail.Read" -CustomResourceScope <scope including the mailbox>, or fix the '
            "application access policy (Test-ApplicationAccessPolicy)",
        )  # fmt: skip
    if response.status == 404:
        raise ProbeFailure(
            Reason.MAILBOX_NOT_FOUND, f"{code or 'HTTP 404'}: {message}",
            f"check the address (Get-Mailbox {mailbox}): Graph reads only mailboxes in Exchange Online",
        )  # fmt: skip
    raise ProbeFailure(Reason.BAD_RESPONSE, f"unexpected HTTP {response.status} {code}: {message}".strip(" :"))


def is_policy_block(target: Target, response: HttpResponse) -> bool:
    """Exchange Online's policy block: HTTP 403 with an empty body (facts file 2.2, 9).

    The same answer comes from an organisation-wide block (EWSEnabled, EwsAllowedAppIDs, the retirement) and
    from an application access policy, an RBAC for Applications scope or ``Get-CASMailbox -EwsEnabled`` that
    excludes the one mailbox asked for: only ``organisation_blocks_ews`` tells them apart.
    """
    return target.exchange == Exchange.ONLINE and response.status == 403 and not response.body.strip()


class PolicyBlock(ProbeFailure):
    """A bare 403 for one mailbox: ``forbidden`` until organisation-wide evidence says EWS is disabled."""

    def __init__(self, mailbox: str | None, hint: str) -> None:
        scope = f" for {mailbox}" if mailbox else ""
        super().__init__(
            Reason.FORBIDDEN,
            f"Exchange Online refuses EWS{scope} (HTTP 403, empty body: an application access policy or RBAC "
            "scope that leaves the mailbox out)",
            hint,
        )
        self.mailbox = mailbox


EWS_DISABLED_HINT = (
    "Exchange Online refuses EWS for this app: check Get-OrganizationConfig | fl EwsEnabled,EwsAllowedAppIDs "
    "and Get-CASMailbox | fl EwsEnabled. EWS in Exchange Online is retired for good on 2027-04-01: move BEMS "
    "to Microsoft Graph"
)


def ews_disabled_failure() -> ProbeFailure:
    return ProbeFailure(
        Reason.EWS_DISABLED,
        "Exchange Online blocks EWS for the whole organisation (HTTP 403, empty body, with and without "
        "ExchangeImpersonation)",
        EWS_DISABLED_HINT,
    )


class OrganisationEvidence:
    """Whether Exchange Online's bare 403 holds for the whole organisation, asked at most once per check.

    The evidence is one app-only ``GetFolder`` with neither ``ExchangeImpersonation`` nor ``X-AnchorMailbox``:
    it names no mailbox, so no per-mailbox policy can apply to it, and Exchange Online answers it with a
    SOAP fault (``ErrorInvalidExchangeImpersonationHeaderData``, "must be present for this type of OAuth
    token", facts file 2.2). Only an organisation-wide block (EWSEnabled false, an EwsAllowedAppIDs list
    without the app, the retirement) answers it with the same bare 403.
    """

    def __init__(self, ctx: ProbeContext, target: Target) -> None:
        self._ctx, self._target = ctx, target
        self._verdict: asyncio.Task[bool | str] | None = None

    async def failure(self, block: PolicyBlock) -> ProbeFailure:
        """``ews_disabled`` on organisation-wide evidence, else ``block`` itself (a per-mailbox ``forbidden``)."""
        if block.mailbox is None:  # the blocked request named no mailbox: it is the evidence
            return ews_disabled_failure()
        if self._verdict is None:
            self._verdict = asyncio.ensure_future(self._ask())
        verdict = await asyncio.shield(self._verdict)
        if verdict is True:
            return ews_disabled_failure()
        if isinstance(verdict, str):
            block.message += f"; whether all of EWS is blocked is unknown: {verdict}"
        return block

    async def _ask(self) -> bool | str:
        try:
            response = await send(
                self._ctx, self._target, self._target.url, method=AuthMethod.OAUTH,
                body=ews_soap.get_folder("msgfolderroot"), headers=dict(ews_soap.SOAP_HEADERS), scope=Resource.EXCHANGE,
            )  # fmt: skip
        except ProbeFailure as failure:
            return failure.message
        return is_policy_block(self._target, response)


def method_for(config: Config, target: Target) -> AuthMethod:
    """How EWS calls other than ``auth`` (impersonation, push) sign in: online with the app's token;
    on-premises with the first method in the target's ``auth``, the one BEMS is set to use.

    BEMS signs in with one configured method, so these checks test that one: from the configuration
    alone, never from what another check's last run found working. ``auth`` tests every listed method.
    """
    if target.exchange == Exchange.ONLINE or AuthMethod.OAUTH in config.auth_methods_of(target):
        return AuthMethod.OAUTH
    return config.auth_methods_of(target)[0]


def app_access_hint(ctx: ProbeContext, target: Target, mailbox: str) -> str:
    """What gives an Entra app EWS access to one mailbox in Exchange Online, per Microsoft's RBAC for
    Applications guidance (learn.microsoft.com/exchange/permissions-exo/application-rbac): a scoped role
    assignment, and no unscoped grant beside it, since Entra's tenant-wide consent reaches every mailbox
    whatever the scope says (learn.microsoft.com/graph/auth-limit-mailbox-access)."""
    credential = ctx.config.credentials.get(target.credential or "")
    client_id = getattr(credential, "client_id", "<app id>")
    return (
        f"give the Entra app access to {mailbox} with RBAC for Applications: New-ServicePrincipal -AppId {client_id} "
        "(once), a management scope that includes the mailbox (New-ManagementScope -RecipientRestrictionFilter), "
        f'New-ManagementRoleAssignment -App {client_id} -Role "Application EWS.AccessAsApp" -CustomResourceScope '
        f"<scope>; check with Test-ServicePrincipalAuthorization -Identity {client_id} -Resource {mailbox}. Remove "
        "any tenant-wide full_access_as_app consent in Entra ID: it reaches every mailbox and defeats the scope. An "
        f"application access policy (Test-ApplicationAccessPolicy) or Get-CASMailbox {mailbox} | fl EwsEnabled may "
        "also leave the mailbox out"
    )


POLICY_BLOCK_HINT = (
    "Exchange Online refuses EWS for this mailbox: check the app's RBAC for Applications scope "
    "(Test-ServicePrincipalAuthorization), application access policies and Get-CASMailbox | fl EwsEnabled; "
    "bems_ews_disabled says whether EWS is blocked for the whole organisation"
)


def ews_result(
    ctx: ProbeContext,
    target: Target,
    response: HttpResponse,
    mailbox: str | None = None,
    block_hint: str = POLICY_BLOCK_HINT,
    method: AuthMethod | None = None,
) -> ews_soap.Answer:
    """The successful answer of a signed-in EWS call acting as ``mailbox``, or the failure it shows.

    Exchange Online's bare 403 raises PolicyBlock (``block_hint`` its hint); OrganisationEvidence may turn
    it into ``ews_disabled``. A 401 whose challenge does not offer ``method`` is ``method_not_offered``: the
    virtual directory, not the password, is what to fix.
    """
    if response.status == 401:
        offered = offered_methods(response)
        if method in NOT_OFFERED_HINTS and not offers(method, offered):
            raise ProbeFailure(
                Reason.METHOD_NOT_OFFERED,
                f"the server does not offer {method.value} (it offers {', '.join(sorted(offered)) or 'no method'})",
                NOT_OFFERED_HINTS[method],
            )
        raise ProbeFailure(Reason.UNAUTHORIZED, f"credentials rejected (HTTP 401){ews_soap.diagnostics(response)}")
    if is_policy_block(target, response):
        raise PolicyBlock(mailbox, block_hint)
    throttled_http(ctx, target, target.url, response)
    if response.status not in (200, 500):
        raise ProbeFailure(Reason.BAD_RESPONSE, f"unexpected HTTP {response.status}")
    answer = ews_answer(ctx, target, target.url, response)
    if answer.ok:
        return answer
    if answer.code in ews_soap.IMPERSONATION_DENIED_CODES or answer.code in ews_soap.ACCESS_DENIED_CODES:
        reason = Reason.IMPERSONATION_DENIED  # signed in, but not allowed into this mailbox
    elif answer.code in ews_soap.MAILBOX_NOT_FOUND_CODES:
        reason = Reason.MAILBOX_NOT_FOUND
    else:
        reason = Reason.SOAP_FAULT
    raise ProbeFailure(reason, f"{answer.code}: {answer.message[:200]}")
