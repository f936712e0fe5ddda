"""The six dashboards of bems-exchange-exporter.

Metric and label names are those of docs/metrics.md; availability comes from the recording rules of
deploy/prometheus/rules/common.yml; the uids are the ones the alerts' `dashboard_url` point at.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from grafana.panels import (
    DAY,
    Json,
    bargauge,
    boolean,
    by_name,
    countdown,
    current,
    dashboard,
    heatmap,
    link,
    query,
    query_variable,
    row,
    stat,
    state_timeline,
    table,
    thresholds,
    timeseries,
)

RUNBOOKS = "docs/runbooks.md"
EWS_RETIREMENT = 1806537600  # 2027-04-01T00:00:00Z: Exchange Online EWS shuts down for good
DEFAULT_TIME = "now-6h"
PREVIOUS_MONTH = "now-1M/M"  # Grafana: from the start to the end of the previous calendar month

INSTANCE = 'instance=~"$instance"'
EXCHANGE = 'exchange=~"$exchange"'
TARGET = 'target=~"$target"'
CHECK = 'check=~"$check"'
MAILBOX = 'mailbox=~"$mailbox"'
PER_TARGET = (INSTANCE, EXCHANGE, TARGET)
PER_CHECK = (*PER_TARGET, CHECK)
ONLINE = 'exchange="online"'
ONPREM = 'exchange="onprem"'
KERBEROS = 'method="kerberos"'


def sel(metric: str, *matchers: str) -> str:
    return f"{metric}{{{', '.join(matchers)}}}"


def runbook(heading: str) -> Json:
    """A link to a section of docs/runbooks.md (GitHub anchor of its heading)."""
    anchor = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
    return link(f"Runbook: {heading}", f"{RUNBOOKS}#{anchor}")


# ------------------------------------------------------------------------------- the vendor's requirements

SOURCE = "BlackBerry BEMS, Prerequisites: BlackBerry Push Notifications service"
ONPREM_EXPOSE = (
    "You must expose Microsoft Exchange Web Services and Autodiscover from your on-premises Microsoft Exchange "
    "to the Internet on port 443."
)
ONPREM_AUTH = (
    "Both Basic Authentication and Windows authentication are supported for Microsoft Exchange Web Services "
    "and Autodiscover."
)
ONLINE_EXPOSE = (
    "You must expose Microsoft Exchange Web Services and autodiscover from cloud-based Microsoft Exchange "
    "to on-premises BEMS on port 443."
)
ONLINE_AUTH = "BEMS supports Modern Authentication and Microsoft Graph."
IMPERSONATION = (
    "The BEMSAdmin account must have impersonation rights on both the on-premises and Microsoft 365 "
    "Microsoft Exchange systems."
)
PUSH = (
    "Microsoft Exchange Web Services (EWS) push notifications are sent (or pushed) by the server to a "
    "client-side web service."
)


@dataclass(frozen=True)
class Requirement:
    exchange: str
    id: str
    title: str
    vendor_text: str
    met_when: str
    runbook: str
    scenarios: tuple[str, ...] = ()  # the scenarios that have it, if not every one with its side

    @property
    def description(self) -> str:
        return f'{SOURCE}:\n\n"{self.vendor_text}"\n\nMet when {self.met_when}.'

    @property
    def selector(self) -> str:
        return sel("bems_requirement_met", INSTANCE, f'exchange="{self.exchange}"', f'requirement="{self.id}"')


REQUIREMENTS = (
    Requirement(
        "onprem",
        "ews_reachable",
        "On-premises EWS reachable",
        ONPREM_EXPOSE,
        "reachability and TLS pass on every on-premises EWS target",
        "Endpoint unreachable",
    ),
    Requirement(
        "onprem",
        "autodiscover_reachable",
        "On-premises Autodiscover reachable",
        ONPREM_EXPOSE,
        "reachability and TLS pass on every on-premises Autodiscover target",
        "Autodiscover failing or pointing elsewhere",
    ),
    Requirement(
        "onprem",
        "basic_or_windows_auth",
        "Basic or Windows sign-in",
        ONPREM_AUTH,
        "Basic or NTLM signs in on every on-premises target that signs in",
        "Authentication failing",
    ),
    Requirement(
        "onprem",
        "impersonation",
        "On-premises impersonation",
        IMPERSONATION,
        "BEMSAdmin (role ApplicationImpersonation) opens every on-premises mailbox through EWS impersonation",
        "Impersonation denied",
    ),
    Requirement(
        "online",
        "autodiscover_reachable",
        "Online Autodiscover reachable",
        ONLINE_EXPOSE,
        "reachability and TLS pass on every Exchange Online Autodiscover target",
        "Autodiscover failing or pointing elsewhere",
    ),
    Requirement(
        "online",
        "ews_reachable",
        "Online EWS reachable",
        ONLINE_EXPOSE,
        "reachability and TLS pass on every Exchange Online EWS target (only where one is configured)",
        "Endpoint unreachable",
    ),
    Requirement(
        "online",
        "modern_auth",
        "Modern authentication",
        ONLINE_AUTH,
        "every Entra ID credential of the online targets obtains its tokens",
        "Token acquisition failing",
    ),
    Requirement(
        "online",
        "graph_access",
        "Microsoft Graph access",
        ONLINE_AUTH,
        "the Entra app reads every Graph mailbox through Microsoft Graph",
        "Graph access denied",
    ),
    Requirement(
        "online",
        "impersonation",
        "Online app access (impersonation)",
        IMPERSONATION,
        "the Entra app (Exchange Online has no ApplicationImpersonation since 2025: application "
        "permissions scoped by RBAC for Applications) opens every online mailbox through Graph and, "
        "while Exchange Online serves EWS, through EWS impersonation",
        "Impersonation denied",
    ),
    Requirement(
        "onprem",
        "autodiscover_ews_url",
        "On-premises Autodiscover returns the EWS URL",
        ONPREM_EXPOSE,
        "Autodiscover returns a configured on-premises EWS target's URL for every mailbox (only where an "
        "Autodiscover target with mailboxes and an EWS target are configured)",
        "Requirement autodiscover_ews_url unmet",
    ),
    Requirement(
        "onprem",
        "push_delivery",
        "On-premises push delivery",
        PUSH,
        "the push check passes on every on-premises target with a push block (only where one is configured)",
        "Requirement push_delivery unmet",
    ),
    Requirement(
        "onprem",
        "public_certificate",
        "Publicly trusted certificate",
        ONPREM_EXPOSE,
        "every on-premises EWS and Autodiscover certificate is trusted by the public root store: cloud BEMS "
        "trusts public certificate authorities only",
        "Requirement public_certificate unmet",
        scenarios=("cloud-bems-onprem-exchange",),
    ),
    Requirement(
        "online",
        "autodiscover_ews_url",
        "Online Autodiscover returns the EWS URL",
        ONLINE_EXPOSE,
        "Autodiscover returns a configured Exchange Online EWS target's URL for every mailbox (only where an "
        "Autodiscover target with mailboxes and an EWS target are configured)",
        "Requirement autodiscover_ews_url unmet",
    ),
    Requirement(
        "online",
        "push_delivery",
        "Online push delivery",
        PUSH,
        "the push check passes on every Exchange Online EWS and Graph target with a push block (only where one "
        "is configured)",
        "Requirement push_delivery unmet",
    ),
    Requirement(
        "online",
        "graph_path_ready",
        "Graph path ready before EWS goes",
        ONLINE_AUTH,
        "for every mailbox an online EWS target checks, a graph target reads it and, where a graph target has a "
        "push block, Graph delivers (only where an online EWS target checks mailboxes)",
        "Requirement graph_path_ready unmet",
    ),
    Requirement(
        "online",
        "notification_url",
        "BEMS notification URL",
        ONLINE_AUTH,
        "BEMS' External Notification URL echoes Graph's validation token on every notification_url target "
        "(only where one is configured)",
        "Requirement notification_url unmet",
    ),
)


@dataclass(frozen=True)
class Scenario:
    id: str
    short: str
    vendor_name: str
    sides: tuple[str, ...]

    @property
    def uid(self) -> str:
        return f"bems-scenario-{self.short}"


SCENARIOS = (
    Scenario(
        "cloud-bems-onprem-exchange", "onprem", "Cloud-based BEMS with on-premises Microsoft Exchange", ("onprem",)
    ),
    Scenario("onprem-bems-cloud-exchange", "online", "On-premises BEMS with cloud-based Exchange", ("online",)),
    Scenario(
        "onprem-bems-hybrid",
        "hybrid",
        "On-premises BEMS with on-premises and cloud-based Microsoft Exchange",
        ("onprem", "online"),
    ),
)


# ------------------------------------------------------------------------------------------ panel helpers


def widths(count: int) -> list[int]:
    """`count` panel widths filling the 24 grid columns."""
    return [24 // count + (1 if index < 24 % count else 0) for index in range(count)]


SIDE_TITLES = {"onprem": "On-premises Exchange requirements", "online": "Exchange Online requirements"}


def requirement_rows(sides: Sequence[str], scenario: str | None = None) -> list[Json]:
    """A row of requirement stats per Exchange side (of ``scenario``, or of any scenario)."""
    return [panel for side in sides for panel in (row(SIDE_TITLES[side]), *requirement_stats(side, scenario))]


def requirement_stats(side: str, scenario: str | None) -> list[Json]:
    """One green/red stat per requirement of the side, described by the vendor's text."""
    requirements = [
        req for req in REQUIREMENTS
        if req.exchange == side and (scenario is None or not req.scenarios or scenario in req.scenarios)
    ]  # fmt: skip
    return [
        stat(
            req.title,
            req.description,
            [current(f"min by (exchange, requirement) ({req.selector})", req.title)],
            unit="none",
            size=(width, 4),
            defaults=boolean("met", "unmet"),
            no_value="not checked",
            links=[runbook(req.runbook), runbook("Scenario not ready")],
        )
        for req, width in zip(requirements, widths(len(requirements)), strict=True)
    ]


def scenario_ready(scenario: Scenario | None, width: int) -> Json:
    matchers = (INSTANCE, f'scenario="{scenario.id}"') if scenario else (INSTANCE,)
    description = "1 when every requirement of the configured scenario is met (bems_scenario_ready). " + (
        f"Vendor scenario: {scenario.vendor_name}." if scenario else "One value per configured scenario."
    )
    return stat(
        "Scenario ready",
        description,
        [current(sel("bems_scenario_ready", *matchers), "{{scenario}}")],
        unit="none",
        size=(width, 5),
        defaults=boolean("ready", "not ready"),
        no_value="not the configured scenario",
        links=[runbook("Scenario not ready")],
    )


def unmet_requirements(width: int) -> Json:
    return table(
        "Unmet requirements",
        "Why each unmet requirement is unmet (bems_requirement_failure_reason): not_configured (no target checks "
        "it), pending (its checks have not run yet) or the failing check's reason.",
        [current(sel("bems_requirement_failure_reason", INSTANCE, EXCHANGE) + " == 1")],
        unit="none",
        size=(width, 5),
        defaults={"custom": {"align": "auto", "cellOptions": {"type": "auto"}}, "noValue": "every requirement met"},
        transformations=[organize("scenario", "exchange", "requirement", "reason")],
        links=[runbook("Scenario not ready")],
    )


def organize(*columns: str) -> Json:
    """Keep only `columns` of a table, in this order."""
    return {"id": "filterFieldsByName", "options": {"include": {"names": list(columns)}}}


def check_matrix(
    title: str, description: str, expr: str, *, unit: str, defaults: Json, size: tuple[int, int], links: Sequence[Json]
) -> Json:
    """Targets as rows, checks as columns, cells coloured by `defaults`."""
    return table(
        title,
        description,
        [current(expr)],
        unit=unit,
        size=size,
        defaults=defaults,
        overrides=[by_name("target\\check", **{"custom.cellOptions": {"type": "auto"}})],
        transformations=[
            {"id": "groupingToMatrix", "options": {"columnField": "check", "rowField": "target", "valueField": "Value"}}
        ],
        links=links,
    )


def status_matrix() -> Json:
    return check_matrix(
        "Targets × checks",
        "The latest result of each check of each target (bems_probe_success): pass or fail. The reason of a "
        "failure is in Current failures.",
        f"max by (target, check) ({sel('bems_probe_success', *PER_CHECK)})",
        unit="none",
        defaults=boolean("pass", "fail"),
        size=(14, 9),
        links=[runbook("Endpoint unreachable"), link("Runbooks", RUNBOOKS)],
    )


def current_failures() -> Json:
    drill = {
        "title": "Open target ${__data.fields.target}",
        "url": "/d/bems-target/bems-exchange-target?"
        "${datasource:queryparam}&${instance:queryparam}&var-target=${__data.fields.target}&${__url_time_range}",
    }
    return table(
        "Current failures",
        "Each failing check with its reason (bems_probe_failure_reason); docs/runbooks.md has a section per "
        "reason. Click a row for the target's drill-down.",
        [current(sel("bems_probe_failure_reason", *PER_CHECK) + " == 1")],
        unit="none",
        size=(10, 9),
        defaults={
            "custom": {"align": "auto", "cellOptions": {"type": "auto"}},
            "noValue": "no failing check",
            "links": [drill],
        },
        transformations=[organize("target", "exchange", "check", "reason")],
        links=[link("Runbooks by failure reason", RUNBOOKS)],
    )


def check_history(height: int) -> Json:
    return state_timeline(
        "Check history",
        "Pass (green) and fail (red) of every check over time (bems_probe_success).",
        [query(sel("bems_probe_success", *PER_CHECK), "{{target}} {{check}}")],
        size=(24, height),
        defaults=boolean("pass", "fail"),
    )


def certificate_expiry() -> Json:
    return stat(
        "Certificate expiry",
        "Time left until the earliest notAfter of the chain each endpoint presents "
        "(bems_tls_cert_expiry_timestamp_seconds): orange below 21 days, red below 7 days and after expiry.",
        [current(sel("bems_tls_cert_expiry_timestamp_seconds", *PER_TARGET) + " - time()", "{{target}}")],
        unit="dtdurations",
        size=(6, 7),
        defaults=countdown(21 * DAY, 7 * DAY),
        no_value="no TLS result",
        links=[runbook("Certificate expiring"), runbook("Certificate invalid")],
    )


def credential_expiry() -> Json:
    return stat(
        "Entra credential expiry",
        "Time left until the Entra app's client secret or certificate expires "
        "(bems_entra_credential_expiry_timestamp_seconds): orange below 30 days, red below 7 days. A secret's "
        "date needs Application.Read.All.",
        [
            current(
                sel("bems_entra_credential_expiry_timestamp_seconds", INSTANCE) + " - time()",
                "{{credential}} ({{kind}})",
            )
        ],
        unit="dtdurations",
        size=(6, 7),
        defaults=countdown(30 * DAY, 7 * DAY),
        no_value="date unknown",
        links=[runbook("Entra credential expiring")],
    )


def token_expiry() -> Json:
    return stat(
        "Entra token expiry",
        "Time left on each credential's current tokens (bems_oauth_token_expiry_timestamp_seconds); MSAL "
        "renews them before they expire, so a value near or below zero means renewal fails.",
        [current(sel("bems_oauth_token_expiry_timestamp_seconds", INSTANCE) + " - time()", "{{credential}}")],
        unit="dtdurations",
        size=(6, 7),
        defaults=countdown(600, 0),
        no_value="no token",
        links=[runbook("Token acquisition failing")],
    )


def ews_retirement() -> Json:
    return stat(
        "EWS retirement",
        "Time left until Exchange Online EWS shuts down for good (2027-04-01; disabled tenant by tenant from "
        "2026-10-01), for each online EWS target: move BEMS to Microsoft Graph mode. Orange within 90 days, "
        "red within 14 days.",
        [
            current(
                sel("bems_target_info", INSTANCE, TARGET, 'kind="ews"', ONLINE) + f" * ({EWS_RETIREMENT} - time())",
                "{{target}}",
            )
        ],
        unit="dtdurations",
        size=(6, 7),
        defaults=countdown(90 * DAY, 14 * DAY),
        no_value="no online EWS target",
        links=[runbook("BEMSExchangeEwsRetirement")],
    )


def graph_cutover() -> list[Json]:
    """Per mailbox an online EWS target checks: could BEMS serve it through Graph now, and how long is left."""
    return [
        row("Graph cutover: each EWS mailbox before EWS goes"),
        flags(
            "Graph path per EWS mailbox",
            "For each mailbox an online EWS target checks, whether BEMS could serve it through Microsoft Graph now: "
            "a graph target reads its inbox and, where a graph target has a push block, Graph delivers "
            "(bems_graph_path_ready, requirement graph_path_ready). Switch BEMS to Graph for the ready ones.",
            f"max by (mailbox) ({sel('bems_graph_path_ready', INSTANCE)})",
            "{{mailbox}}",
            ("ready for Graph", "not ready"),
            width=16,
            heading="Requirement graph_path_ready unmet",
        ),
        stat(
            "Time left to switch",
            "Until Microsoft's EWS milestones in Exchange Online (bems_ews_retirement_timestamp_seconds, from the "
            "exporter's dated table): disablement, tenant by tenant, and shutdown for good. Orange within 90 days, "
            "red within 30 days.",
            [
                current(
                    f"min by (milestone) ({sel('bems_ews_retirement_timestamp_seconds', INSTANCE, ONLINE)}) - time()",
                    "{{milestone}}",
                )
            ],
            unit="dtdurations",
            size=(8, 6),
            defaults=countdown(90 * DAY, 30 * DAY),
            no_value="no ews_settings check",
            links=[runbook("BEMSExchangeEwsRetirement")],
        ),
    ]


def mailbox_access(width: int) -> Json:
    per_mailbox = (*PER_TARGET, MAILBOX)
    return bargauge(
        "Mailbox access",
        "Share of each target's configured mailboxes the service account could open in the last check: "
        "on-premises BEMSAdmin through EWS impersonation, online the Entra app through EWS or Microsoft Graph "
        f'(bems_impersonation_success, bems_graph_mailbox_access_success). {SOURCE}: "{IMPERSONATION}"',
        [
            current(
                f"avg by (target) ({sel('bems_impersonation_success', *per_mailbox)} "
                f"or {sel('bems_graph_mailbox_access_success', *per_mailbox)})",
                "{{target}}",
            )
        ],
        unit="percentunit",
        size=(width, 7),
        defaults={"min": 0, "max": 1, "thresholds": thresholds("red", ("green", 1)), "color": {"mode": "thresholds"}},
        links=[runbook("Impersonation denied"), runbook("Graph access denied"), runbook("Mailbox not found")],
    )


def flags(
    title: str,
    description: str,
    expr: str,
    legend: str,
    texts: tuple[str, str],
    *,
    good: int = 1,
    width: int,
    heading: str,
) -> Json:
    """A stat of 0/1 series with their meaning as text."""
    return stat(
        title,
        description,
        [current(expr, legend)],
        unit="none",
        size=(width, 6),
        defaults=boolean(*texts, good=good),
        no_value="not checked",
        links=[runbook(heading)],
    )


def onprem_panels() -> list[Json]:
    return [
        row("On-premises sign-in"),
        flags(
            "Sign-in by method",
            "BEMSAdmin signs in by each configured method: basic, ntlm, kerberos, certificate, oauth "
            f'(bems_auth_success). {SOURCE}: "{ONPREM_AUTH}"',
            f"max by (target, method) ({sel('bems_auth_success', INSTANCE, TARGET, ONPREM)})",
            "{{target}} {{method}}",
            ("signs in", "fails"),
            width=12,
            heading="Authentication failing",
        ),
        flags(
            "Kerberos sign-in",
            "BEMSAdmin gets a Kerberos ticket for the target's service principal and Exchange accepts it inside "
            'Negotiate (bems_auth_success{method="kerberos"}); "not checked" where no target tests kerberos.',
            f"max by (target) ({sel('bems_auth_success', INSTANCE, TARGET, ONPREM, KERBEROS)})",
            "{{target}}",
            ("signs in", "fails"),
            width=6,
            heading="Authentication failing",
        ),
        flags(
            "Ready for NTLM off",
            "Targets where NTLM signs in and Kerberos does not (failed or not configured): sign-in breaks when the "
            "domain disables NTLM, as Windows is moving to (bems_auth_ntlm_only; alert BEMSExchangeNtlmOnly).",
            f"max by (target) ({sel('bems_auth_ntlm_only', INSTANCE, TARGET, ONPREM)})",
            "{{target}}",
            ("NTLM only", "ready"),
            good=0,
            width=6,
            heading="BEMSExchangeNtlmOnly",
        ),
    ]


def online_panels() -> list[Json]:
    return [
        row("Exchange Online: modern authentication, Graph, EWS"),
        flags(
            "Entra tokens",
            f"Each Entra ID credential obtained every token its targets need (bems_oauth_token_success). "
            f'{SOURCE}: "{ONLINE_AUTH}"',
            sel("bems_oauth_token_success", INSTANCE),
            "{{credential}}",
            ("issued", "no token"),
            width=8,
            heading="Token acquisition failing",
        ),
        flags(
            "EWS policy block",
            "Exchange Online answers EWS with its policy block (HTTP 403, empty body: EWSEnabled, "
            "EwsAllowedAppIDs, the retirement) (bems_ews_disabled).",
            sel("bems_ews_disabled", INSTANCE, TARGET, ONLINE),
            "{{target}}",
            ("blocked", "served"),
            good=0,
            width=8,
            heading="EWS disabled in Exchange Online",
        ),
        flags(
            "External Notification URL",
            "BEMS' External Notification URL echoes Microsoft Graph's validation token "
            "(bems_notification_url_success): without it BEMS in Graph mode gets no change notifications.",
            sel("bems_notification_url_success", INSTANCE, TARGET),
            "{{target}}",
            ("validates", "fails"),
            width=8,
            heading="BEMS notification URL failing",
        ),
        credential_expiry(),
        token_expiry(),
        ews_retirement(),
        *graph_cutover(),
    ]


# ------------------------------------------------------------------------------------------ the dashboards


def overview() -> Json:
    return page(
        "bems-overview",
        "Does Microsoft Exchange meet BlackBerry BEMS' prerequisites? The scenario verdict, every requirement, "
        "every check of every target, and what expires next.",
        [
            row("Scenario verdict"),
            scenario_ready(None, 8),
            unmet_requirements(16),
            *requirement_rows(("onprem", "online")),
            row("Targets"),
            status_matrix(),
            current_failures(),
            check_history(12),
            row("Expiry"),
            certificate_expiry(),
            credential_expiry(),
            token_expiry(),
            ews_retirement(),
            row("Mailboxes"),
            mailbox_access(24),
        ],
    )


def scenario_dashboard(scenario: Scenario) -> Json:
    side_panels = {"onprem": onprem_panels, "online": online_panels}
    return page(
        scenario.uid,
        f"Scenario {scenario.id} ({scenario.vendor_name}): the vendor's requirements and the checks behind them.",
        [
            row(f"Scenario verdict: {scenario.vendor_name}"),
            scenario_ready(scenario, 8),
            unmet_requirements(16),
            *requirement_rows(scenario.sides, scenario.id),
            row("Targets"),
            status_matrix(),
            current_failures(),
            check_history(10),
            *(panel for side in scenario.sides for panel in side_panels[side]()),
            row("Certificates and mailboxes"),
            certificate_expiry(),
            mailbox_access(18),
        ],
        exchange_sides=scenario.sides,
    )


def target_dashboard() -> Json:
    timing = [
        query(sel("bems_dns_lookup_seconds", *PER_TARGET), "{{target}} DNS lookup"),
        query(sel("bems_tcp_connect_seconds", *PER_TARGET), "{{target}} TCP connect"),
        query(sel("bems_tls_handshake_seconds", *PER_TARGET), "{{target}} TLS handshake"),
    ]
    per_mailbox = (*PER_TARGET, MAILBOX)
    mailbox_columns = {
        "impersonation": "bems_impersonation_success",
        "graph": "bems_graph_mailbox_access_success",
        "autodiscover URL matches": "bems_autodiscover_ews_url_match",
        "push subscription": "bems_push_subscription_active",
    }
    return page(
        "bems-target",
        "One target in depth: checks, network and TLS timings, sign-in methods, mailboxes, notifications.",
        [
            row("Checks"),
            state_timeline(
                "Check results",
                "Pass and fail of the target's checks over time (bems_probe_success).",
                [query(sel("bems_probe_success", *PER_CHECK), "{{target}} {{check}}")],
                size=(14, 9),
                defaults=boolean("pass", "fail"),
            ),
            current_failures(),
            row("Timings"),
            timeseries(
                "Connection phases",
                "DNS lookup and TCP connect of the last reachability run, TLS handshake of the last "
                "successful TLS run (bems_dns_lookup_seconds, bems_tcp_connect_seconds, "
                "bems_tls_handshake_seconds).",
                timing,
                unit="s",
                size=(12, 8),
                links=[runbook("Check timed out")],
            ),
            timeseries(
                "Sign-in time",
                "How long each authentication method's sign-in took (bems_auth_duration_seconds).",
                [query(sel("bems_auth_duration_seconds", *PER_TARGET), "{{target}} {{method}}")],
                unit="s",
                size=(12, 8),
                links=[runbook("Authentication failing")],
            ),
            timeseries(
                "Check duration",
                "How long the last run of each check took (bems_probe_duration_seconds).",
                [query(sel("bems_probe_duration_seconds", *PER_CHECK), "{{target}} {{check}}")],
                unit="s",
                size=(12, 8),
                links=[runbook("Checks overrunning")],
            ),
            certificate_expiry(),
            flags(
                "TLS version",
                "The negotiated TLS protocol (bems_tls_version_info).",
                sel("bems_tls_version_info", *PER_TARGET),
                "{{target}} {{version}}",
                ("negotiated", "none"),
                width=6,
                heading="TLS handshake failed",
            ),
            row("Authentication"),
            merged_table(
                "Sign-in methods: offered vs working",
                "Offered: the unauthenticated 401 advertises the method in WWW-Authenticate "
                "(bems_auth_offered: basic, ntlm, negotiate, bearer). Signs in: the configured method "
                "worked in the last auth check (bems_auth_success: basic, ntlm, oauth). "
                "Exchange Online has no Basic authentication for EWS.",
                ("target", "method"),
                {"offered": "bems_auth_offered", "signs in": "bems_auth_success"},
                PER_TARGET,
                heading="Authentication failing",
            ),
            row("Mailboxes"),
            merged_table(
                "Mailbox access",
                "Per mailbox: EWS impersonation (bems_impersonation_success), Microsoft Graph "
                "(bems_graph_mailbox_access_success), Autodiscover returning a configured EWS URL "
                "(bems_autodiscover_ews_url_match) and a confirmed push subscription "
                f'(bems_push_subscription_active). {SOURCE}: "{IMPERSONATION}"',
                ("target", "mailbox"),
                mailbox_columns,
                per_mailbox,
                heading="Impersonation denied",
            ),
            row("Notifications"),
            heatmap(
                "Notification delay",
                "From the write probe's create request to the arrival of its notification "
                "(bems_push_notification_delay_seconds): notifications per delay bucket.",
                query(
                    "sum by (le) (increase("
                    f"{sel('bems_push_notification_delay_seconds_bucket', *PER_TARGET)}[$__rate_interval]))",
                    "{{le}}",
                    fmt="heatmap",
                ),
                y_unit="s",
                size=(12, 8),
                links=[runbook("Notifications stalled")],
            ),
            timeseries(
                "Notifications and rejected callbacks",
                "Accepted notifications by kind (bems_push_notifications_total) and callbacks the listener "
                "rejected by reason (bems_push_rejected_total).",
                [
                    query(
                        f"sum by (target, kind) (rate({sel('bems_push_notifications_total', *PER_TARGET)}"
                        "[$__rate_interval]))",
                        "{{target}} {{kind}}",
                    ),
                    query(
                        f"sum by (target, reason) (rate({sel('bems_push_rejected_total', *PER_TARGET)}"
                        "[$__rate_interval]))",
                        "{{target}} rejected: {{reason}}",
                    ),
                ],
                unit="cps",
                size=(12, 8),
                links=[runbook("Notifications stalled")],
            ),
            row("Failures"),
            failures_over_time(),
        ],
    )


def merged_table(
    title: str,
    description: str,
    keys: tuple[str, ...],
    columns: dict[str, str],
    matchers: Sequence[str],
    *,
    heading: str,
) -> Json:
    """One row per `keys`, one yes/no column per metric of `columns` (column title: metric)."""
    by = ", ".join(keys)
    letters = [chr(ord("A") + index) for index in range(len(columns))]
    return table(
        title,
        description,
        [current(f"max by ({by}) ({sel(metric, *matchers)})") for metric in columns.values()],
        unit="none",
        size=(24, 8),
        defaults={**boolean("yes", "no"), "noValue": "—"},
        overrides=[by_name(key, **{"custom.cellOptions": {"type": "auto"}}) for key in keys],
        transformations=[
            {"id": "merge", "options": {}},
            {
                "id": "organize",
                "options": {
                    "excludeByName": {"Time": True},
                    "renameByName": {f"Value #{letter}": name for letter, name in zip(letters, columns, strict=True)},
                },
            },
        ],
        links=[runbook(heading)],
    )


def failures_over_time() -> Json:
    return timeseries(
        "Failed runs by reason",
        "Failed runs per check and reason (bems_probe_failures_total); rate() misses the very first failure "
        "of each reason, whose series starts at 1.",
        [
            query(
                f"sum by (target, check, reason) (increase({sel('bems_probe_failures_total', *PER_CHECK)}"
                "[$__rate_interval]))",
                "{{target}} {{check}}: {{reason}}",
            )
        ],
        unit="short",
        size=(24, 8),
        bars=True,
        links=[link("Runbooks by failure reason", RUNBOOKS)],
    )


def minutes_per_requirement(title: str, description: str, expr: str, links: Sequence[Json]) -> Json:
    """A count of minutes in the time range, a bar per requirement."""
    return bargauge(
        title,
        description,
        [current(expr, "{{scenario}} {{exchange}} {{requirement}}")],
        unit="m",
        size=(8, 8),
        defaults={"decimals": 0, "thresholds": thresholds("blue"), "color": {"mode": "thresholds"}},
        links=links,
    )


def audit_dashboard() -> Json:
    """Calendar months over the per-minute audit rules (group bems-exchange-audit), the report's formula."""
    availability = {
        "decimals": 3,
        "min": 0,
        "max": 1,
        "thresholds": thresholds("red", ("green", 0.999)),
        "color": {"mode": "thresholds"},
    }
    slo = [runbook("BEMSExchangeErrorBudgetBurn")]
    audit = [link("The audit report and its formula", "docs/audit.md")]
    requirement = sel("scenario_exchange_requirement:bems_requirement_met:min1m", INSTANCE, EXCHANGE)
    scenario = sel("scenario:bems_scenario_ready:min1m", INSTANCE)
    check = sel("target_check:bems_probe_success:min1m", *PER_CHECK)
    window = sel("instance:bems_maintenance_window_active:max1m", INSTANCE)
    per_requirement = "{{scenario}} {{exchange}} {{requirement}}"
    # Down minutes inside a maintenance window; an exporter without windows has no window series: 0 then.
    windows_or_none = f"({window} or on (instance, job) max by (instance, job) (0 * {requirement}))"
    planned = (
        f"sum_over_time((({requirement} == bool 0) * on (instance, job) group_left () {windows_or_none})[$__range:1m])"
    )
    down = f"(count_over_time({requirement}[$__range]) - sum_over_time({requirement}[$__range]))"
    incident = (
        f"1000 * ({sel('bems_probe_last_success_timestamp_seconds', *PER_CHECK)}"
        " * on (instance, job, target, exchange, check) group_left (reason) "
        f"({sel('bems_probe_failure_reason', *PER_CHECK)} == 1))"
    )
    return page(
        "bems-audit",
        "One calendar month (the time picker: Previous month by default; pick any month as an absolute range) "
        "over the per-minute audit rules, with the formula of `bems-exchange-exporter report`: availability = "
        "minutes up / minutes known, unknown time apart, planned (inside a maintenance window) and unplanned "
        "downtime apart. The report is the document to file; this is its live view.",
        [
            row("Availability in the month"),
            bargauge(
                "Scenario ready",
                "Minutes the scenario was ready / minutes known (avg_over_time of "
                "scenario:bems_scenario_ready:min1m over the time range). Minutes without data are unknown, "
                "not up.",
                [current(f"avg_over_time({scenario}[$__range])", "{{scenario}}")],
                unit="percentunit",
                size=(8, 8),
                defaults=availability,
                links=audit,
            ),
            bargauge(
                "Requirements met",
                "Per BEMS requirement: minutes met / minutes known (avg_over_time of "
                "scenario_exchange_requirement:bems_requirement_met:min1m over the time range).",
                [current(f"avg_over_time({requirement}[$__range])", per_requirement)],
                unit="percentunit",
                size=(16, 8),
                defaults=availability,
                links=audit,
            ),
            check_matrix(
                "Availability per check",
                "Minutes the check passed / minutes known (avg_over_time of target_check:bems_probe_success:min1m "
                "over the time range); red below the 99.9 % objective.",
                f"avg_over_time({check}[$__range])",
                unit="percentunit",
                defaults=availability,
                size=(24, 8),
                links=slo,
            ),
            row("Downtime and unknown time"),
            minutes_per_requirement(
                "Unknown time",
                "Minutes of the time range without an audit sample of the requirement (the exporter or "
                "Prometheus was down): counted neither up nor down. A minute at the range's edges may fall on "
                "either side; the report is exact.",
                f"$__range_s / 60 - count_over_time({requirement}[$__range])",
                audit,
            ),
            minutes_per_requirement(
                "Planned downtime",
                "Minutes the requirement was unmet inside a configured maintenance window "
                "(instance:bems_maintenance_window_active:max1m). Alertmanager silences are not planned.",
                planned,
                [runbook("BEMSExchangeMaintenanceWindow")],
            ),
            minutes_per_requirement(
                "Unplanned downtime",
                "Minutes the requirement was unmet outside every maintenance window.",
                f"{down} - {planned}",
                audit,
            ),
            timeseries(
                "Daily availability",
                "Minutes met / minutes known per day and requirement: the report's day-by-day strip.",
                [query(f"avg_over_time({requirement}[1d])", per_requirement)],
                unit="percentunit",
                size=(16, 8),
                links=audit,
            ),
            state_timeline(
                "Maintenance windows",
                "Minutes in which a configured maintenance window was in progress "
                "(instance:bems_maintenance_window_active:max1m).",
                [query(window, "{{instance}}")],
                size=(8, 8),
                defaults=boolean("maintenance", "-", good=0),
                links=[runbook("BEMSExchangeMaintenanceWindow")],
            ),
            row("Error budget (objective 99.9 %)"),
            stat(
                "Objective",
                "The availability objective (recording rule bems:probe_slo_objective:ratio).",
                [current("bems:probe_slo_objective:ratio", "objective")],
                unit="percentunit",
                size=(4, 8),
                defaults={"decimals": 2, "thresholds": thresholds("blue"), "color": {"mode": "thresholds"}},
                no_value="rules not loaded",
                links=slo,
            ),
            bargauge(
                "Error budget remaining in the month",
                "Share of the month's error budget left: 1 − (1 − availability) / (1 − objective), availability "
                "per check over the time range. Below 0 the objective is missed.",
                [
                    current(
                        f"1 - (1 - avg_over_time({check}[$__range])) / scalar(1 - bems:probe_slo_objective:ratio)",
                        "{{target}} {{check}}",
                    )
                ],
                unit="percentunit",
                size=(20, 8),
                defaults={
                    "min": 0,
                    "max": 1,
                    "thresholds": thresholds("red", ("orange", 0), ("green", 0.25)),
                    "color": {"mode": "thresholds"},
                },
                links=slo,
            ),
            row("Incidents"),
            table(
                "Incidents",
                "Each failure interval with its reason: start is the check's last success before it failed "
                "(bems_probe_last_success_timestamp_seconds), end the last time it was seen failing "
                "(bems_probe_failure_reason); an ongoing incident ends now. A check that never succeeded has "
                "no start and is not listed (see Current failures on the overview).",
                [query(incident, fmt="table")],
                unit="none",
                size=(24, 10),
                defaults={"custom": {"align": "auto", "cellOptions": {"type": "auto"}}, "noValue": "no incident"},
                overrides=[by_name(name, unit="dateTimeAsIso") for name in ("start", "end")],
                transformations=[
                    {
                        "id": "groupBy",
                        "options": {
                            "fields": {
                                **{
                                    key: {"aggregations": [], "operation": "groupby"}
                                    for key in ("target", "exchange", "check", "reason", "Value")
                                },
                                "Time": {"aggregations": ["last"], "operation": "aggregate"},
                            }
                        },
                    },
                    {
                        "id": "organize",
                        "options": {
                            "renameByName": {"Value": "start", "Time (last)": "end"},
                            "indexByName": {"start": 0, "end": 1},
                        },
                    },
                    {"id": "sortBy", "options": {"sort": [{"field": "start", "desc": True}]}},
                ],
                links=[link("Runbooks by failure reason", RUNBOOKS)],
            ),
            failures_over_time(),
        ],
        time_from=PREVIOUS_MONTH,
        time_to=PREVIOUS_MONTH,
    )


# -------------------------------------------------------------------------------------- page and variables


TITLES = {  # uid: title; the alerts link to /d/<uid>/<slug of the title>
    "bems-overview": "BEMS Exchange overview",
    **{scenario.uid: f"BEMS Exchange scenario {scenario.short}" for scenario in SCENARIOS},
    "bems-target": "BEMS Exchange target",
    "bems-audit": "BEMS Exchange audit",
}


def slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def variables(exchange_sides: Sequence[str]) -> list[Json]:
    """instance, exchange, target, check and mailbox; `exchange_sides` limits the exchange choices."""
    sides = f', exchange=~"{"|".join(exchange_sides)}"' if exchange_sides else ""
    mailbox_metrics = "bems_impersonation_success|bems_graph_mailbox_access_success|bems_push_subscription_active"
    return [
        query_variable("instance", "Exporter", "label_values(bems_scenario_info, instance)"),
        query_variable(
            "exchange",
            "Exchange",
            f"label_values(bems_target_info{{{INSTANCE}{sides}}}, exchange)",
            all_value=None if exchange_sides else ".*",
        ),
        query_variable("target", "Target", f"label_values({sel('bems_probe_success', INSTANCE, EXCHANGE)}, target)"),
        query_variable("check", "Check", f"label_values({sel('bems_probe_success', *PER_TARGET)}, check)"),
        query_variable(
            "mailbox", "Mailbox", f'label_values({{__name__=~"{mailbox_metrics}", {INSTANCE}, {TARGET}}}, mailbox)'
        ),
    ]


def page(
    uid: str,
    description: str,
    panels: Sequence[Json],
    *,
    exchange_sides: Sequence[str] = (),
    time_from: str = DEFAULT_TIME,
    time_to: str = "now",
) -> Json:
    """A dashboard titled from TITLES (its slug is part of the alerts' dashboard_url), linked to the others."""
    links = [
        {
            "title": other_title,
            "type": "link",
            "url": f"/d/{other}/{slug(other_title)}",
            "icon": "dashboard",
            "includeVars": True,
            "keepTime": True,
            "asDropdown": False,
            "targetBlank": False,
            "tags": [],
            "tooltip": "",
        }
        for other, other_title in TITLES.items()
        if other != uid
    ]
    links.append(
        {
            "title": "Runbooks",
            "type": "link",
            "url": RUNBOOKS,
            "icon": "doc",
            "includeVars": False,
            "keepTime": False,
            "asDropdown": False,
            "targetBlank": True,
            "tags": [],
            "tooltip": "What to do when a check fails",
        }
    )
    return dashboard(
        uid,
        TITLES[uid],
        description,
        panels=panels,
        variables=variables(exchange_sides),
        links=links,
        time_from=time_from,
        time_to=time_to,
        tags=["bems", "exchange"],
    )


def all_dashboards() -> list[Json]:
    return [overview(), *(scenario_dashboard(s) for s in SCENARIOS), target_dashboard(), audit_dashboard()]
