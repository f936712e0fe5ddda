"""The scenario verdict: does the deployment meet the vendor's prerequisites for its scenario?

Each Exchange side a scenario involves has requirements (ids are a public contract); each is met when
every check it rests on passed in its latest run. A requirement with nothing configured to check it is
unmet with reason ``not_configured``; one whose checks have not run yet is unmet with ``pending``.

Delivery (``push_delivery``, ``notification_url``) and Autodiscover's answer (``autodiscover_ews_url``)
apply only where targets that check them are configured, as the online ``ews_reachable`` does:
``unverified`` names what is then left unchecked, for ``--config.check`` to warn about.

An unmet requirement's hint is the failing check's own remedy, which follows its reason; the
requirement's generic hint is only for ``not_configured``, ``pending`` and a result without a hint.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client.core import GaugeMetricFamily, Metric

from ..checks import autodiscover, graph, planned_checks, reachability, tls
from ..config import Config, DnsView, EntraCredential, Exchange, Kind, Route, Scenario, Target
from ..metrics import MetricSpec
from ..results import CheckResult
from .store import ResultStore

NOT_CONFIGURED = "not_configured"
PENDING = "pending"
# Unmet although the check passed: what it measured falls short of the requirement.
EWS_URL_MISMATCH = "ews_url_mismatch"
NOT_PUBLICLY_TRUSTED = "not_publicly_trusted"
NOT_MEASURED = "not_measured"  # the check's result lacks the measurement the requirement reads
# graph_path_ready: a graph target checks Graph, but none lists this mailbox an online EWS target checks.
MAILBOX_NOT_ON_GRAPH = "mailbox_not_on_graph"
# internet_exposure: the Internet-view answer holds an RFC 1918 / RFC 4193 address (split-brain DNS leaking
# an internal record), or only addresses the Internet cannot reach otherwise (loopback, CGNAT, reserved ...).
PRIVATE_ADDRESS = "private_address"
NOT_PUBLIC = "not_public"
LEAKED_SCOPES = frozenset({"private", "unique_local"})
# The tls check's gauge of whether the presented chain is trusted by the public root store.
PUBLICLY_TRUSTED = tls.PUBLICLY_TRUSTED.name

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
GRAPH_PATH_READY = MetricSpec(
    "bems_graph_path_ready",
    "1 if the Graph path is ready for an Exchange Online mailbox an EWS target checks: a graph target reads it and, "
    "where a Graph push target exists, Graph delivers (requirement graph_path_ready).",
    labels=("scenario", "mailbox"), per_target=False,
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


@dataclass(frozen=True, slots=True)
class Judgement:
    """What a rule finds; ``hint`` is the failing check's own, empty when it gave none."""

    met: bool
    reason: str = ""
    detail: str = ""
    hint: str = ""


MET = Judgement(True)
Pairs = list[tuple[str, str]]  # (target, check) pairs a requirement rests on
# Judges a passing result further (what it measured): an unmet Judgement, or None when it holds.
Assess = Callable[[Target, CheckResult], Judgement | None]
# A rule judges a requirement on a side; None: it does not apply there (nothing configured checks it).
Rule = Callable[[Config, ResultStore, Exchange], Judgement | None]


def _targets(config: Config, side: Exchange, *kinds: Kind) -> list[Target]:
    return [t for t in config.targets if t.exchange == side and t.kind in kinds]


def _checks(store: ResultStore, targets: list[Target], *checks: str) -> Pairs:
    return [(t.name, c) for t in targets for c in checks if c in store.checks.get(t.name, ())]


def _failed(target: str, result: CheckResult) -> Judgement:
    reason = result.reason.value if result.reason else "failed"
    return Judgement(False, reason, f"{target}: {result.check}: {result.message}", result.hint)


def _judge(config: Config, store: ResultStore, pairs: Pairs, assess: Assess | None = None) -> Judgement:
    if not pairs:
        return Judgement(False, NOT_CONFIGURED, "no configured target checks it")
    targets = config.targets_by_name()
    for target, check in pairs:
        result = store.latest.get((target, check))
        if result is None:
            return Judgement(False, PENDING, f"{target}: {check} has not run yet")
        if not result.success:
            return _failed(target, result)
        if assess is not None and (unmet := assess(targets[target], result)) is not None:
            return unmet
    return MET


# What BEMS accepts on-premises (BEMS 3.9 prerequisites): Basic, Windows (NTLM or Kerberos) and, where a target
# is configured with an Entra credential, modern authentication (hybrid modern authentication).
ONPREM_SIGN_IN_METHODS = ("basic", "ntlm", "kerberos", "oauth", "certificate")


def _onprem_sign_in(config: Config, store: ResultStore, side: Exchange) -> Judgement:
    """At least one configured method signs in, on every on-premises target that signs in."""
    targets = [t for t in _targets(config, side, Kind.EWS, Kind.AUTODISCOVER) if config.auth_methods_of(t)]
    pairs = _checks(store, targets, "auth")
    if not pairs:
        return _judge(config, store, pairs)
    for target, check in pairs:
        result = store.latest.get((target, check))
        if result is None:
            return Judgement(False, PENDING, f"{target}: auth has not run yet")
        methods = {m.label("method"): m.value for m in result.measurements if m.metric == "bems_auth_success"}
        if not any(methods.get(m) == 1.0 for m in ONPREM_SIGN_IN_METHODS):
            return _failed(target, result)
    return MET


def _modern_auth(config: Config, store: ResultStore, side: Exchange) -> Judgement:
    credentials = {
        t.credential for t in config.targets
        if t.exchange == side and isinstance(config.credentials.get(t.credential or ""), EntraCredential)
    }  # fmt: skip
    token_targets = [
        t for t in config.targets if "token" in store.checks.get(t.name, ()) and t.credential in credentials
    ]
    return _judge(config, store, _checks(store, token_targets, "token"))


def _reachable(*kinds: Kind) -> Rule:
    return lambda config, store, side: _judge(
        config, store, _checks(store, _targets(config, side, *kinds), "reachability", "tls")
    )


def _passes(kind: Kind, check: str) -> Rule:
    return lambda config, store, side: _judge(config, store, _checks(store, _targets(config, side, kind), check))


def _online_impersonation(config: Config, store: ResultStore, side: Exchange) -> Judgement:
    # App access to every online mailbox, through Graph and, while Exchange Online still serves EWS, EWS.
    pairs = _checks(store, _targets(config, side, Kind.GRAPH), "graph")
    pairs += _checks(store, _targets(config, side, Kind.EWS), "impersonation")
    return _judge(config, store, pairs)


def _where_configured(pairs: Callable[[Config, ResultStore, Exchange], Pairs], assess: Assess | None = None) -> Rule:
    """A rule over the pairs ``pairs`` finds, applying only where it finds some."""

    def rule(config: Config, store: ResultStore, side: Exchange) -> Judgement | None:
        found = pairs(config, store, side)
        return _judge(config, store, found, assess) if found else None

    return rule


def _push_pairs(config: Config, store: ResultStore, side: Exchange) -> Pairs:
    return _checks(store, _targets(config, side, Kind.EWS, Kind.GRAPH), "push")


def _notification_url_pairs(config: Config, store: ResultStore, _side: Exchange) -> Pairs:
    # BEMS' own URL (no Exchange side) is where Graph delivers BEMS' notifications: it belongs to the
    # online side, where BEMS runs in Graph mode; cloud BEMS' URL is BlackBerry's to keep.
    return _checks(store, [t for t in config.targets if t.kind == Kind.NOTIFICATION_URL], "notification_url")


def _autodiscover_pairs(config: Config, store: ResultStore, side: Exchange) -> Pairs:
    # The answer can only be judged against the side's configured EWS targets (the check measures the match).
    if not _targets(config, side, Kind.EWS):
        return []
    return _checks(store, _targets(config, side, Kind.AUTODISCOVER), "autodiscover")


def _ews_url_matches(target: Target, result: CheckResult) -> Judgement | None:
    match = {m.label("mailbox"): m.value for m in result.measurements if m.metric == autodiscover.URL_MATCH.name}
    for mailbox in target.mailboxes:
        if mailbox not in match:
            return Judgement(False, NOT_MEASURED, f"{target.name}: autodiscover measured no URL match for {mailbox}")
        if match[mailbox] != 1.0:
            return Judgement(
                False, EWS_URL_MISMATCH,
                f"{target.name}: Autodiscover returns for {mailbox} an EWS URL that is no configured ews target "
                "of this side (bems_autodiscover_ews_url_info shows it)",
            )  # fmt: skip
    return None


def _publicly_trusted(target: Target, result: CheckResult) -> Judgement | None:
    trusted = [m.value for m in result.measurements if m.metric == PUBLICLY_TRUSTED]
    if not trusted:
        return Judgement(False, NOT_MEASURED, f"{target.name}: the tls check did not measure {PUBLICLY_TRUSTED}")
    if trusted[0] != 1.0:
        return Judgement(
            False, NOT_PUBLICLY_TRUSTED,
            f"{target.name}: the certificate chain is trusted by defaults.tls.ca_file, not by the public root store",
        )  # fmt: skip
    return None


def _internet_view_targets(config: Config, side: Exchange) -> list[Target]:
    return [
        t for t in _targets(config, side, Kind.EWS, Kind.AUTODISCOVER)
        if (dns := config.dns_of(t)) is not None and dns.view == DnsView.INTERNET
    ]  # fmt: skip


def _publicly_answered(target: Target, result: CheckResult) -> Judgement | None:
    """Whether the Internet view answered public addresses only; None also when the lookup itself failed
    (the check's own reason, ``dns``, then says so)."""
    scopes = {m.label("scope") for m in result.measurements if m.metric == reachability.DNS_ANSWER_ADDRESSES.name}
    if not scopes:
        if result.success:
            return Judgement(False, NOT_MEASURED, f"{target.name}: reachability measured no DNS answer")
        return None
    if leaked := sorted(scopes & LEAKED_SCOPES):
        return Judgement(
            False, PRIVATE_ADDRESS,
            f"{target.name}: the Internet view resolves {target.host} to {' and '.join(leaked)} addresses "
            "(bems_dns_answer_addresses shows them)",
        )  # fmt: skip
    if others := sorted(scopes - {"public"}):
        answered = f"{target.name}: the Internet view resolves {target.host} to {', '.join(others)} addresses"
        return Judgement(False, NOT_PUBLIC, answered)
    return None


def _internet_exposure(config: Config, store: ResultStore, side: Exchange) -> Judgement:
    """Every on-premises EWS and Autodiscover name the Internet view resolves answers public addresses only,
    and reachability and tls pass on it (judged from where this exporter runs: run it outside for the proof)."""
    targets = _internet_view_targets(config, side)
    for target, check in _checks(store, targets, "reachability"):
        result = store.latest.get((target, check))
        if result is not None and (unmet := _publicly_answered(config.targets_by_name()[target], result)):
            return unmet
    return _judge(config, store, _checks(store, targets, "reachability", "tls"))


def _public_certificate(config: Config, store: ResultStore, side: Exchange) -> Judgement:
    pairs = _checks(store, _targets(config, side, Kind.EWS, Kind.AUTODISCOVER), "tls")
    return _judge(config, store, pairs, _publicly_trusted)


def ews_mailboxes(config: Config, side: Exchange = Exchange.ONLINE) -> list[str]:
    """The mailboxes the side's EWS targets check, each once, in configuration order."""
    seen: dict[str, str] = {}
    for target in _targets(config, side, Kind.EWS):
        for mailbox in target.mailboxes:
            seen.setdefault(mailbox.casefold(), mailbox)
    return list(seen.values())


def _graph_reads(store: ResultStore, readers: list[Target], mailbox: str) -> Judgement:
    """Whether a graph target's latest check read ``mailbox`` (its per-mailbox gauge, whatever the others did)."""
    result = None
    for target in readers:
        result = store.latest.get((target.name, "graph"))
        if result is None:
            return Judgement(False, PENDING, f"{target.name}: graph has not run yet")
        read = {m.label("mailbox").casefold(): m.value for m in result.measurements if m.metric == graph.SUCCESS.name}
        if read.get(mailbox.casefold()) == 1.0:
            return MET
    assert result is not None
    if not result.success:
        return _failed(result.target, result)
    return Judgement(False, NOT_MEASURED, f"{result.target}: graph measured no access to {mailbox}")


def graph_path(config: Config, store: ResultStore, side: Exchange = Exchange.ONLINE) -> dict[str, Judgement]:
    """Mailbox -> whether BEMS could move it from EWS to Graph now: Graph reads it (a graph target lists it) and,
    where a graph target has a push block, Graph delivers notifications (its push check passes)."""
    graph_targets = [t for t in _targets(config, side, Kind.GRAPH) if "graph" in store.checks.get(t.name, ())]
    delivery = _checks(store, [t for t in _targets(config, side, Kind.GRAPH) if t.push is not None], "push")
    readiness = {}
    for mailbox in ews_mailboxes(config, side):
        readers = [t for t in graph_targets if mailbox.casefold() in {m.casefold() for m in t.mailboxes}]
        if not graph_targets:
            readiness[mailbox] = Judgement(False, NOT_CONFIGURED, "no configured graph target checks Graph access")
        elif not readers:
            readiness[mailbox] = Judgement(
                False, MAILBOX_NOT_ON_GRAPH, f"{mailbox}: no graph target lists it, so its Graph access is unproven"
            )
        else:
            access = _graph_reads(store, readers, mailbox)
            readiness[mailbox] = _judge(config, store, delivery) if access.met and delivery else access
    return readiness


def _graph_path_ready(config: Config, store: ResultStore, side: Exchange) -> Judgement | None:
    readiness = graph_path(config, store, side)
    unmet = [(mailbox, j) for mailbox, j in readiness.items() if not j.met]
    if not readiness or not unmet:
        return MET if readiness else None
    mailbox, first = unmet[0]
    detail = f"{len(unmet)} of {len(readiness)} EWS mailboxes not ready for Graph; {mailbox}: {first.detail}"
    return Judgement(False, first.reason, detail, first.hint)


HINTS = {
    "ews_reachable": "EWS must answer on port 443 with a valid certificate: see the reachability and tls checks",
    "autodiscover_reachable": "Autodiscover must answer on port 443 with a valid certificate",
    "basic_or_windows_auth": "enable Basic or Windows authentication (NTLM or Kerberos) on the EWS and Autodiscover "
    "virtual directories for the BEMS service account, or hybrid modern authentication or a client certificate "
    "mapped to the account where BEMS uses them",
    "impersonation": "New-ManagementRoleAssignment -Name:BlackBerryAppImpersonation -Role:ApplicationImpersonation "
    "-User:BEMSAdmin (on-premises); in Exchange Online scope the Entra app with RBAC for Applications: "
    "New-ServicePrincipal -AppId <app id> -ObjectId <enterprise app object id>, then New-ManagementRoleAssignment "
    '-App <app id> -Role "Application EWS.AccessAsApp" (Graph: "Application Mail.Read") '
    "-CustomResourceScope <scope>, and remove any tenant-wide consent to full_access_as_app or Mail.Read in Entra "
    "ID: it grants every mailbox whatever the scope",
    "modern_auth": "the Entra app must obtain tokens: check its secret or certificate, tenant and client id",
    "graph_access": "the Entra app needs User.Read.All (application permission, admin consent in Entra ID) and "
    'Mail.Read for the mailboxes BEMS serves, scoped with RBAC for Applications (-Role "Application Mail.Read" '
    "-CustomResourceScope <scope>) rather than consented tenant-wide",
    "push_delivery": "Exchange must deliver notifications to the exporter's listener as it must to BEMS: check "
    "that notifications.public_url reaches the listener from Exchange (firewall, reverse proxy, certificate)",
    "notification_url": "BEMS' External Notification URL must echo Graph's validation token: check the reverse "
    "proxy forwarding /notificationClient to BEMS on port 8443, its certificate and the BEMS push service",
    "autodiscover_ews_url": "BEMS uses the EWS URL Autodiscover returns: make it the configured EWS URL "
    "(Set-WebServicesVirtualDirectory -ExternalUrl on-premises), or point the ews target at what it returns",
    "internet_exposure": "cloud BEMS reaches EWS and Autodiscover from the Internet: publish their names in public "
    "DNS with public addresses, open port 443 to them, and point an exporter with dns.view internet (public "
    "resolvers) at them, run outside the LAN; or set route: connectivity_node if BEMS goes through the BlackBerry "
    "Connectivity Node",
    "connectivity_node_reachable": "cloud BEMS reaches Exchange through the BlackBerry Connectivity Node: EWS and "
    "Autodiscover must answer on port 443 from the Connectivity Node host (run this exporter there)",
    "graph_path_ready": "before EWS goes (bems_ews_retirement_timestamp_seconds), prove the Graph path for every "
    "mailbox an online ews target checks: list it in a graph target's mailboxes, grant the app Mail.Read for it (RBAC "
    'for Applications: New-ManagementRoleAssignment -App <app id> -Role "Application Mail.Read" -CustomResourceScope '
    "<scope>), and give a graph target a push block so that Graph delivery to the exporter is proven too",
    "public_certificate": "cloud BEMS trusts public certificate authorities only: give the Internet-facing EWS "
    "and Autodiscover names a certificate from a public CA (an internal CA passes only defaults.tls.ca_file)",
}


def _rules(config: Config, side: Exchange) -> dict[str, Rule]:
    delivery: dict[str, Rule] = {
        "push_delivery": _where_configured(_push_pairs),
        "autodiscover_ews_url": _where_configured(_autodiscover_pairs, _ews_url_matches),
    }
    if side == Exchange.ONPREM:
        rules: dict[str, Rule] = {
            "ews_reachable": _reachable(Kind.EWS),
            "autodiscover_reachable": _reachable(Kind.AUTODISCOVER),
            "basic_or_windows_auth": _onprem_sign_in,
            "impersonation": _passes(Kind.EWS, "impersonation"),
        }
        if config.scenario == Scenario.CLOUD_BEMS_ONPREM_EXCHANGE:
            rules["public_certificate"] = _public_certificate  # cloud BEMS is on the Internet, with public CAs
            # BEMS 3.9, "Prerequisites: BlackBerry Push Notifications service": exposed to the Internet on 443,
            # or reached through the BlackBerry Connectivity Node, judged from where the exporter runs.
            if config.route == Route.CONNECTIVITY_NODE:
                rules["connectivity_node_reachable"] = _reachable(Kind.EWS, Kind.AUTODISCOVER)
            else:
                rules["internet_exposure"] = _internet_exposure
        return rules | delivery
    rules = {
        "autodiscover_reachable": _reachable(Kind.AUTODISCOVER),
        "modern_auth": _modern_auth,
        "graph_access": _passes(Kind.GRAPH, "graph"),
        "impersonation": _online_impersonation,
    }
    if _targets(config, side, Kind.EWS):  # only while an online EWS target is configured
        rules["ews_reachable"] = _reachable(Kind.EWS)
        rules["graph_path_ready"] = _graph_path_ready  # the cutover from EWS to Graph, mailbox by mailbox
    return rules | delivery | {"notification_url": _where_configured(_notification_url_pairs)}


def evaluate(config: Config, store: ResultStore) -> list[Verdict]:
    verdicts = []
    for side in SIDES[config.scenario]:
        for requirement, rule in _rules(config, side).items():
            judgement = rule(config, store, side)
            if judgement is None:
                continue  # nothing configured checks it here: `unverified` says so
            if judgement.reason == NOT_CONFIGURED and config.shard is not None:
                continue  # another shard checks it (or none does: the unsharded --config.check says so)
            hint = "" if judgement.met else judgement.hint or HINTS[requirement]
            verdicts.append(Verdict(side, requirement, judgement.met, judgement.reason, judgement.detail, hint))
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
    path = GaugeMetricFamily(GRAPH_PATH_READY.name, GRAPH_PATH_READY.help, labels=list(GRAPH_PATH_READY.labels))
    if Exchange.ONLINE in SIDES[config.scenario]:
        for mailbox, judgement in graph_path(config, store).items():
            path.add_metric([scenario, mailbox], 1.0 if judgement.met else 0.0)
    ready = GaugeMetricFamily(SCENARIO_READY.name, SCENARIO_READY.help, labels=["scenario"])
    ready.add_metric([scenario], 1.0 if all(v.met for v in verdicts) else 0.0)
    yield from (met, why, path, ready)


def _planned(config: Config) -> ResultStore:
    return ResultStore(targets=config.targets_by_name(), checks=planned_checks(config))


def unconfigured(config: Config) -> list[str]:
    """Requirements nothing in the configuration checks, for ``--config.check`` to warn about."""
    verdicts = evaluate(config, _planned(config))
    return [f"{v.exchange.value}: {v.requirement}" for v in verdicts if v.reason == NOT_CONFIGURED]


UNVERIFIED = {
    "push_delivery": "push delivery is not verified: no ews or graph target of that side has a push block",
    "notification_url": "delivery to BEMS is not verified: no notification_url target checks BEMS' External "
    "Notification URL",
    "autodiscover_ews_url": "Autodiscover's answer is not verified: it needs an autodiscover target with mailboxes "
    "and an ews target of that side to compare the EWS URL it returns with",
}


def unverified(config: Config) -> list[str]:
    """Requirements that apply only where configured and are not, for ``--config.check`` to warn about."""
    config = config.model_copy(update={"shard": None})  # about the whole configuration, not one replica's share
    judged = {(v.exchange, v.requirement) for v in evaluate(config, _planned(config))}
    return [
        f"{side.value}: {requirement}: {UNVERIFIED[requirement]}"
        for side in SIDES[config.scenario]
        for requirement in _rules(config, side)
        if requirement in UNVERIFIED and (side, requirement) not in judged
    ]
