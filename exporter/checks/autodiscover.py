"""``autodiscover``: Autodiscover finds each mailbox's EWS URL by every configured protocol
(``pox``, ``soap``, ``json``), and the URL is the configured EWS endpoint of the same Exchange side.

Redirects (HTTP 302, ``redirectAddr``/``redirectUrl``, SOAP ``RedirectAddress``/``RedirectUrl``) are
followed up to 10 hops, over HTTPS only, and only to the target's own origin or a host in
``allowed_redirect_hosts`` (an entry or its subdomains; never a public suffix, config.py). Anything
else is not followed and nothing is sent there (``redirect_blocked``): the 2021 "Autodiscover leak"
came from clients that did. A new address starts over at the target's own URL.

Credentials go to an origin, the target's own included, only after that origin's own 401 offered the
method: the first request there is anonymous (exchangelib's discovery also asks redirect targets
unauthenticated first). A server that answers without a challenge gets no credentials, and one that
challenges for another method (the leak's Basic "switcheroo") gets ``method_not_offered``.
"""

from __future__ import annotations

from functools import partial
from urllib.parse import urljoin, urlsplit

from ..config import AuthMethod, AutodiscoverProtocol, Config, EntraCredential, Kind, Target
from ..metrics import MetricSpec
from ..protocol import autodiscover_wire as protocol
from ..protocol.entra_tokens import Resource
from ..protocol.http_client import HttpResponse, origin
from ..results import CheckResult, ProbeFailure, Reason
from . import signin
from .base import Check, ProbeContext
from .mailboxes import Unit, each
from .signin import offered_methods, offers

SUCCESS = MetricSpec(
    "bems_autodiscover_success",
    "1 if Autodiscover returned an EWS URL for the mailbox by the protocol in the last check.",
    labels=("mailbox", "protocol"),
)
EWS_URL = MetricSpec(
    "bems_autodiscover_ews_url_info", "The EWS URL Autodiscover returned for the mailbox.", "info",
    labels=("mailbox", "url"),
)  # fmt: skip
URL_MATCH = MetricSpec(
    "bems_autodiscover_ews_url_match",
    "1 if every EWS URL Autodiscover returned for the mailbox is a configured EWS target of the same side.",
    labels=("mailbox",),
)
METHOD_HINT = (
    "the Autodiscover server did not ask for the method the target signs in with: check the Autodiscover virtual "
    "directory's authentication (Get-AutodiscoverVirtualDirectory | fl *Authentication) and where Autodiscover "
    "redirects; a host that asks for Basic instead of NTLM or OAuth is how credentials are phished"
)
REDIRECT_HINT = (
    "Autodiscover sent the exporter somewhere it was not allowed to go: check the Autodiscover DNS records and "
    "virtual directory URLs, or add the host to the target's allowed_redirect_hosts if it is really yours"
)


def _applies(_config: Config, target: Target) -> bool:
    return target.kind == Kind.AUTODISCOVER and bool(target.mailboxes)


def _requests(_config: Config, target: Target) -> int:
    return max(1, len(target.mailboxes)) * len(target.autodiscover_protocols)


def _method(config: Config, target: Target, kind: AutodiscoverProtocol) -> AuthMethod | None:
    """How Autodiscover asks, from the configuration alone: v2 and a target without credential
    anonymously, an Entra app with its token, a Windows account with the first method in ``auth``
    (the one BEMS uses; the auth check tests the others)."""
    if kind == AutodiscoverProtocol.JSON or target.credential is None:
        return None
    if isinstance(config.credentials.get(target.credential), EntraCredential):
        return AuthMethod.OAUTH
    return config.auth_methods_of(target)[0]


def normalized(url: str) -> tuple[str, str, int, str]:
    parts = urlsplit(url)
    return parts.scheme.lower(), (parts.hostname or "").lower(), parts.port or 443, parts.path.rstrip("/").lower()


# What each origin's 401 offered (WWW-Authenticate schemes), learnt in one check run.
Challenges = dict[tuple[str, str, int], set[str]]


async def discover(
    ctx: ProbeContext, target: Target, mailbox: str, kind: AutodiscoverProtocol, challenges: Challenges | None = None
) -> str:
    """Follow Autodiscover from the target to an EWS URL, within the redirect rules.

    ``challenges`` is shared by a run's mailboxes and protocols, so each origin is asked anonymously once.
    """
    allowed = target.allowed_redirect_hosts or ()
    challenges = {} if challenges is None else challenges
    method = _method(ctx.config, target, kind)
    address, url = mailbox, protocol.endpoint(kind, target.url, mailbox)
    seen: set[tuple[str, str]] = set()
    for _ in range(protocol.MAX_HOPS + 1):
        if (url, address) in seen:
            raise ProbeFailure(Reason.REDIRECT_BLOCKED, f"redirect loop at {url} for {address}", REDIRECT_HINT)
        seen.add((url, address))
        if not protocol.redirect_allowed(url, target.url, allowed):
            raise ProbeFailure(
                Reason.REDIRECT_BLOCKED,
                f"redirect to {url} not followed: only https to {protocol.allowed_text(target.url, allowed)} "
                "is allowed",
                REDIRECT_HINT,
            )
        response = await _challenged_first(ctx, target, url, address, kind, method, challenges)
        if response.status in (301, 302, 303, 307, 308):
            location = response.header("Location")
            if not location:
                raise ProbeFailure(Reason.BAD_RESPONSE, f"HTTP {response.status} without a Location from {url}")
            if kind == AutodiscoverProtocol.JSON and protocol.unknown_to_json(url, urljoin(url, location), address):
                raise ProbeFailure(Reason.MAILBOX_NOT_FOUND, f"Autodiscover v2 does not know {address}: it redirects "
                                   "the address back to itself")  # fmt: skip
            url = urljoin(url, location)
            continue
        if response.status == 401:
            raise ProbeFailure(Reason.UNAUTHORIZED, f"{url} rejected the credentials (HTTP 401)")
        signin.throttled_http(ctx, target, url, response)  # IIS queuing: back off, as EWS does
        if response.status == 403:
            raise ProbeFailure(Reason.FORBIDDEN, f"{url} denied access (HTTP 403)", _forbidden_hint(method))
        if response.status != 200:
            detail = protocol.error_detail(response)
            raise ProbeFailure(Reason.BAD_RESPONSE, f"HTTP {response.status} from {url}{detail}")
        read = {"pox": protocol.read_pox, "soap": protocol.read_soap, "json": protocol.read_json}[kind]
        found = read(response)
        if found.ews_url:
            return found.ews_url
        if found.redirect_address:
            if found.redirect_address.lower() == address.lower():
                raise ProbeFailure(Reason.BAD_RESPONSE, f"Autodiscover redirects {address} to itself")
            address = found.redirect_address  # a new address starts over at the target's own host
            url = protocol.endpoint(kind, target.url, address)
        else:
            url = found.redirect_url or ""
    raise ProbeFailure(Reason.REDIRECT_BLOCKED, f"more than {protocol.MAX_HOPS} redirects", REDIRECT_HINT)


def _forbidden_hint(method: AuthMethod | None) -> str:
    if method == AuthMethod.OAUTH:
        # learn.microsoft.com/exchange/permissions-exo/application-rbac: "The AutoDiscover service can't be
        # accessed when using RBAC Application roles".
        return (
            "Exchange Online's Autodiscover does not accept an app whose access is granted by RBAC for Applications: "
            "ask by the anonymous v2 protocol (the target's protocols: [json]) instead"
        )
    return "check the Autodiscover virtual directory's authentication and the account's rights to the mailbox"


async def _challenged_first(
    ctx: ProbeContext, target: Target, url: str, address: str, kind: AutodiscoverProtocol, method: AuthMethod | None,
    challenges: Challenges,
) -> HttpResponse:  # fmt: skip
    """The request with ``method``'s credentials, once the URL's origin has challenged for them."""
    if method is None:
        return await _ask(ctx, target, url, address, kind, None)
    where = origin(url)
    if where not in challenges:
        anonymous = await _ask(ctx, target, url, address, kind, None)
        if anonymous.status != 401:
            return anonymous  # answered, refused or redirected without a sign-in: nothing to sign in to
        challenges[where] = offered_methods(anonymous)
    if not offers(method, challenges[where]):
        offered = ", ".join(sorted(challenges[where])) or "no method"
        raise ProbeFailure(
            Reason.METHOD_NOT_OFFERED,
            f"{url} does not offer {method.value} (it offers {offered}): no credentials sent",
            METHOD_HINT,
        )
    return await _ask(ctx, target, url, address, kind, method)


async def _ask(
    ctx: ProbeContext, target: Target, url: str, address: str, kind: AutodiscoverProtocol, method: AuthMethod | None
) -> HttpResponse:
    if kind == AutodiscoverProtocol.JSON:
        return await signin.send(
            ctx, target, url, method=None, http_method="GET", headers={"Accept": "application/json"}
        )
    if kind == AutodiscoverProtocol.POX:
        body, headers = protocol.pox_request(address), protocol.POX_HEADERS
    else:
        body, headers = protocol.soap_request(address, url), protocol.SOAP_HEADERS
    return await signin.send(ctx, target, url, method=method, body=body, headers=dict(headers), scope=Resource.EXCHANGE)


async def _attempt(ctx: ProbeContext, target: Target, mailbox: str, kind: AutodiscoverProtocol,
                   found: dict[str, set[str]], challenges: Challenges) -> str:  # fmt: skip
    url = await discover(ctx, target, mailbox, kind, challenges)
    found.setdefault(mailbox, set()).add(url)
    return f"EWS at {url}"


async def probe(target: Target, ctx: ProbeContext) -> CheckResult:
    found: dict[str, set[str]] = {}
    challenges: Challenges = {}
    units = [
        Unit(f"{kind.value} Autodiscover for {mailbox}", {"mailbox": mailbox, "protocol": kind.value},
             partial(_attempt, ctx, target, mailbox, kind, found, challenges))
        for mailbox in target.mailboxes
        for kind in target.autodiscover_protocols
    ]  # fmt: skip
    ews_targets = {
        normalized(t.url) for t in ctx.config.targets if t.kind == Kind.EWS and t.exchange == target.exchange
    }
    try:
        await each(ctx, units, SUCCESS)
    finally:
        for mailbox, urls in found.items():
            for url in sorted(urls):
                ctx.rec.measure(EWS_URL, 1.0, mailbox=mailbox, url=url)
            if ews_targets:
                match = all(normalized(url) in ews_targets for url in urls)
                ctx.rec.measure(URL_MATCH, 1.0 if match else 0.0, mailbox=mailbox)
    return ctx.rec.passed()


CHECK = Check(
    "autodiscover",
    probe,
    _applies,
    (SUCCESS, EWS_URL, URL_MATCH),
    uses_credential=True,
    requests=_requests,
    per_mailbox=True,
)
