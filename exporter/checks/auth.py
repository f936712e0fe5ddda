"""``auth``: the service account signs in to EWS or Autodiscover with each configured method.

First an unauthenticated request: its 401 tells which methods the server offers (``WWW-Authenticate``),
and credentials are never sent before the server asked for them. Then, per method:

- ``basic``: the same request with ``Authorization: Basic``;
- ``ntlm``: the NTLM handshake through requests-ntlm, with channel binding, in a worker thread;
- ``kerberos``: a Kerberos ticket for the target's service principal inside Negotiate, with channel
  binding, through pyspnego and MIT krb5 in a worker thread; what the KDC refuses is a reason of its own
  (``kerberos_unknown_spn``, ``kerberos_clock_skew``, ...: ``protocol/kerberos.py``);
- ``oauth``: an app-only token from MSAL, sent as ``Bearer`` with ``X-AnchorMailbox`` and the
  ``ExchangeImpersonation`` header for the first mailbox, as Exchange Online requires;
- ``certificate``: the same request over a TLS connection that presents the credential's client
  certificate, which IIS maps to the account. A 401 means the certificate was not asked for or not taken
  (``certificate_not_requested``), IIS's 403 substatus says why it was refused (``certificate_rejected``,
  ``certificate_expired``; ``_CERTIFICATE_REFUSALS``).

A 200 (or a SOAP fault that is not about access) proves the sign-in; a 401 is ``unauthorized``,
``ErrorAccessDenied``/403 is ``forbidden``; throttling (the ErrorServerBusy family, HTTP 503) is
``throttled`` and holds the account's back-off. Exchange Online's bare 403 is ``forbidden`` for the
mailbox the request acted as, unless the same request without ``ExchangeImpersonation`` gets it too:
then EWS is blocked for the whole organisation (``ews_disabled``, ``bems_ews_disabled`` 1; see
``signin.OrganisationEvidence``). The check passes only when every method worked.

Extended Protection: when NTLM or Kerberos is answered 401, the same sign-in is tried once more without
channel bindings, only to diagnose and once per failure episode (until the method signs in again); if
that one is let in, the bindings do not match the certificate Exchange sees, because something in front of
Exchange terminates TLS (``channel_binding_mismatch``). Its answer is never used as a sign-in.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from ..config import AuthMethod, Config, Exchange, Kind, Target
from ..metrics import MetricSpec
from ..protocol import autodiscover_wire, ews_soap
from ..protocol.entra_tokens import Resource
from ..protocol.http_client import HttpResponse
from ..results import CheckResult, ProbeFailure, Reason
from . import signin
from .base import Check, ProbeContext
from .signin import offered_methods, offers

SUCCESS = MetricSpec(
    "bems_auth_success", "1 if the method signed in during the last auth check, else 0.", labels=("method",)
)
DURATION = MetricSpec(
    "bems_auth_duration_seconds", "How long the method's sign-in took in the last auth check.", labels=("method",)
)
OFFERED = MetricSpec(
    "bems_auth_offered",
    "1 if the endpoint's unauthenticated 401 advertises the method in WWW-Authenticate, else 0.",
    labels=("method",),
)
EWS_DISABLED = MetricSpec(
    "bems_ews_disabled",
    "1 when Exchange Online blocked EWS for the whole organisation in the last auth check (HTTP 403, empty body, "
    "also without ExchangeImpersonation).",
)
NTLM_ONLY = MetricSpec(
    "bems_auth_ntlm_only",
    "On-premises targets that test ntlm: 1 when NTLM signed in during the last auth check and Kerberos did not "
    "(failed or not configured), so sign-in breaks when the domain disables NTLM; else 0.",
)
ADVERTISED = ("basic", "ntlm", "negotiate", "bearer")

_HINTS = {
    **{(method, Reason.METHOD_NOT_OFFERED): hint for method, hint in signin.NOT_OFFERED_HINTS.items()},
    (AuthMethod.BASIC, Reason.UNAUTHORIZED): "check the password, and that the account is neither locked out "
    "nor expired (Get-ADUser BEMSAdmin -Properties LockedOut,PasswordExpired)",
    (AuthMethod.NTLM, Reason.UNAUTHORIZED): "check the password and the account; with Extended Protection, a "
    "TLS-terminating device between BEMS and Exchange breaks Windows authentication",
    (AuthMethod.KERBEROS, Reason.UNAUTHORIZED): "Exchange refused a ticket the KDC issued: the service principal "
    "is registered on another account than the one whose key Exchange holds (setspn -X finds duplicates; a "
    "load-balanced namespace needs the alternate service account on every server: "
    "RollAlternateServiceAccountPassword.ps1); or Extended Protection (Require) behind a device that terminates "
    "TLS in front of Exchange",
    **{
        (method, Reason.CHANNEL_BINDING_MISMATCH): "Extended Protection is on and the channel binding does not "
        "match: TLS is terminated in front of Exchange (a load balancer or reverse proxy that offloads or "
        "re-encrypts SSL). Microsoft's Extended Protection guidance: SSL offloading is not supported; use SSL "
        "bridging with the same certificate on the device and on Exchange, or pass TLS through "
        "(learn.microsoft.com/exchange/plan-and-deploy/post-installation-tasks/security-best-practices/"
        "exchange-extended-protection)"
        for method in (AuthMethod.NTLM, AuthMethod.KERBEROS)
    },
    (AuthMethod.OAUTH, Reason.UNAUTHORIZED): "give the Entra app EWS access: an RBAC for Applications role "
    'assignment (New-ManagementRoleAssignment -App <app id> -Role "Application EWS.AccessAsApp" '
    "-CustomResourceScope <scope>), or for every mailbox the Office 365 Exchange Online application permission "
    "full_access_as_app with admin consent (not both: the consent defeats any scope); allow the app in "
    "EwsAllowedAppIDs if that is set",
    (AuthMethod.OAUTH, Reason.TOKEN): "check the app's client secret or certificate (expired?), the tenant id "
    "and the client id in Entra ID",
}


# On-premises, a refused token is hybrid modern authentication's set-up, not an RBAC for Applications scope.
_ONPREM_HINTS = {
    (AuthMethod.OAUTH, Reason.UNAUTHORIZED): "hybrid modern authentication: add the on-premises URL (the "
    "target's origin) to the servicePrincipalNames of Office 365 Exchange Online (00000002-0000-0ff1-ce00-"
    "000000000000) in Entra ID, enable OAuth on the virtual directory (Set-WebServicesVirtualDirectory "
    "-OAuthAuthentication $true), check the EvoSTS auth server (Get-AuthServer) and "
    "Get-OrganizationConfig | fl OAuth2ClientProfileEnabled; x-ms-diagnostics in the message names the cause",
}


def _hint(target: Target, method: AuthMethod, reason: Reason) -> str:
    if target.exchange == Exchange.ONPREM and (method, reason) in _ONPREM_HINTS:
        return _ONPREM_HINTS[(method, reason)]
    return _HINTS.get((method, reason), "")


def _applies(config: Config, target: Target) -> bool:
    return target.kind in (Kind.EWS, Kind.AUTODISCOVER) and bool(config.auth_methods_of(target))


def _request_for(target: Target, methods: tuple[AuthMethod, ...]) -> tuple[str, bytes, dict[str, str]]:
    mailbox = target.mailboxes[0] if target.mailboxes else None
    if target.kind == Kind.AUTODISCOVER:
        if mailbox is None:
            raise ProbeFailure(
                Reason.INTERNAL,
                "an Autodiscover sign-in needs a mailbox to ask for",
                "add one to the target's mailboxes",
            )
        return (
            autodiscover_wire.pox_url(target.url),
            autodiscover_wire.pox_request(mailbox),
            dict(autodiscover_wire.POX_HEADERS),
        )
    # App-only EWS must say whose mailbox it acts for; Windows accounts act as themselves.
    impersonate = mailbox if AuthMethod.OAUTH in methods else None
    return target.url, ews_soap.get_folder("msgfolderroot", impersonate), dict(ews_soap.SOAP_HEADERS)


@dataclass(frozen=True, slots=True)
class _Refusal:
    reason: Reason
    meaning: str
    hint: str


_MAPPING_HINT = (
    "map the certificate to the service account: a one-to-one mapping to BEMSAdmin (IIS's "
    "iisClientCertificateMappingAuthentication, oneToOneMappings) or Active Directory client certificate mapping "
    "(clientCertificateMappingAuthentication: the certificate's UPN names the account)"
)
# IIS's 403 substatus codes for client certificates (learn.microsoft.com/troubleshoot/iis/http-status-code,
# "403 - Forbidden"). IIS's detailed error page names them ("HTTP Error 403.16 - Forbidden"); the custom
# error page remote clients get by default does not, and then the IIS log's sc-substatus does.
_CERTIFICATE_REFUSALS = {
    7: _Refusal(
        Reason.CERTIFICATE_NOT_REQUESTED,
        "client certificate required: IIS got none in the TLS handshake",
        "have the HTTPS binding ask for the certificate in the handshake (netsh http update sslcert "
        "ipport=0.0.0.0:443 ... clientcertnegotiation=enable): HTTP.sys cannot ask later over TLS 1.3",
    ),
    12: _Refusal(Reason.CERTIFICATE_REJECTED, "mapper denied access", _MAPPING_HINT),
    13: _Refusal(
        Reason.CERTIFICATE_REJECTED,
        "client certificate revoked",
        "the issuing CA revoked the certificate: issue a new one and map it to the account",
    ),
    16: _Refusal(
        Reason.CERTIFICATE_REJECTED,
        "client certificate untrusted or invalid",
        "Exchange does not trust the certificate: import its issuing CA into the server's Trusted Root "
        "Certification Authorities (and intermediates into Intermediate), check the Client Authentication EKU and "
        "that Exchange reaches the CA's CRL",
    ),
    17: _Refusal(
        Reason.CERTIFICATE_EXPIRED,
        "client certificate has expired or is not yet valid",
        "renew the client certificate (openssl x509 -noout -dates -in <certificate_file>), map the new one to the "
        "account, and check the Exchange server's clock",
    ),
}
_IIS_SUBSTATUS = re.compile(rb"\b403\.(\d{1,2})\b")
_NOT_REQUESTED_HINT = (
    "require client certificates on the virtual directory (Set-WebConfigurationProperty -PSPath IIS:\\ "
    "-Location 'Default Web Site/EWS' -Filter system.webServer/security/access -Name sslFlags -Value "
    "'Ssl,SslNegotiateCert,SslRequireCert'; the same for Autodiscover) and enable certificate mapping "
    "(-Filter system.webServer/security/authentication/clientCertificateMappingAuthentication -Name enabled "
    "-Value $true), or drop certificate from the target's auth list"
)


def _judge_certificate(response: HttpResponse) -> None:
    """Raise the failure of a 401 or 403 answered over a connection that presented the client certificate."""
    if response.status == 401:
        offered = ", ".join(sorted(offered_methods(response))) or "no method"
        raise ProbeFailure(
            Reason.CERTIFICATE_NOT_REQUESTED,
            f"HTTP 401 (it offers {offered}): the server did not ask for the client certificate, or did not map it",
            _NOT_REQUESTED_HINT,
        )
    if response.status != 403:
        return
    found = _IIS_SUBSTATUS.search(response.body[:4096])
    substatus = int(found.group(1)) if found else None
    refusal = _CERTIFICATE_REFUSALS.get(substatus) if substatus is not None else None
    if refusal is None:
        raise ProbeFailure(
            Reason.CERTIFICATE_REJECTED,
            "HTTP 403 to the client certificate, without an IIS substatus",
            "the IIS log's sc-substatus says why: 7 none arrived in the handshake, 12 not mapped to the account, "
            "13 revoked, 16 untrusted, 17 expired",
        )
    raise ProbeFailure(refusal.reason, f"HTTP 403.{substatus}: {refusal.meaning}", refusal.hint)


def _judge(ctx: ProbeContext, target: Target, url: str, response: HttpResponse) -> str:
    """Raise the failure an authenticated answer shows, or return a detail line for the report."""
    if response.status == 401:
        raise ProbeFailure(Reason.UNAUTHORIZED, f"credentials rejected (HTTP 401){ews_soap.diagnostics(response)}")
    if signin.is_policy_block(target, response) and target.kind == Kind.EWS:
        mailbox = target.mailboxes[0] if target.mailboxes else None
        hint = signin.app_access_hint(ctx, target, mailbox) if mailbox else signin.POLICY_BLOCK_HINT
        raise signin.PolicyBlock(mailbox, hint)
    if response.status == 403:
        raise ProbeFailure(Reason.FORBIDDEN, "signed in, but access is forbidden (HTTP 403)")
    signin.throttled_http(ctx, target, url, response)
    if response.status not in (200, 500):
        raise ProbeFailure(Reason.BAD_RESPONSE, f"unexpected HTTP {response.status} after signing in")
    if target.kind == Kind.AUTODISCOVER:
        if response.status != 200:
            raise ProbeFailure(Reason.BAD_RESPONSE, f"HTTP {response.status} from Autodiscover")
        autodiscover_wire.check_pox_answer(response)
        return "Autodiscover answered"
    answer = signin.ews_answer(ctx, target, url, response)
    if answer.code in ews_soap.ACCESS_DENIED_CODES:
        raise ProbeFailure(Reason.FORBIDDEN, f"signed in, but {answer.code}: {answer.message[:200]}")
    return f"EWS answered {answer.code}" + (" (a SOAP fault, after signing in)" if answer.fault else "")


async def _send(
    ctx: ProbeContext, target: Target, url: str, body: bytes, headers: dict[str, str], method: AuthMethod | None
) -> HttpResponse:
    anchor = {"X-AnchorMailbox": target.mailboxes[0]} if method == AuthMethod.OAUTH and target.mailboxes else {}
    return await signin.send(
        ctx, target, url, method=method, body=body, headers=headers | anchor, scope=Resource.EXCHANGE, follow=True
    )


_BINDING_METHODS = (AuthMethod.NTLM, AuthMethod.KERBEROS)


async def _binding_diagnosis(
    ctx: ProbeContext, target: Target, url: str, body: bytes, headers: dict[str, str], method: AuthMethod
) -> ProbeFailure | None:
    """After a 401 with channel bindings: whether the same sign-in without them is let in (see the module doc).

    Asked once per failure episode of (target, method); the verdict is kept until the method signs in.
    """
    episodes = ctx.resources.binding_diagnoses
    key = (target.name, method)
    if key not in episodes:
        episodes[key] = False
        assert target.credential is not None
        try:
            signin.check_suspension(ctx, target.credential)
            unbound = await signin.windows_post(ctx, target, url, method, body, headers, bind_channel=False)
        except ProbeFailure:
            return None  # suspended, or failing for another reason: nothing learnt about the bindings
        if method == AuthMethod.NTLM:  # a password presented to the domain controller, as any NTLM sign-in
            ctx.resources.suspensions.observe(target.credential, unauthorized=unbound.status == 401)
        episodes[key] = unbound.status != 401
    if not episodes[key]:
        return None
    return ProbeFailure(
        Reason.CHANNEL_BINDING_MISMATCH,
        f"{method.value} is refused with channel binding (HTTP 401) and let in without it: Extended Protection "
        "is on and the binding does not match the certificate Exchange sees",
    )


def _require_offered(method: AuthMethod, offered: set[str]) -> None:
    # A client certificate is asked for in the TLS handshake, never in WWW-Authenticate.
    if method == AuthMethod.CERTIFICATE or offers(method, offered):
        return
    raise ProbeFailure(
        Reason.METHOD_NOT_OFFERED,
        f"the server does not offer {method.value} (it offers {', '.join(sorted(offered)) or 'no method'})",
    )


async def probe(target: Target, ctx: ProbeContext) -> CheckResult:
    methods = ctx.config.auth_methods_of(target)
    url, body, headers = _request_for(target, methods)
    async with ctx.rec.step(f"unauthenticated POST {urlsplit(url).path}") as detail:
        challenge = await _send(ctx, target, url, body, headers, None)
        offered = offered_methods(challenge)
        detail.append(f"HTTP {challenge.status}; offers {', '.join(sorted(offered)) or 'nothing'}")
    for scheme in ADVERTISED:
        ctx.rec.measure(OFFERED, 1.0 if scheme in offered else 0.0, method=scheme)
    failures: list[ProbeFailure] = []
    signed_in: set[AuthMethod] = set()
    evidence = signin.OrganisationEvidence(ctx, target)
    for method in methods:
        t0 = time.perf_counter()
        try:
            async with ctx.rec.step(f"{method.value} sign-in") as detail:
                try:
                    _require_offered(method, offered)
                    response = await _send(ctx, target, url, body, headers, method)
                    if method == AuthMethod.CERTIFICATE:
                        _judge_certificate(response)
                    try:
                        detail.append(_judge(ctx, target, url, response))
                    except signin.PolicyBlock as block:
                        raise await evidence.failure(block) from None
                except ProbeFailure as failure:
                    if failure.reason == Reason.UNAUTHORIZED and method in _BINDING_METHODS:
                        failure = await _binding_diagnosis(ctx, target, url, body, headers, method) or failure
                    failure.hint = failure.hint or _hint(target, method, failure.reason)
                    raise failure from None
            ok = True
            signed_in.add(method)
            ctx.resources.binding_diagnoses.pop((target.name, method), None)
        except ProbeFailure as failure:
            failures.append(failure)
            ok = False
        ctx.rec.measure(SUCCESS, 1.0 if ok else 0.0, method=method.value)
        ctx.rec.measure(DURATION, time.perf_counter() - t0, method=method.value)
    if target.exchange == Exchange.ONPREM and AuthMethod.NTLM in methods:
        ntlm_only = AuthMethod.NTLM in signed_in and AuthMethod.KERBEROS not in signed_in
        ctx.rec.measure(NTLM_ONLY, 1.0 if ntlm_only else 0.0)
    if target.kind == Kind.EWS and target.exchange == Exchange.ONLINE:
        disabled = any(f.reason == Reason.EWS_DISABLED for f in failures)
        ctx.rec.measure(EWS_DISABLED, 1.0 if disabled else 0.0)
    if failures:
        first = failures[0]
        raise ProbeFailure(first.reason, "; ".join(f.message for f in failures), first.hint)
    return ctx.rec.passed()


CHECK = Check("auth", probe, _applies, (SUCCESS, DURATION, OFFERED, NTLM_ONLY, EWS_DISABLED), uses_credential=True)
