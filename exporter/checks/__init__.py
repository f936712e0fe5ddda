"""The checks, one module each. Adding a check is adding a module and a line in ``CHECKS``.

A module here is named after the check it implements (``auth``, ``autodiscover``, ``graph``...), or is what
the checks share: ``base`` (the probe context), ``mailboxes`` (per-mailbox units), ``signin`` (requests as
the configured account), ``resources`` (sessions, token caches, back-off that outlive a run) and
``push_state`` (subscriptions and delivery, fed by the daemon's notification listener). A check never
imports another check: what two share lives in one of those, or in ``protocol`` (``make lint`` checks it).

May import ``protocol``, ``config`` and the shared top-level modules; never ``daemon`` or ``web``.
"""

from __future__ import annotations

from ..config import Config, Target
from . import (
    auth,
    autodiscover,
    ews_settings,
    graph,
    impersonation,
    notification_url,
    push,
    reachability,
    service_health,
    tls,
    token,
)
from .base import Check, ProbeContext, ProbeFn

CHECKS: dict[str, Check] = {
    check.name: check
    for check in (
        reachability.CHECK,
        tls.CHECK,
        auth.CHECK,
        token.CHECK,
        impersonation.CHECK,
        autodiscover.CHECK,
        ews_settings.CHECK,
        graph.CHECK,
        service_health.CHECK,
        push.CHECK,
        notification_url.CHECK,
    )
}


def checks_for(config: Config, target: Target) -> list[Check]:
    owned = config.owns(target.name)  # per-mailbox checks are owned through the sharded mailboxes instead
    return [check for check in CHECKS.values() if (owned or check.per_mailbox) and check.applies(config, target)]


def planned_checks(config: Config) -> dict[str, tuple[str, ...]]:
    """Target name -> the names of the checks the configuration gives it."""
    return {t.name: tuple(c.name for c in checks_for(config, t)) for t in config.targets}


__all__ = ["CHECKS", "Check", "ProbeContext", "ProbeFn", "checks_for", "planned_checks"]
