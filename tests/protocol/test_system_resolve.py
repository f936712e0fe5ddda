"""The system resolver path (``tcp_tls.resolve``) answers exactly what ``getaddrinfo`` answers.

Names already in every host's /etc/hosts (localhost, this machine's name) stand for hosts-file entries
and their aliases, since a test cannot edit that file safely; IP literals and a name that cannot exist
(RFC 6761 reserves ``.invalid``) cover the rest. Order matters: it is the order the checks connect in.
"""

from __future__ import annotations

import socket

import pytest

from exporter.protocol import tcp_tls
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
