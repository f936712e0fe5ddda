"""The items in the simulated mailboxes, shared by EWS and Graph, and who hears of new ones.

One store serves both protocols, as one Exchange mailbox does: a message created over Graph is an
item EWS can delete, and either way of creating one raises the push notifications both offer. Item
ids are URL-safe so that the same id works in an EWS ``ItemId`` and in a Graph URL path.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

# What real EWS item ids and change keys start with (a mailbox GUID's encoding follows).
_ITEM_ID_PREFIX = "AAMkAD"
_CHANGE_KEY_PREFIX = "CQAAABYAAAD"


@dataclass(frozen=True)
class MailItem:
    id: str
    change_key: str
    mailbox: str
    folder: str  # a distinguished folder name: inbox, drafts, ...
    subject: str
    body: str
    created: datetime
    # The mailbox's event counter when the item was created: EWS watermarks are built from it.
    sequence: int

    def state(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "change_key": self.change_key,
            "mailbox": self.mailbox,
            "folder": self.folder,
            "subject": self.subject,
            "created": self.created.isoformat(),
        }


ItemObserver = Callable[[MailItem], None]


class MailStore:
    """Items per mailbox (addresses matched case-insensitively), and observers told of each new item."""

    def __init__(self) -> None:
        self._items: dict[str, dict[str, MailItem]] = {}
        self._sequences: dict[str, int] = {}
        self._observers: list[ItemObserver] = []

    def add_observer(self, observer: ItemObserver) -> None:
        self._observers.append(observer)

    def create(self, mailbox: str, folder: str, subject: str, body: str) -> MailItem:
        key = mailbox.casefold()
        self._sequences[key] = self.sequence(mailbox) + 1
        item = MailItem(
            id=_new_item_id(),
            change_key=_new_change_key(),
            mailbox=mailbox,
            folder=folder,
            subject=subject,
            body=body,
            created=datetime.now(UTC),
            sequence=self._sequences[key],
        )
        self._items.setdefault(key, {})[item.id] = item
        for observer in self._observers:
            observer(item)
        return item

    def find(self, mailbox: str, item_id: str) -> MailItem | None:
        return self._items.get(mailbox.casefold(), {}).get(item_id)

    def delete(self, mailbox: str, item_id: str) -> bool:
        """Remove an item for good; False when ``mailbox`` holds no item ``item_id``."""
        return self._items.get(mailbox.casefold(), {}).pop(item_id, None) is not None

    def move(self, mailbox: str, item_id: str, folder: str) -> MailItem | None:
        """Move an item to ``folder``; the moved item, under a new id, or None when there is no such item.

        Outlook item ids change when an item moves (learn.microsoft.com/graph/outlook-immutable-id), so
        the old id names nothing afterwards: EWS ``DeleteItem`` answers it ``ErrorItemNotFound``.
        """
        item = self.find(mailbox, item_id)
        if item is None:
            return None
        items = self._items[mailbox.casefold()]
        del items[item_id]
        moved = replace(item, id=_new_item_id(), change_key=_new_change_key(), folder=folder)
        items[moved.id] = moved
        return moved

    def items(self, mailbox: str) -> list[MailItem]:
        return list(self._items.get(mailbox.casefold(), {}).values())

    def sequence(self, mailbox: str) -> int:
        """How many items were ever created in ``mailbox``: the newest event's number."""
        return self._sequences.get(mailbox.casefold(), 0)


def _new_item_id() -> str:
    return _ITEM_ID_PREFIX + secrets.token_urlsafe(48)


def _new_change_key() -> str:
    return _CHANGE_KEY_PREFIX + secrets.token_urlsafe(12)
