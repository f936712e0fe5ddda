"""``token``: each Entra ID credential obtains an app-only token for every scope its targets need.

The check runs once per credential (scheduled with the first target that uses it) and reads tokens
through MSAL's cache, so Entra ID sees one token request per token lifetime per credential and scope,
however often the check runs. The AADSTS code of a failure goes to the log and the ``probe`` report,
never into a label.
"""

from __future__ import annotations

import time

from ..config import Config, EntraCredential, Kind, Target
from ..entra import EWS_SCOPE, GRAPH_SCOPE, TokenError
from ..metrics import MetricSpec
from ..results import CheckResult, ProbeFailure, Reason
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
HINT = (
    "check the app registration in Entra ID: the client secret or certificate (expired?), the tenant id and the "
    "client id; the AADSTS code names the cause"
)


def _scope(target: Target) -> str:
    return GRAPH_SCOPE if target.kind == Kind.GRAPH else EWS_SCOPE


def _applies(config: Config, target: Target) -> bool:
    if not isinstance(config.credentials.get(target.credential or ""), EntraCredential):
        return False
    first = next(t for t in config.targets if t.credential == target.credential)
    return first.name == target.name


async def probe(target: Target, ctx: ProbeContext) -> CheckResult:
    name = target.credential or ""
    credential = ctx.config.credentials[name]
    assert isinstance(credential, EntraCredential)
    scopes = sorted({_scope(t) for t in ctx.config.targets if t.credential == name})
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
        ctx.rec.measure(SUCCESS.name, 1.0 if ok else 0.0, credential=name)
        ctx.rec.measure(DURATION.name, time.perf_counter() - t0, credential=name)
        if expiries:
            ctx.rec.measure(EXPIRY.name, min(expiries), credential=name)
    return ctx.rec.passed()


CHECK = Check("token", probe, _applies, (SUCCESS, EXPIRY, DURATION), uses_credential=True)
