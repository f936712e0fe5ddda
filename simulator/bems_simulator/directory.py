"""The mailboxes each side of the simulated estate hosts, and the caller's right to reach each of them.

On-prem the right is the ``ApplicationImpersonation`` role held by the service account; in Exchange
Online it is the Entra app's application access (RBAC for Applications, or an application access
policy). Both are the same shape: a grant that covers every mailbox, narrowed or widened per mailbox,
as a role assignment with a management scope would be.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


def validated_address(address: Any) -> str:
    """``address`` if it looks like an SMTP address (``local@domain``); ValueError otherwise."""
    local, at, domain = address.partition("@") if isinstance(address, str) else ("", "", "")
    if not (local and at and domain) or any(character.isspace() for character in address):
        raise ValueError(f"a mailbox must be an SMTP address like user@example.test, not {address!r}")
    return address


class UnknownMailboxError(LookupError):
    def __init__(self, mailbox: str, known: list[str]) -> None:
        super().__init__(f"unknown mailbox {mailbox!r}; mailboxes: {', '.join(known) or 'none'}")


class MailboxDirectory:
    """One side's mailboxes (SMTP addresses, matched case-insensitively) and who may reach them.

    ``right`` names the right in state output: ``impersonation`` on-prem, ``app_access`` online.
    """

    def __init__(self, right: str, mailboxes: list[str]) -> None:
        self.right = right
        self._mailboxes: dict[str, str] = {}
        self._granted_by_default = True
        # Per-mailbox exceptions to the default, keyed like _mailboxes.
        self._exceptions: dict[str, bool] = {}
        for mailbox in mailboxes:
            self.add(mailbox)

    def __contains__(self, mailbox: object) -> bool:
        return isinstance(mailbox, str) and mailbox.casefold() in self._mailboxes

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._mailboxes.values()))

    def add(self, mailbox: str) -> None:
        self._mailboxes.setdefault(validated_address(mailbox).casefold(), mailbox)

    def remove(self, mailbox: str) -> None:
        key = self._key(mailbox)
        del self._mailboxes[key]
        self._exceptions.pop(key, None)

    def set_granted(self, mailbox: str | None, granted: bool) -> None:
        """Grant or withdraw the right for one mailbox, or (``mailbox`` None) for all of them."""
        if mailbox is None:
            self._granted_by_default = granted
            self._exceptions.clear()
        else:
            self._exceptions[self._key(mailbox)] = granted

    def is_granted(self, mailbox: str) -> bool:
        return self._exceptions.get(mailbox.casefold(), self._granted_by_default)

    def state(self) -> dict[str, Any]:
        return {address: {self.right: self.is_granted(address)} for address in self._mailboxes.values()}

    def _key(self, mailbox: str) -> str:
        if mailbox not in self:
            raise UnknownMailboxError(mailbox, list(self._mailboxes.values()))
        return mailbox.casefold()
