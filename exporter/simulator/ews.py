"""EWS (``/EWS/Exchange.asmx``) on the on-prem and Exchange Online endpoints."""

from __future__ import annotations

from functools import partial

from aiohttp import web

from . import challenges

EWS_PATH = "/EWS/Exchange.asmx"


def add_routes(app: web.Application, challenge: challenges.Challenge) -> None:
    # Until authentication is simulated, every request is an unauthenticated one.
    handler = partial(challenges.unauthorized, challenge=challenge)
    app.router.add_post(EWS_PATH, handler)
    app.router.add_get(EWS_PATH, handler)
