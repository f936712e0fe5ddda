"""The Prometheus query API (``/api/v1/query``), as Prometheus, VictoriaMetrics, Thanos Query and Mimir answer it.

Credentials come from flags or the URL's ``user:password@``; they go in the ``Authorization`` header only, and
neither they nor the URL's user part ever appear in a message: ``public_url`` is what is shown.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import requests

from .ledger import DAY, Month

Labels = tuple[tuple[str, str], ...]  # sorted, without __name__
Samples = list[tuple[float, float]]


class StoreError(Exception):
    """The store could not answer; the message names the public URL only."""


@dataclass
class Store:
    url: str
    bearer_token: str | None = None
    timeout: float = 120.0

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise StoreError("--prometheus must be an http:// or https:// URL")
        self._auth = (unquote(parts.username or ""), unquote(parts.password or "")) if parts.username else None
        netloc = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
        netloc += f":{parts.port}" if parts.port else ""
        self.public_url = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
        self._session = requests.Session()
        if self.bearer_token:
            self._session.headers["Authorization"] = f"Bearer {self.bearer_token}"

    def query(self, expr: str, at: float) -> list[dict[str, Any]]:
        """An instant query's result (vector or matrix) at ``at``."""
        try:
            response = self._session.get(
                f"{self.public_url}/api/v1/query", params={"query": expr, "time": f"{at:.3f}"},
                auth=self._auth, timeout=self.timeout,
            )  # fmt: skip
        except requests.RequestException as err:
            raise StoreError(f"{self.public_url}: {type(err).__name__}") from None
        if response.status_code != 200:
            raise StoreError(f"{self.public_url}: HTTP {response.status_code} for {expr}: {response.text[:300]}")
        return list(response.json()["data"]["result"])

    def samples(self, selector: str, month: Month, tick: Callable[[], None] = lambda: None) -> dict[Labels, Samples]:
        """The raw samples of ``selector`` in the month, a day per query (``selector[1d]`` at each day's end)."""
        found: dict[Labels, Samples] = {}
        for day_end in range(month.start + DAY, month.end + 1, DAY):
            for series in self.query(f"{selector}[1d]", day_end):
                key = labels_of(series["metric"])
                found.setdefault(key, []).extend((float(t), float(v)) for t, v in series["values"])
            tick()
        return found

    def get_json(self, path: str) -> Any:
        try:
            response = self._session.get(f"{self.public_url}{path}", auth=self._auth, timeout=self.timeout)
            response.raise_for_status()
            return response.json()
        except (requests.RequestException, ValueError) as err:
            raise StoreError(f"{self.public_url}{path}: {type(err).__name__}") from None

    def flag(self, name: str) -> str | None:
        """A Prometheus command-line flag (``/api/v1/status/flags``); None where the store has no such page."""
        try:
            response = self._session.get(f"{self.public_url}/api/v1/status/flags", auth=self._auth, timeout=10)
            return str(response.json()["data"][name]) if response.status_code == 200 else None
        except (requests.RequestException, ValueError, KeyError, TypeError):
            return None


def labels_of(metric: dict[str, str]) -> Labels:
    return tuple(sorted((k, v) for k, v in metric.items() if k != "__name__"))


def selector(name: str, **matchers: str | None) -> str:
    inside = ",".join(f'{k}="{escape(v)}"' for k, v in matchers.items() if v is not None)
    return f"{name}{{{inside}}}" if inside else name


def escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def matchers_of(labels: Labels, *names: str) -> Iterator[tuple[str, str]]:
    wanted = dict(labels)
    for name in names:
        if name in wanted:
            yield name, wanted[name]
