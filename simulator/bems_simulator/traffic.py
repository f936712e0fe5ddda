"""What reached each endpoint: requests, distinct connections and NTLM handshakes.

The benchmark reads these to show requests on the wire per check (kept-alive connections reused, no
new NTLM handshake per check); tests use them to prove connection reuse.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler


@dataclass
class EndpointTraffic:
    requests: int = 0
    connections: int = 0  # distinct connections that carried a request
    ntlm_handshakes: int = 0  # NTLM or Negotiate handshakes started (a NEGOTIATE message), on-prem only
    kerberos_handshakes: int = 0  # Kerberos tickets presented inside Negotiate, on-prem only
    _seen: weakref.WeakSet[Any] = field(default_factory=weakref.WeakSet, repr=False)

    def state(self) -> dict[str, int]:
        return {
            "requests": self.requests,
            "connections": self.connections,
            "ntlm_handshakes": self.ntlm_handshakes,
            "kerberos_handshakes": self.kerberos_handshakes,
        }

    @web.middleware
    async def count(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        self.requests += 1
        transport = request.transport
        if transport is not None and transport not in self._seen:
            self._seen.add(transport)
            self.connections += 1
        return await handler(request)
