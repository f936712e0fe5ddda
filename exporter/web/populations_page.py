"""The failing mailboxes of every population sweep: ``/populations`` (searchable, paged), and the same list at
``/populations/failing.json`` and ``/populations/failing.csv``, each with the reason, since when, and the remedy.

Metrics carry counts only (a series per mailbox would grow with the population); the mailboxes themselves are
here. They name users, so these answer as ``/config`` does: loopback clients, or others with
``--web.enable-remote-probe`` or basic authentication in the web config.
"""

from __future__ import annotations

import csv
import html
import io
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from urllib.parse import urlencode

from aiohttp import web

from ..daemon.sweep import Sweep, Sweeps
from ..logs import redact
from .status_page import REASON_RUNBOOK, RUNBOOKS, STYLE

PER_PAGE = 50
MAX_PER_PAGE = 1000
CSV_FIELDS = ("target", "population", "mailbox", "reason", "since", "message", "remedy")


@dataclass(frozen=True, slots=True)
class FailingMailbox:
    target: str
    population: str
    mailbox: str
    reason: str
    since: str  # ISO 8601, UTC
    message: str
    remedy: str


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def failing_mailboxes(sweeps: Sweeps, query: str = "") -> list[FailingMailbox]:
    """Every failing mailbox, by population, target and address; ``query`` matches address, reason or population."""
    needle = query.strip().casefold()
    rows = [
        FailingMailbox(
            sweep.target.name,
            sweep.population,
            mailbox,
            failing.reason,
            _iso(failing.since),
            redact(failing.message),
            redact(failing.hint),
        )
        for sweep in sweeps.by_population()
        for mailbox, failing in sorted(sweep.state.failing.items(), key=lambda item: item[0].casefold())
    ]
    if needle:
        rows = [r for r in rows if needle in r.mailbox.casefold() or needle in r.reason or needle in r.population]
    return rows


def _page_numbers(request: web.Request) -> tuple[int, int]:
    try:
        page = max(1, int(request.query.get("page", "1")))
        per_page = min(MAX_PER_PAGE, max(1, int(request.query.get("per_page", str(PER_PAGE)))))
    except ValueError:
        raise web.HTTPBadRequest(text="page and per_page are whole numbers\n") from None
    return page, per_page


async def failing_json(request: web.Request, sweeps: Sweeps) -> web.Response:
    rows = failing_mailboxes(sweeps, request.query.get("q", ""))
    page, per_page = _page_numbers(request)
    shown = rows[(page - 1) * per_page : page * per_page]
    body = {"total": len(rows), "page": page, "per_page": per_page, "mailboxes": [asdict(r) for r in shown]}
    return web.json_response(body)


async def failing_csv(request: web.Request, sweeps: Sweeps) -> web.Response:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_FIELDS, lineterminator="\r\n")  # RFC 4180
    writer.writeheader()
    for row in failing_mailboxes(sweeps, request.query.get("q", "")):
        writer.writerow(asdict(row))
    return web.Response(
        text=out.getvalue(), content_type="text/csv",
        headers={"Content-Disposition": 'attachment; filename="bems-failing-mailboxes.csv"'},
    )  # fmt: skip


def _trend(sweep: Sweep) -> str:
    """The failing count of the last complete sweeps, oldest first: ``12 → 9 → 4``."""
    if not sweep.state.history:
        return '<span class="muted">no complete sweep yet</span>'
    return " → ".join(f'<span title="{_iso(at)}: {failing} of {swept}">{failing}</span>'
                      for at, swept, failing in sweep.state.history[-10:])  # fmt: skip


def summary(sweeps: Sweeps) -> str:
    """The counts per sweep and their trend, as a section of the status page (empty without populations)."""
    if not sweeps.sweeps:
        return ""
    now, rows = time.time(), []
    for sweep in sweeps.by_population():
        state, members = sweep.state, sweep.members()
        source = sweeps.sources.state(sweep.population)
        source_note = "" if source.up is not False else (
            f'<span class="hint fail">source failing: {html.escape(source.reason or "")} — '
            f"{html.escape(redact(source.message))} (the last good list is swept)</span>"
        )  # fmt: skip
        last = f"{(now - state.last_complete) / 3600:.1f}h ago" if state.last_complete else "none yet"
        progress = len(state.done) / len(members) if members else 0.0
        rows.append(
            f'<tr data-population="{html.escape(sweep.population)}" data-target="{html.escape(sweep.target.name)}">'
            f'<th>{html.escape(sweep.population)}<small class="muted">{html.escape(sweep.target.name)}</small>'
            f"{source_note}</th><td>{len(members)}</td><td>{progress:.0%}</td>"
            f'<td class="{"fail" if state.failing else "ok"}">{len(state.failing)}</td><td>{last}</td>'
            f"<td>{_trend(sweep)}</td></tr>"
        )
    return (
        '<h2>Populations</h2><div class="scroll"><table id="populations"><tr><th>population</th><th>mailboxes</th>'
        "<th>this sweep</th><th>failing</th><th>last complete</th><th>failing, last sweeps</th></tr>"
        f'{"".join(rows)}</table></div><p><a href="populations">failing mailboxes</a> · '
        '<a href="populations/failing.csv">CSV</a> · <a href="populations/failing.json">JSON</a></p>'
    )


async def page(request: web.Request, sweeps: Sweeps) -> web.Response:
    query = request.query.get("q", "")
    rows = failing_mailboxes(sweeps, query)
    number, per_page = _page_numbers(request)
    shown = rows[(number - 1) * per_page : number * per_page]
    last_page = max(1, -(-len(rows) // per_page))

    def link(to: int, text: str) -> str:
        return f'<a href="?{html.escape(urlencode({"q": query, "page": to, "per_page": per_page}))}">{text}</a>'

    pager = " · ".join(
        part for part in (link(number - 1, "← previous") if number > 1 else "",
                          f"page {number} of {last_page}",
                          link(number + 1, "next →") if number < last_page else "") if part
    )  # fmt: skip
    body = "".join(
        f'<tr data-mailbox="{html.escape(r.mailbox)}"><td>{html.escape(r.mailbox)}</td>'
        f'<td class="fail">{html.escape(r.reason)}</td><td>{r.since}</td><td>{html.escape(r.population)}'
        f"<small>{html.escape(r.target)}</small></td><td>{html.escape(r.message)}"
        f'<span class="hint">{html.escape(r.remedy)}</span>{_runbook(r.reason)}</td></tr>'
        for r in shown
    )
    search = html.escape(urlencode({"q": query}))
    text = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>BEMS Exchange Exporter: failing mailboxes</title>
<meta name="viewport" content="width=device-width, initial-scale=1"><style>{STYLE}</style></head><body>
<header><h1>Failing mailboxes</h1><p><a href="./">status</a> · <a href="populations/failing.csv?{search}">CSV</a>
· <a href="populations/failing.json?{search}">JSON</a></p></header>
{summary(sweeps)}
<form method="get">
<input type="search" name="q" value="{html.escape(query)}" placeholder="address, reason or population">
<button>search</button></form>
<p id="total">{len(rows)} failing mailbox(es) · {pager}</p>
<div class="scroll"><table id="failing"><tr><th>mailbox</th><th>reason</th><th>since</th><th>population</th>
<th>what to do</th></tr>{body}</table></div>
</body></html>
"""
    return web.Response(text=text, content_type="text/html")


def _runbook(reason: str) -> str:
    anchor = next((anchor for key, anchor in REASON_RUNBOOK.items() if key.value == reason), None)
    if reason == "moved":
        anchor = "population-mailbox-moved"
    return f'<span class="hint">runbook: <code>{RUNBOOKS}#{anchor}</code></span>' if anchor else ""
