"""``token``: each Entra ID credential obtains an app-only token for every scope its targets need.

The check runs once per credential (scheduled with the first target that uses it) and reads tokens
through MSAL's cache, so Entra ID sees one token request per token lifetime per credential and scope,
however often the check runs. The AADSTS code of a failure goes to the log and the ``probe`` report,
never into a label.
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from urllib.parse import quote

from ..config import AuthMethod, Config, EntraCredential, Kind, Target
from ..metrics import MetricSpec
from ..protocol.entra_tokens import Resource, TokenError, certificate_expiry
from ..results import CheckResult, ProbeFailure, Reason
from . import signin
from .base import Check, ProbeContext

SUCCESS = MetricSpec(
    "bems_oauth_token_success", "1 if the credential obtained every token it needs in the last token check.",
    labels=("credential",), per_target=False,
)  # fmt: skip
EXPIRY = MetricSpec(
    "bems_oauth_token_expiry_timestamp_seconds", "When the earliest of the credential's current tokens expires.",
    labels=("credential",), per_target=False,
)  # fmt: skip
DURATION = MetricSpec(
    "bems_oauth_token_duration_seconds", "How long obtaining the credential's tokens took in the last token check.",
    labels=("credential",), per_target=False,
)  # fmt: skip
CREDENTIAL_EXPIRY = MetricSpec(
    "bems_entra_credential_expiry_timestamp_seconds",
    "When the Entra app's configured secret or certificate expires (kind: secret, certificate); absent when "
    "unknown (a secret, and the app may not read its own registration).",
    labels=("credential", "kind"), per_target=False,
)  # fmt: skip
HINT = (
    "check the app registration in Entra ID: the client secret or certificate (expired?), the tenant id and the "
    "client id; the AADSTS code names the cause"
)


def _resource(target: Target) -> Resource:
    return Resource.GRAPH if target.kind == Kind.GRAPH else Resource.EXCHANGE


def _applies(config: Config, target: Target) -> bool:
    if not isinstance(config.credentials.get(target.credential or ""), EntraCredential):
        return False
    first = next(t for t in config.targets if t.credential == target.credential)
    return first.name == target.name


async def probe(target: Target, ctx: ProbeContext) -> CheckResult:
    name = target.credential or ""
    credential = ctx.config.credentials[name]
    assert isinstance(credential, EntraCredential)
    scopes = sorted({
        signin.token_scope(credential, t, _resource(t)) for t in ctx.config.targets if t.credential == name
    })  # fmt: skip
    t0, expiries, ok = time.perf_counter(), [], False
    try:
        for scope in scopes:
            async with ctx.rec.step(f"token for {scope} as {name}") as detail:
                try:
                    token = await ctx.resources.run_blocking(
                        ctx.resources.entra.acquire, name, credential, scope,
                        ca_file=ctx.ca_file, proxy=ctx.proxy(target), timeout=ctx.timeout,
                    )  # fmt: skip
                except TokenError as err:
                    raise ProbeFailure(Reason.TOKEN, f"no token from Entra ID: {err}", HINT) from None
                expiries.append(token.expires_at)
                minutes = (token.expires_at - time.time()) / 60
                detail.append(f"{'from the cache' if token.from_cache else 'issued'}, valid {minutes:.0f} more min")
        ok = True
    finally:
        ctx.rec.measure(SUCCESS, 1.0 if ok else 0.0, credential=name)
        ctx.rec.measure(DURATION, time.perf_counter() - t0, credential=name)
        if expiries:
            ctx.rec.measure(EXPIRY, min(expiries), credential=name)
    await _credential_expiry(ctx, name, credential)
    return ctx.rec.passed()


async def _credential_expiry(ctx: ProbeContext, name: str, credential: EntraCredential) -> None:
    """When the app's secret or certificate stops working: a certificate says so itself; Graph knows both,
    when the app may read its own registration (Application.Read.All). Not knowing is not a failure."""
    kinds: dict[str, float] = {}
    own_certificate = certificate_expiry(credential)
    if own_certificate is not None:
        kinds["certificate"] = own_certificate
    graph_target = next((t for t in ctx.config.targets if t.kind == Kind.GRAPH and t.credential == name), None)
    if graph_target is not None:
        async with ctx.rec.step(f"credential end dates of {name} from Graph") as detail:
            registered = await _registered_end_dates(ctx, graph_target, credential)
            detail.append(", ".join(f"{k} until {time.strftime('%Y-%m-%d', time.gmtime(v))}"
                                    for k, v in registered.items()) or _UNKNOWN)  # fmt: skip
            kinds = registered | kinds  # the certificate file itself wins over the registration
    for kind, when in kinds.items():
        ctx.rec.measure(CREDENTIAL_EXPIRY, when, credential=name, kind=kind)


_UNKNOWN = "unknown: the app may not read its own registration (grant Application.Read.All to see its end dates)"


async def _registered_end_dates(ctx: ProbeContext, target: Target, credential: EntraCredential) -> dict[str, float]:
    url = f"{target.url.rstrip('/')}/applications(appId='{quote(credential.client_id)}')"
    try:
        response = await signin.send(ctx, target, url, method=AuthMethod.OAUTH, scope=Resource.GRAPH, http_method="GET",
                                     headers={"Accept": "application/json"})  # fmt: skip
        app = json.loads(response.body) if response.status == 200 else None
    except (ProbeFailure, ValueError):
        return {}
    if not isinstance(app, dict):
        return {}
    found: dict[str, float] = {}
    secret = credential.client_secret.get_secret_value() if credential.client_secret else None
    passwords = [p for p in app.get("passwordCredentials") or [] if isinstance(p, dict)]
    # Graph shows a secret's first three characters as its hint: that picks out the configured one.
    mine = [p for p in passwords if secret and p.get("hint") == secret[:3]] or passwords
    if secret and (end := _earliest(mine)) is not None:
        found["secret"] = end
    keys = [k for k in app.get("keyCredentials") or [] if isinstance(k, dict)]
    if credential.certificate_file and (end := _earliest(keys)) is not None:
        found["certificate"] = end
    return found


def _earliest(credentials: list[dict[str, object]]) -> float | None:
    ends = []
    for item in credentials:
        try:
            ends.append(datetime.fromisoformat(str(item.get("endDateTime", "")).replace("Z", "+00:00")).timestamp())
        except ValueError:
            continue
    return min(ends) if ends else None


CHECK = Check("token", probe, _applies, (SUCCESS, EXPIRY, DURATION, CREDENTIAL_EXPIRY), uses_credential=True)
