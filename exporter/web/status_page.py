"""The exporter's own status page (``/``): the scenario verdict and every target's checks, for an
Exchange administrator without Grafana. Server-rendered, no external assets, readable on a phone."""

from __future__ import annotations

import html
import time

from .. import __version__
from ..checks import CHECKS, ews_settings
from ..config import Config, Exchange
from ..daemon import scenario
from ..daemon.store import ResultStore
from ..logs import redact
from ..results import CheckResult, Reason

RUNBOOKS = "docs/runbooks.md"
# Where docs/runbooks.md explains a reason (a test keeps these anchors in step with its headings).
REASON_RUNBOOK = {
    Reason.DNS: "endpoint-unreachable",
    Reason.REFUSED: "endpoint-unreachable",
    Reason.UNREACHABLE: "endpoint-unreachable",
    Reason.PROXY: "endpoint-unreachable",
    Reason.TIMEOUT: "check-timed-out",
    Reason.TLS: "tls-handshake-failed",
    Reason.CERTIFICATE: "certificate-invalid",
    Reason.REDIRECT_BLOCKED: "autodiscover-failing-or-pointing-elsewhere",
    Reason.UNAUTHORIZED: "authentication-failing",
    Reason.METHOD_NOT_OFFERED: "authentication-failing",
    Reason.FORBIDDEN: "authentication-failing",
    Reason.TOKEN: "token-acquisition-failing",
    Reason.THROTTLED: "throttled",
    Reason.IMPERSONATION_DENIED: "impersonation-denied",
    Reason.MAILBOX_NOT_FOUND: "mailbox-not-found",
    Reason.EWS_DISABLED: "ews-disabled-in-exchange-online",
    Reason.PUSH_STALLED: "notifications-stalled",
    Reason.INTERNAL: "exporter-internal-error",
}
VERDICT_RUNBOOK = "scenario-not-ready"

STYLE = """
:root { color-scheme: light dark; --ok: #1a7f37; --fail: #cf222e; --muted: #777; --line: #8884; }
body { font-family: system-ui, sans-serif; margin: 1rem; line-height: 1.4; }
header p { margin: .2rem 0; color: var(--muted); }
h2 { margin-top: 1.5rem; }
.ok { color: var(--ok); } .fail { color: var(--fail); } .pending, .muted { color: var(--muted); }
.verdict { font-size: 1.3rem; font-weight: bold; }
ul.requirements { list-style: none; padding: 0; }
ul.requirements li { padding: .4rem 0; border-bottom: 1px solid var(--line); }
.hint { display: block; font-size: .9rem; color: var(--muted); }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; min-width: 40rem; }
th, td { padding: .35rem .6rem; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top; }
td { white-space: nowrap; }
td small, th small, th a { display: block; }
td small, th small { color: var(--muted); font-weight: normal; }
th .hint { font-weight: normal; max-width: 26rem; }
td.fail { background: #cf222e1a; }
"""


def _ago(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f}s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


def _runbook(anchor: str | None) -> str:
    return f'<span class="hint">runbook: <code>{RUNBOOKS}#{anchor}</code></span>' if anchor else ""


def _cell(store: ResultStore, target: str, check: str, now: float) -> str:
    if check not in store.checks.get(target, ()):
        return '<td class="muted">–</td>'
    result: CheckResult | None = store.latest.get((target, check))
    attrs = f'data-target="{html.escape(target)}" data-check="{check}"'
    if result is None:
        return f'<td class="pending" {attrs} data-state="pending">pending</td>'
    ended = result.started + result.duration
    if result.success:
        return (
            f'<td class="ok" {attrs} data-state="ok">✓ {result.duration * 1000:.0f} ms'
            f"<small>{_ago(now - ended)}</small></td>"
        )
    reason = result.reason.value if result.reason else "failed"
    last_ok = store.last_success.get((target, check))
    since = f"last ok {_ago(now - last_ok)}" if last_ok else "never ok"
    tip = html.escape(redact(f"{result.message} — {result.hint}" if result.hint else result.message), quote=True)
    return (
        f'<td class="fail" {attrs} data-state="fail" data-reason="{reason}" title="{tip}">✗ {reason}'
        f"<small>{since}</small></td>"
    )


def _days_left(now: float) -> str:
    """Microsoft's EWS milestones (the table bems_ews_retirement_timestamp_seconds exports), as days from now."""
    parts = []
    for milestone in ews_settings.EWS_RETIREMENT:
        days = (ews_settings.midnight_utc(milestone.day) - now) / 86400
        when = f"in {days:.0f} days" if days > 0 else f"{-days:.0f} days ago"
        parts.append(f'<b data-milestone="{milestone.name}" data-days="{days:.0f}">{milestone.name} {when}</b> '
                     f"({milestone.day.isoformat()})")  # fmt: skip
    return " · ".join(parts)


def _cutover(config: Config, store: ResultStore, now: float) -> str:
    """The Graph cutover per mailbox an online EWS target checks (requirement graph_path_ready)."""
    if Exchange.ONLINE not in scenario.SIDES[config.scenario]:
        return ""
    readiness = scenario.graph_path(config, store)
    if not readiness:
        return ""
    rows = "".join(
        f'<tr data-mailbox="{html.escape(mailbox)}" data-state="{"ok" if j.met else "fail"}">'
        f"<th>{html.escape(mailbox)}</th>"
        + ('<td class="ok">✓ ready for Graph</td><td></td>' if j.met else
           f'<td class="fail">✗ {html.escape(j.reason)}</td><td>{html.escape(redact(j.detail))}</td>')
        + "</tr>"
        for mailbox, j in readiness.items()
    )  # fmt: skip
    return f"""<h2>Graph cutover</h2>
<p>EWS in Exchange Online: {_days_left(now)}. Each mailbox an online EWS target checks, and whether BEMS could
serve it through Microsoft Graph now{_runbook("requirement-graph_path_ready-unmet")}</p>
<div class="scroll"><table id="cutover"><tr><th>mailbox</th><th>Graph path</th><th>why</th></tr>{rows}</table></div>
"""


def render(config: Config, store: ResultStore, revision: str, reload_ok: bool, extra: str = "") -> str:
    """The page; ``extra`` is more sections of trusted HTML at its end (the populations' summary)."""
    now = time.time()
    verdicts = scenario.evaluate(config, store)
    ready = all(v.met for v in verdicts)
    requirements = "".join(
        f'<li class="{"ok" if v.met else "fail"}" data-requirement="{v.exchange.value}/{v.requirement}">'
        f"{'✓' if v.met else '✗'} {v.exchange.value} · <b>{v.requirement}</b>"
        + ("" if v.met else f" — {html.escape(v.reason)}<span class=\"hint\">{html.escape(redact(v.detail))}</span>"
           f'<span class="hint">{html.escape(redact(v.hint))}</span>{_runbook(VERDICT_RUNBOOK)}')
        + "</li>"
        for v in verdicts
    )  # fmt: skip
    checks = [name for name in CHECKS if any(name in c for c in store.checks.values())]
    header = "".join(f"<th>{c}</th>" for c in checks)
    rows = []
    for name, target in store.targets.items():
        failing = [store.latest[(name, c)] for c in store.checks.get(name, ()) if (name, c) in store.latest]
        hints = "".join(
            f'<span class="hint">{html.escape(r.check)}: {html.escape(redact(r.hint))}</span>'
            f"{_runbook(REASON_RUNBOOK.get(r.reason) if r.reason else None)}"
            for r in failing if not r.success and r.hint
        )  # fmt: skip
        rows.append(
            f'<tr><th>{html.escape(name)}<small class="muted">{target.kind.value} {target.exchange_label}</small>'
            f'<a href="probe?target={html.escape(name)}">probe now</a>{hints}</th>'
            + "".join(_cell(store, name, check, now) for check in checks)
            + "</tr>"
        )
    reload_note = "" if reload_ok else (
        '<p class="fail">The last configuration reload failed: the previous configuration is still running. '
        "See the exporter's log.</p>"
    )  # fmt: skip
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>BEMS Exchange Exporter: {"ready" if ready else "NOT READY"}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="refresh" content="30">
<style>{STYLE}</style></head><body>
<header><h1>BEMS Exchange Exporter</h1>
<p>Version {html.escape(__version__)} (revision {html.escape(revision)}) · refreshed every 30 s ·
<a href="metrics">metrics</a> · <a href="config">configuration</a> · <a href="-/ready">readiness</a></p></header>
{reload_note}
<h2>Scenario <code>{html.escape(config.scenario.value)}</code></h2>
<p class="verdict {"ok" if ready else "fail"}" id="verdict">{"✓ ready" if ready else "✗ NOT READY"}</p>
<ul class="requirements">{requirements}</ul>
{_cutover(config, store, now)}<h2>Targets</h2>
<div class="scroll"><table id="checks"><tr><th>target</th>{header}</tr>{"".join(rows)}</table></div>
{extra}
</body></html>
"""
