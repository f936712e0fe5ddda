"""getaddrinfo on a few threads of its own, handed back to the event loop with one wake-up.

``loop.getaddrinfo`` runs the same ``socket.getaddrinfo`` in the default executor; its
``concurrent.futures`` layer (a Future with its condition variable, a chained asyncio future) costs
several times the lookup itself when the name is in the hosts file. Here a lookup is a queue entry and
one ``call_soon_threadsafe`` back. The answers are the system's, unchanged: the same call, the same
flags. A few threads, so that one slow DNS server holds up only the lookups behind it, as many as the
default executor would run.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import socket
import threading
from typing import Any

THREADS = min(32, (os.cpu_count() or 1) + 4)  # ThreadPoolExecutor's default

_Request = tuple[asyncio.AbstractEventLoop, "asyncio.Future[list[Any]]", str, int]
_requests: queue.SimpleQueue[_Request] = queue.SimpleQueue()
_started: list[threading.Thread] = []
_lock = threading.Lock()


def _answer(future: asyncio.Future[list[Any]], infos: list[Any] | None, error: BaseException | None) -> None:
    if future.done():  # the check gave up (timeout) meanwhile
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(infos)


def _serve() -> None:
    while True:
        loop, future, host, port = _requests.get()
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
            outcome: tuple[list[Any] | None, BaseException | None] = (infos, None)
        except OSError as err:
            outcome = (None, err)
        with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits for this answer
            loop.call_soon_threadsafe(_answer, future, *outcome)


def getaddrinfo(host: str, port: int) -> asyncio.Future[list[Any]]:
    """``socket.getaddrinfo(host, port, SOCK_STREAM, IPPROTO_TCP)`` off the event loop."""
    if len(_started) < THREADS:
        with _lock:
            if len(_started) < THREADS:
                thread = threading.Thread(target=_serve, name=f"getaddrinfo-{len(_started)}", daemon=True)
                thread.start()
                _started.append(thread)
    loop = asyncio.get_running_loop()
    future: asyncio.Future[list[Any]] = loop.create_future()
    _requests.put((loop, future, host, port))
    return future
