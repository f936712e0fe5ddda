"""The system resolver path (``tcp_tls.resolve``) answers exactly what ``getaddrinfo`` answers.

Names already in every host's /etc/hosts (localhost, this machine's name) stand for hosts-file entries
and their aliases, since a test cannot edit that file safely; IP literals and a name that cannot exist
(RFC 6761 reserves ``.invalid``) cover the rest. Order matters: it is the order the checks connect in.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from exporter.protocol import lookup_threads, tcp_tls
from exporter.results import ProbeFailure, Reason

PORT = 443


def getaddrinfo_answer(host: str) -> list[str] | None:
    """The addresses getaddrinfo gives for a TCP connection to host, in its order and without repeats."""
    try:
        infos = socket.getaddrinfo(host, PORT, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except socket.gaierror:
        return None
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


CASES = [
    pytest.param("localhost", id="hosts-file-name"),
    pytest.param("LOCALHOST", id="hosts-file-name-in-capitals"),
    pytest.param("localhost.", id="hosts-file-name-fully-qualified"),
    pytest.param("ip6-localhost", id="hosts-file-ipv6-alias-or-missing"),
    pytest.param(socket.gethostname(), id="this-machine"),
    pytest.param("127.0.0.1", id="ipv4-literal"),
    pytest.param("127.1", id="ipv4-shorthand"),
    pytest.param("::1", id="ipv6-literal"),
    pytest.param("::ffff:127.0.0.1", id="ipv4-mapped-ipv6-literal"),
    pytest.param("no-such-host.invalid", id="missing-name"),
]


@pytest.mark.parametrize("host", CASES)
async def test_answers_match_getaddrinfo(host: str) -> None:
    expected = getaddrinfo_answer(host)
    if expected is None:
        with pytest.raises(ProbeFailure) as failure:
            await tcp_tls.resolve(host, PORT)
        assert failure.value.reason is Reason.DNS
        assert host in failure.value.message
    else:
        addresses, seconds = await tcp_tls.resolve(host, PORT)
        assert addresses == expected
        assert seconds >= 0


def test_the_table_covers_both_families_and_a_miss() -> None:
    """The cases above mean something only if getaddrinfo answers IPv4, IPv6 and a failure among them."""
    answers = [getaddrinfo_answer(param.values[0]) for param in CASES]
    found = [address for answer in answers if answer for address in answer]
    assert any(":" not in address for address in found)
    assert any(":" in address for address in found)
    assert None in answers


@pytest.fixture
def stuck_name(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """``stuck.test`` resolves only once the yielded event is set (a DNS server that does not answer)."""
    release = threading.Event()
    real_getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host: str, *args: object, **kwargs: object) -> list[Any]:
        if host == "stuck.test":
            release.wait(timeout=60)  # never outlives the test by much, whatever happens to it
            host = "127.0.0.1"
        return real_getaddrinfo(host, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(lookup_threads.socket, "getaddrinfo", getaddrinfo)
    yield release
    release.set()


async def test_a_lookup_that_hangs_holds_up_only_itself(stuck_name: threading.Event) -> None:
    stuck = asyncio.ensure_future(tcp_tls.resolve("stuck.test", PORT))
    addresses, _ = await tcp_tls.resolve("localhost", PORT)
    assert addresses == getaddrinfo_answer("localhost")
    assert not stuck.done()
    stuck_name.set()
    assert (await stuck)[0] == ["127.0.0.1"]


async def test_an_answer_nobody_waits_for_any_more_is_dropped() -> None:
    """A lookup the check's timeout cancelled gets its answer later: dropped, not an error on the loop."""
    for answer in ([("family", "type", "proto", "", ("127.0.0.1", PORT))], None):
        gave_up = asyncio.get_running_loop().create_future()
        gave_up.cancel()
        lookup_threads._answer(gave_up, answer, None if answer else socket.gaierror(socket.EAI_NONAME, "x"))
        assert gave_up.cancelled()
