"""Name lookups answered from /etc/hosts on the event loop, before getaddrinfo's thread hop.

Exchange hosts are often pinned in the hosts file of the BEMS server. When nsswitch.conf consults
``files`` first, glibc would answer those names from the same file; reading it here spares every check
a trip through the executor, which costs more CPU than the lookup itself. The file is read again when
it changes, looked at no more than every few seconds (as Go's resolver does). Any other name, and any
system that does not consult the file first, goes to getaddrinfo.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from time import monotonic

HOSTS_FILE = "/etc/hosts"
NSSWITCH_FILE = "/etc/nsswitch.conf"
RECHECK_SECONDS = 5.0


def _files_first(nsswitch: str) -> bool:
    for line in nsswitch.splitlines():
        database, _, sources = line.partition("#")[0].partition(":")
        if database.strip() == "hosts":
            return sources.split()[:1] == ["files"]
    return False


def _parse(text: str) -> dict[str, tuple[str, ...]]:
    names: dict[str, list[str]] = {}
    for line in text.splitlines():
        fields = line.partition("#")[0].split()
        if len(fields) < 2:
            continue
        address = fields[0]
        try:
            socket.inet_pton(socket.AF_INET6 if ":" in address else socket.AF_INET, address)
        except OSError:
            continue  # glibc skips such lines too (and link-local zone ids are no use to a check)
        for name in fields[1:]:
            addresses = names.setdefault(name.lower().rstrip("."), [])
            if address not in addresses:
                addresses.append(address)
    return {name: tuple(addresses) for name, addresses in names.items()}


def _stamp(path: str) -> tuple[int, int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_ino, info.st_mtime_ns, info.st_size


@dataclass
class HostsFile:
    """The hosts file's answers, when the system's resolver consults it first."""

    hosts_path: str = HOSTS_FILE
    nsswitch_path: str = NSSWITCH_FILE
    _checked: float = float("-inf")
    _stamps: tuple[object, object] = (None, None)
    _names: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def lookup(self, host: str) -> tuple[str, ...]:
        """The file's addresses for ``host`` in file order; empty when getaddrinfo must answer."""
        now = monotonic()
        if now - self._checked >= RECHECK_SECONDS:
            self._checked = now
            self._reload_if_changed()
        return self._names.get(host.lower().rstrip("."), ())

    def _reload_if_changed(self) -> None:
        stamps = (_stamp(self.nsswitch_path), _stamp(self.hosts_path))
        if stamps == self._stamps:
            return
        self._stamps = stamps
        self._names = {}
        try:
            with open(self.nsswitch_path, encoding="utf-8", errors="replace") as nsswitch:
                if not _files_first(nsswitch.read()):
                    return
            with open(self.hosts_path, encoding="utf-8", errors="replace") as hosts:
                self._names = _parse(hosts.read())
        except OSError:
            return  # no nsswitch.conf (Windows, macOS) or no hosts file: getaddrinfo answers everything
