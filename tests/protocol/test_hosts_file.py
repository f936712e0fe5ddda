"""Names pinned in the hosts file are answered without getaddrinfo, as glibc would answer them."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from exporter.protocol import hosts_file
from exporter.protocol import tcp_tls as net
from exporter.protocol.hosts_file import HostsFile

HOSTS = """\
127.0.0.1   localhost
::1         localhost ip6-localhost  # comment
10.0.0.5    mail.corp.example.com mail   # the on-premises CAS
10.0.0.6    Mail.Corp.Example.com.
not-an-ip   broken.example.com
# 10.9.9.9  commented.example.com
"""


def _files(tmp_path: Path, nsswitch: str = "hosts: files dns\n", hosts: str = HOSTS) -> HostsFile:
    (tmp_path / "nsswitch.conf").write_text(f"passwd: files\n{nsswitch}")
    (tmp_path / "hosts").write_text(hosts)
    return HostsFile(str(tmp_path / "hosts"), str(tmp_path / "nsswitch.conf"))


def test_pinned_names_in_file_order_case_and_trailing_dot_ignored(tmp_path: Path) -> None:
    pinned = _files(tmp_path)
    assert pinned.lookup("mail.corp.example.com") == ("10.0.0.5", "10.0.0.6")
    assert pinned.lookup("MAIL.corp.example.com.") == ("10.0.0.5", "10.0.0.6")
    assert pinned.lookup("localhost") == ("127.0.0.1", "::1")
    assert pinned.lookup("mail") == ("10.0.0.5",)
    assert pinned.lookup("broken.example.com") == ()
    assert pinned.lookup("commented.example.com") == ()
    assert pinned.lookup("other.example.com") == ()


@pytest.mark.parametrize("nsswitch", ["hosts: dns files\n", "hosts: resolve [!UNAVAIL=return] files\n", ""])
def test_file_not_consulted_first_means_getaddrinfo_answers(tmp_path: Path, nsswitch: str) -> None:
    assert _files(tmp_path, nsswitch).lookup("mail.corp.example.com") == ()


def test_missing_files_mean_getaddrinfo_answers(tmp_path: Path) -> None:
    assert HostsFile(str(tmp_path / "hosts"), str(tmp_path / "nsswitch.conf")).lookup("localhost") == ()


def test_an_edited_file_is_read_again_after_the_interval(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr(hosts_file, "monotonic", lambda: clock[0])
    pinned = _files(tmp_path)
    assert pinned.lookup("mail") == ("10.0.0.5",)
    hosts = tmp_path / "hosts"
    hosts.write_text("10.0.0.7 mail\n")
    os.utime(hosts, ns=(1, 1))  # a different mtime even on a coarse-clock file system
    assert pinned.lookup("mail") == ("10.0.0.5",)  # not looked at again within the interval
    clock[0] += hosts_file.RECHECK_SECONDS
    assert pinned.lookup("mail") == ("10.0.0.7",)


def test_resolve_answers_pinned_names_without_the_executor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(net, "_hosts_file", _files(tmp_path))

    async def resolve() -> tuple[list[str], float]:
        loop = asyncio.get_running_loop()

        async def no_getaddrinfo(*_args: object, **_kwargs: object) -> list[object]:
            raise AssertionError("getaddrinfo was called for a pinned name")

        monkeypatch.setattr(loop, "getaddrinfo", no_getaddrinfo)
        return await net.resolve("mail.corp.example.com", 443)

    addresses, seconds = asyncio.run(resolve())
    assert addresses == ["10.0.0.5", "10.0.0.6"]
    assert 0 <= seconds < 1
