"""The scenario verdict: does the deployment meet the vendor's prerequisites for its scenario?

Each Exchange side a scenario involves has requirements (ids are a public contract); each is met when
every check it rests on passed in its latest run. A requirement with nothing configured to check it is
unmet with reason ``not_configured``; one whose checks have not run yet is unmet with ``pending``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client.core import GaugeMetricFamily, Metric

from .config import Config, EntraCredential, Exchange, Kind, Scenario, Target, WindowsCredential
from .metrics import MetricSpec
from .probes import planned_checks
from .store import ResultStore

NOT_CONFIGURED = "not_configured"
PENDING = "pending"

SIDES = {
    Scenario.CLOUD_BEMS_ONPREM_EXCHANGE: (Exchange.ONPREM,),
    Scenario.ONPREM_BEMS_CLOUD_EXCHANGE: (Exchange.ONLINE,),
    Scenario.ONPREM_BEMS_HYBRID: (Exchange.ONPREM, Exchange.ONLINE),
}

REQUIREMENT_MET = MetricSpec(
    "bems_requirement_met", "1 if the scenario's requirement holds on that Exchange side, from the latest checks.",
    labels=("scenario", "exchange", "requirement"), per_target=False,
)  # fmt: skip
REQUIREMENT_REASON = MetricSpec(
    "bems_requirement_failure_reason",
    "1 for why the requirement is unmet: not_configured, pending, or the reason of a failing check.",
    labels=("scenario", "exchange", "requirement", "reason"), per_target=False,
)  # fmt: skip
SCENARIO_READY = MetricSpec(
    "bems_scenario_ready", "1 when every requirement of the configured scenario is met.",
    labels=("scenario",), per_target=False,
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Verdict:
    exchange: Exchange
    requirement: str
    met: bool
    reason: str = ""
    detail: str = ""
    hint: str = ""


Pairs = list[tuple[str, str]]  # (target, check) pairs a requirement rests on


def _targets(config: Config, side: Exchange, *kinds: Kind) -> list[Target]:
    return [t for t in config.targets if t.exchange == side and t.kind in kinds]


def _checks(store: ResultStore, targets: list[Target], *checks: str) -> Pairs:
    return [(t.name, c) for t in targets for c in checks if c in store.checks.get(t.name, ())]


def _judge(store: ResultStore, pairs: Pairs) -> tuple[bool, str, str]:
    if not pairs:
        return False, NOT_CONFIGURED, "no configured target checks it"
    for target, check in pairs:
        result = store.latest.get((target, check))
        if result is None:
            return False, PENDING, f"{target}: {check} has not run yet"
        if not result.success:
            return False, result.reason.value if result.reason else "failed", f"{target}: {check}: {result.message}"
    return True, "", ""


def _windows_auth(config: Config, store: ResultStore, side: Exchange) -> tuple[bool, str, str]:
    """At least one of Basic and Windows authentication signs in, on every on-premises target that signs in."""
    targets = [
        t for t in _targets(config, side, Kind.EWS, Kind.AUTODISCOVER)
        if isinstance(config.credentials.get(t.credential or ""), WindowsCredential)
    ]  # fmt: skip
    pairs = _checks(store, targets, "auth")
    if not pairs:
        return _judge(store, pairs)
    for target, check in pairs:
        result = store.latest.get((target, check))
        if result is None:
            return False, PENDING, f"{target}: auth has not run yet"
        methods = {dict(m.labels)["method"]: m.value for m in result.measurements if m.metric == "bems_auth_success"}
        if not any(methods.get(m) == 1.0 for m in ("basic", "ntlm")):
            return False, result.reason.value if result.reason else "failed", f"{target}: {result.message}"
    return True, "", ""


def _modern_auth(config: Config, store: ResultStore, side: Exchange) -> tuple[bool, str, str]:
    credentials = {
        t.credential for t in config.targets
        if t.exchange == side and isinstance(config.credentials.get(t.credential or ""), EntraCredential)
    }  # fmt: skip
    token_targets = [
        t for t in config.targets if "token" in store.checks.get(t.name, ()) and t.credential in credentials
    ]
    return _judge(store, _checks(store, token_targets, "token"))


Rule = Callable[[Config, ResultStore, Exchange], tuple[bool, str, str]]


def _reachable(kind: Kind) -> Rule:
    return lambda config, store, side: _judge(
        store, _checks(store, _targets(config, side, kind), "reachability", "tls")
    )


def _passes(kind: Kind, check: str) -> Rule:
    return lambda config, store, side: _judge(store, _checks(store, _targets(config, side, kind), check))


def _online_impersonation(config: Config, store: ResultStore, side: Exchange) -> tuple[bool, str, str]:
    # App access to every online mailbox, through Graph and, while Exchange Online still serves EWS, EWS.
    pairs = _checks(store, _targets(config, side, Kind.GRAPH), "graph")
    pairs += _checks(store, _targets(config, side, Kind.EWS), "impersonation")
    return _judge(store, pairs)


HINTS = {
    "ews_reachable": "EWS must answer on port 443 with a valid certificate: see the reachability and tls checks",
    "autodiscover_reachable": "Autodiscover must answer on port 443 with a valid certificate",
    "basic_or_windows_auth": "enable Basic or Windows authentication on the EWS and Autodiscover virtual "
    "directories for the BEMS service account",
    "impersonation": "New-ManagementRoleAssignment -Name:BlackBerryAppImpersonation -Role:ApplicationImpersonation "
    "-User:BEMSAdmin (on-premises); in Exchange Online give the Entra app access to the mailboxes "
    "(RBAC for Applications)",
    "modern_auth": "the Entra app must obtain tokens: check its secret or certificate, tenant and client id",
    "graph_access": "grant the Entra app Mail.Read and User.Read.All (application) and scope its access to the "
    "mailboxes BEMS serves",
}


def _rules(config: Config, side: Exchange) -> dict[str, Rule]:
    if side == Exchange.ONPREM:
        return {
            "ews_reachable": _reachable(Kind.EWS),
            "autodiscover_reachable": _reachable(Kind.AUTODISCOVER),
            "basic_or_windows_auth": _windows_auth,
            "impersonation": _passes(Kind.EWS, "impersonation"),
        }
    rules: dict[str, Rule] = {
        "autodiscover_reachable": _reachable(Kind.AUTODISCOVER),
        "modern_auth": _modern_auth,
        "graph_access": _passes(Kind.GRAPH, "graph"),
        "impersonation": _online_impersonation,
    }
    if _targets(config, side, Kind.EWS):  # only while an online EWS target is configured
        rules["ews_reachable"] = _reachable(Kind.EWS)
    return rules


def evaluate(config: Config, store: ResultStore) -> list[Verdict]:
    verdicts = []
    for side in SIDES[config.scenario]:
        for requirement, rule in _rules(config, side).items():
            met, reason, detail = rule(config, store, side)
            if reason == NOT_CONFIGURED and config.shard is not None:
                continue  # another shard checks it (or none does: the unsharded --config.check says so)
            verdicts.append(Verdict(side, requirement, met, reason, detail, "" if met else HINTS[requirement]))
    return verdicts


def families(config: Config, store: ResultStore) -> Iterator[Metric]:
    verdicts = evaluate(config, store)
    scenario = config.scenario.value
    met = GaugeMetricFamily(REQUIREMENT_MET.name, REQUIREMENT_MET.help, labels=list(REQUIREMENT_MET.labels))
    why = GaugeMetricFamily(REQUIREMENT_REASON.name, REQUIREMENT_REASON.help, labels=list(REQUIREMENT_REASON.labels))
    for verdict in verdicts:
        labels = [scenario, verdict.exchange.value, verdict.requirement]
        met.add_metric(labels, 1.0 if verdict.met else 0.0)
        if not verdict.met:
            why.add_metric([*labels, verdict.reason], 1.0)
    ready = GaugeMetricFamily(SCENARIO_READY.name, SCENARIO_READY.help, labels=["scenario"])
    ready.add_metric([scenario], 1.0 if all(v.met for v in verdicts) else 0.0)
    yield from (met, why, ready)


def unconfigured(config: Config) -> list[str]:
    """Requirements nothing in the configuration checks, for ``--config.check`` to warn about."""
    store = ResultStore(targets=config.targets_by_name(), checks=planned_checks(config))
    return [f"{v.exchange.value}: {v.requirement}" for v in evaluate(config, store) if v.reason == NOT_CONFIGURED]
