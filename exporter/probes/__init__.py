"""The checks, one module each. Adding a check is adding a module and a line in ``CHECKS``."""

from __future__ import annotations

from ..config import Config, Target
from . import auth, reachability, tls, token
from .base import Check, ProbeContext, ProbeFn

CHECKS: dict[str, Check] = {check.name: check for check in (reachability.CHECK, tls.CHECK, auth.CHECK, token.CHECK)}


def checks_for(config: Config, target: Target) -> list[Check]:
    return [check for check in CHECKS.values() if check.applies(config, target)]


__all__ = ["CHECKS", "Check", "ProbeContext", "ProbeFn", "checks_for"]
