"""systemd socket activation (``--web.systemd-socket``): the listening sockets systemd hands over.

The protocol is sd_listen_fds(3) (man7.org/linux/man-pages/man3/sd_listen_fds.3.html): ``LISTEN_PID`` is the
pid the sockets are meant for, ``LISTEN_FDS`` how many there are, from file descriptor 3
(``SD_LISTEN_FDS_START``) on, and ``LISTEN_FDNAMES`` their names, colon-separated (a socket unit's
``FileDescriptorName=``; by default the unit's own name). The variables are removed once read, as
``sd_listen_fds(unset_environment=1)`` does, so that no child takes the sockets for its own.

The web port takes the socket named ``web`` or, when none is, the first one not named ``notifications``; the
notification listener takes the one named ``notifications``, when there is one. Any other socket is an error:
it would be left listening with nobody accepting.
"""

from __future__ import annotations

import os
import socket
from collections.abc import MutableMapping
from dataclasses import dataclass

from . import serving

LISTEN_FDS_START = 3  # SD_LISTEN_FDS_START
VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")
WEB, NOTIFICATIONS = "web", "notifications"


class ActivationError(ValueError):
    """The sockets systemd should have handed over are missing or unusable; the message says why."""


def listen_fds(environ: MutableMapping[str, str], pid: int) -> list[tuple[int, str]]:
    """(file descriptor, name) of each socket handed to process ``pid``; removes the variables from
    ``environ``. A socket without a name (no ``LISTEN_FDNAMES``) is named ""."""
    pid_text, count_text, names_text = (environ.pop(name, None) for name in VARIABLES)
    if pid_text is None or count_text is None:
        raise ActivationError("no sockets were handed over (LISTEN_PID and LISTEN_FDS are not set)")
    if pid_text.strip() != str(pid):
        raise ActivationError(f"the sockets are for process {pid_text}, not for this one ({pid})")
    if not count_text.isdigit() or int(count_text) == 0:
        raise ActivationError(f"LISTEN_FDS={count_text}: no sockets were handed over")
    count = int(count_text)
    names = [""] * count if names_text is None else names_text.split(":")
    if len(names) != count:
        raise ActivationError(f"LISTEN_FDNAMES names {len(names)} sockets, LISTEN_FDS={count}")
    return [(LISTEN_FDS_START + index, name) for index, name in enumerate(names)]


@dataclass(frozen=True, slots=True)
class ActivatedSockets:
    web: socket.socket
    notifications: socket.socket | None


def assign(fds: list[tuple[int, str]]) -> ActivatedSockets:
    """The web port's socket and the notification listener's among ``fds``, each checked to be a listening
    TCP socket (and made close-on-exec)."""
    roles: dict[str, int] = {}
    for fd, name in fds:
        role = name if name in (WEB, NOTIFICATIONS) else WEB
        if role in roles:
            what = f"fd {fd}" + (f" ({name})" if name else "")
            raise ActivationError(f"{what} is one socket too many: expected one named {WEB}, one named {NOTIFICATIONS}")
        roles[role] = fd
    if WEB not in roles:
        raise ActivationError(f"no socket for the web port: only one named {NOTIFICATIONS}")
    notifications = _adopt(roles[NOTIFICATIONS]) if NOTIFICATIONS in roles else None
    return ActivatedSockets(web=_adopt(roles[WEB]), notifications=notifications)


def _adopt(fd: int) -> socket.socket:
    try:
        sock = socket.socket(fileno=fd)
    except OSError as err:
        raise ActivationError(f"fd {fd}: {err.strerror or err}") from None
    try:
        os.set_inheritable(fd, False)
        return serving.check_listening(sock)
    except (OSError, ValueError) as err:
        sock.detach()  # not ours to close: whatever it is, it stays as it was handed over
        raise ActivationError(f"fd {fd}: {err}") from None


def activated_sockets() -> ActivatedSockets:
    """The sockets handed to this process (removing the variables from its environment)."""
    return assign(listen_fds(os.environ, os.getpid()))
