"""systemd socket activation: sd_listen_fds(3)'s variables, and which handed-over socket serves what."""

from __future__ import annotations

import socket

import pytest
from loopback import bound_socket

from exporter.daemon.activation import VARIABLES, ActivationError, assign, listen_fds

PID = 4242


@pytest.mark.parametrize(
    ("environ", "fds"),
    [
        ({"LISTEN_PID": "4242", "LISTEN_FDS": "1"}, [(3, "")]),
        ({"LISTEN_PID": "4242", "LISTEN_FDS": "2"}, [(3, ""), (4, "")]),
        ({"LISTEN_PID": "4242", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "web:notifications"},
         [(3, "web"), (4, "notifications")]),
        ({"LISTEN_PID": "4242", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "bems-exchange-exporter.socket"},
         [(3, "bems-exchange-exporter.socket")]),
    ],
    ids=["one-unnamed", "two-unnamed", "named", "systemd-default-name"],
)  # fmt: skip
def test_the_handed_over_fds_and_their_names(environ: dict[str, str], fds: list[tuple[int, str]]) -> None:
    environ = {**environ, "PATH": "/usr/bin"}
    assert listen_fds(environ, PID) == fds
    assert environ == {"PATH": "/usr/bin"}  # unset, as sd_listen_fds(unset_environment=1): no child inherits them


@pytest.mark.parametrize(
    ("environ", "reason"),
    [
        ({}, "no sockets were handed over (LISTEN_PID and LISTEN_FDS are not set)"),
        ({"LISTEN_FDS": "1"}, "no sockets were handed over (LISTEN_PID and LISTEN_FDS are not set)"),
        ({"LISTEN_PID": "4241", "LISTEN_FDS": "1"}, "the sockets are for process 4241, not for this one (4242)"),
        ({"LISTEN_PID": "4242", "LISTEN_FDS": "0"}, "LISTEN_FDS=0: no sockets were handed over"),
        ({"LISTEN_PID": "4242", "LISTEN_FDS": "two"}, "LISTEN_FDS=two: no sockets were handed over"),
        ({"LISTEN_PID": "4242", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "web"},
         "LISTEN_FDNAMES names 1 sockets, LISTEN_FDS=2"),
        ({"LISTEN_PID": "4242", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "web:notifications"},
         "LISTEN_FDNAMES names 2 sockets, LISTEN_FDS=1"),
    ],
    ids=["none", "no-pid", "wrong-pid", "no-fds", "count-not-a-number", "fewer-names", "more-names"],
)  # fmt: skip
def test_missing_or_inconsistent_variables_are_refused(environ: dict[str, str], reason: str) -> None:
    with pytest.raises(ActivationError) as raised:
        listen_fds(environ, PID)
    assert str(raised.value) == reason
    assert not set(VARIABLES) & set(environ)


@pytest.mark.parametrize(
    ("names", "web", "notifications"),
    [
        (["web"], 0, None),
        ([""], 0, None),
        (["bems-exchange-exporter.socket"], 0, None),
        (["web", "notifications"], 0, 1),
        (["notifications", "web"], 1, 0),
        (["", "notifications"], 0, 1),
    ],
    ids=["web", "unnamed", "default-name", "both", "both-reversed", "unnamed-and-notifications"],
)
def test_each_server_takes_its_socket(names: list[str], web: int, notifications: int | None) -> None:
    sockets = [bound_socket() for _ in names]
    try:
        assigned = assign([(sock.fileno(), name) for sock, name in zip(sockets, names, strict=True)])
        assert assigned.web.fileno() == sockets[web].fileno()
        expected = None if notifications is None else sockets[notifications].fileno()
        assert (assigned.notifications.fileno() if assigned.notifications else None) == expected
        assert not assigned.web.get_inheritable() and not assigned.web.getblocking()
        for adopted in (assigned.web, assigned.notifications):
            if adopted is not None:
                adopted.detach()  # the fds are the test's sockets': closed below, once
    finally:
        for sock in sockets:
            sock.close()


@pytest.mark.parametrize(
    ("names", "reason"),
    [
        (["notifications"], "no socket for the web port: only one named notifications"),
        (["web", "web"], "fd {1} (web) is one socket too many: expected one named web, one named notifications"),
        (
            ["web", "metrics"],
            "fd {1} (metrics) is one socket too many: expected one named web, one named notifications",
        ),
        (["", ""], "fd {1} is one socket too many: expected one named web, one named notifications"),
    ],
    ids=["notifications-only", "two-web", "unknown-name", "two-unnamed"],
)
def test_sockets_that_fit_no_server_are_refused(names: list[str], reason: str) -> None:
    sockets = [bound_socket() for _ in names]
    try:
        with pytest.raises(ActivationError) as raised:
            assign([(sock.fileno(), name) for sock, name in zip(sockets, names, strict=True)])
        assert str(raised.value) == reason.format(*(sock.fileno() for sock in sockets))
    finally:
        for sock in sockets:
            sock.close()


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: socket.socket(), "a TCP socket that does not listen"),
        (lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM), "not a TCP socket (AF_INET, SOCK_DGRAM)"),
        (lambda: socket.socket(socket.AF_UNIX, socket.SOCK_STREAM), "not a TCP socket (AF_UNIX, SOCK_STREAM)"),
    ],
    ids=["not-listening", "udp", "unix"],
)
def test_a_socket_a_server_cannot_serve_on_is_refused_and_left_open(make: object, reason: str) -> None:
    with make() as sock:  # type: ignore[operator]
        with pytest.raises(ActivationError) as raised:
            assign([(sock.fileno(), "web")])
        assert str(raised.value) == f"fd {sock.fileno()}: {reason}"
        assert sock.fileno() != -1 and sock.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE)  # not closed


def test_a_closed_fd_is_refused() -> None:
    sock = bound_socket()
    fd = sock.fileno()
    sock.close()
    with pytest.raises(ActivationError, match=rf"^fd {fd}: Bad file descriptor$"):
        assign([(fd, "web")])
