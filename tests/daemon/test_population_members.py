"""A population's source: every reason a read fails, the last good list kept meanwhile, files re-read on change,
and Graph's transitiveMembers pages followed (learn.microsoft.com/graph/api/group-list-transitivemembers)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from exporter.checks.resources import Resources
from exporter.config import Config
from exporter.daemon.population_members import PopulationSources
from exporter.protocol import graph_groups
from exporter.protocol.http_client import HttpResponse
from exporter.protocol.population_sources import SourceError, SourceReason, read_address_file


@pytest.mark.parametrize(
    ("text", "column", "expected"),
    [
        pytest.param(
            "alice@corp.test\n\n# a comment\nBob@corp.test\n",
            None,
            ("alice@corp.test", "Bob@corp.test"),
            id="one-a-line",
        ),
        pytest.param("alice@corp.test\nALICE@corp.test\n", None, ("alice@corp.test",), id="duplicates-once"),
        pytest.param(
            '\ufeffName,PrimarySmtpAddress\nAlice,alice@corp.test\n"Room, big",\nBob,bob@corp.test\n',
            "PrimarySmtpAddress",
            ("alice@corp.test", "bob@corp.test"),
            id="csv-column-with-bom",
        ),
    ],
)
def test_an_address_file_reads(text: str, column: str | None, expected: tuple[str, ...]) -> None:
    assert read_address_file(text, "users.txt", column) == expected


@pytest.mark.parametrize(
    ("text", "column", "reason", "message"),
    [
        pytest.param(
            "alice@corp.test\nnot an address\nbob\n",
            None,
            SourceReason.MALFORMED_LINE,
            "users.txt: 2 line(s) are not SMTP addresses (line 2: 'not an address', line 3: 'bob')",
            id="malformed-line",
        ),
        pytest.param(
            "Name,mail\nAlice,alice\n",
            "mail",
            SourceReason.MALFORMED_LINE,
            "users.txt: 1 line(s) are not SMTP addresses (line 2: 'alice')",
            id="malformed-cell",
        ),
        pytest.param(
            "Name,Email\nAlice,alice@corp.test\n",
            "mail",
            SourceReason.MISSING_COLUMN,
            "users.txt: no column 'mail' (the header has Name, Email)",
            id="missing-column",
        ),
        pytest.param("# nobody yet\n\n", None, SourceReason.EMPTY, "users.txt holds no address", id="empty"),
    ],
)
def test_a_bad_file_fails_with_its_reason(text: str, column: str | None, reason: SourceReason, message: str) -> None:
    with pytest.raises(SourceError) as failure:
        read_address_file(text, "users.txt", column)
    assert (failure.value.reason, failure.value.message) == (reason, message)


def _config(path: Path) -> Config:
    return Config.model_validate({
        "scenario": "onprem-bems-hybrid",
        "targets": [{"name": "reach", "kind": "notification_url", "url": "https://bems.example.com/"}],
        "populations": {"staff": {"file": {"path": str(path)}}},
    })  # fmt: skip


async def test_a_file_is_read_again_when_it_changes_and_a_bad_one_keeps_the_last_good_list(tmp_path: Path) -> None:
    path = tmp_path / "users.txt"
    path.write_text("alice@corp.test\n")
    config = _config(path)
    resources = Resources()
    sources = PopulationSources(resources)
    state = await sources.refresh(config, "staff")
    assert (state.up, state.members) == (True, ("alice@corp.test",))
    assert not sources.due("staff", config.populations["staff"])  # unchanged: not read again

    path.write_text("alice@corp.test\nbob@corp.test\n")
    os.utime(path, ns=(1, 1))  # a new mtime whatever the file system's resolution
    state = await sources.refresh(config, "staff")
    assert state.members == ("alice@corp.test", "bob@corp.test")

    path.write_text("alice@corp.test\nnot-an-address\n")
    state = await sources.refresh(config, "staff")
    assert (state.up, state.reason) == (False, SourceReason.MALFORMED_LINE)
    assert state.members == ("alice@corp.test", "bob@corp.test")  # the last good list, still swept

    path.unlink()
    state = await sources.refresh(config, "staff")
    assert (state.up, state.reason) == (False, SourceReason.UNREADABLE)
    assert state.members == ("alice@corp.test", "bob@corp.test")
    await resources.close()


def _page(status: int, body: object, **headers: str) -> HttpResponse:
    return HttpResponse(status, tuple(headers.items()), json.dumps(body).encode(), "https://graph.test/")


GRAPH = "https://graph.microsoft.com/v1.0"


async def test_graph_pages_are_followed_to_the_end() -> None:
    second = f"{GRAPH}/groups/g/transitiveMembers/microsoft.graph.user?$skiptoken=X"
    pages = {
        graph_groups.first_page_url(GRAPH, "g"): _page(200, {
            "value": [{"mail": "alice@contoso.com"}, {"mail": None, "userPrincipalName": "svc@contoso.com"}],
            "@odata.nextLink": second,
        }),
        second: _page(200, {"value": [{"mail": "bob@contoso.com"}]}),
    }  # fmt: skip
    asked: list[str] = []

    async def get(url: str) -> HttpResponse:
        asked.append(url)
        return pages[url]

    assert await graph_groups.transitive_members(get, GRAPH, "g") == ("alice@contoso.com", "bob@contoso.com")
    assert asked == [graph_groups.first_page_url(GRAPH, "g"), second]
    assert "transitiveMembers/microsoft.graph.user?$select=mail,userPrincipalName&$top=999" in asked[0]


@pytest.mark.parametrize(
    ("response", "reason"),
    [
        pytest.param(_page(403, {"error": {"code": "Authorization_RequestDenied"}}), SourceReason.FORBIDDEN, id="403"),
        pytest.param(_page(404, {"error": {"code": "Request_ResourceNotFound"}}), SourceReason.NOT_FOUND, id="404"),
        pytest.param(_page(429, {}, **{"Retry-After": "7"}), SourceReason.THROTTLED, id="429"),
        pytest.param(_page(200, {"value": []}), SourceReason.EMPTY, id="no-members"),
        pytest.param(_page(200, ["not", "an", "object"]), SourceReason.BAD_RESPONSE, id="not-an-object"),
        pytest.param(
            _page(200, {"value": [], "@odata.nextLink": "https://evil.test/next"}),
            SourceReason.BAD_RESPONSE,
            id="next-link-elsewhere",
        ),
    ],
)
async def test_each_graph_failure_has_its_reason(response: HttpResponse, reason: SourceReason) -> None:
    async def get(_url: str) -> HttpResponse:
        return response

    with pytest.raises(SourceError) as failure:
        await graph_groups.transitive_members(get, GRAPH, "g")
    assert failure.value.reason == reason
    if reason == SourceReason.THROTTLED:
        assert isinstance(failure.value, graph_groups.GraphThrottled) and failure.value.seconds == 7


def test_a_daemon_without_an_ldap_population_does_not_load_ldap3() -> None:
    """ldap3 and pyasn1 cost 4.9 MiB of RSS (docs/performance.md): only an LDAP population pays for them."""
    script = "import sys, exporter.cli, exporter.daemon.app; print(sorted({'ldap3', 'pyasn1'} & set(sys.modules)))"
    loaded = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"
