"""Loading the configuration file, and the rules that need the whole of it.

A file that does not load raises one :class:`ConfigError` listing every issue found, each as
``FILE:LINE: KEY: REASON``; nothing is half-applied. Three passes, each collecting all it finds:
the YAML (keys written twice), the schema (pydantic reports every field of every model), then the
cross-field rules below, which need a whole, schema-valid configuration to compare against (a
target's credential must exist, its timeout fit its interval), as query-exporter validates its
config after the schema. When the schema fails, the cross-field rules are not run: they would
compare against values that are not there.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from ..errors import ConfigError, ConfigIssue
from .durations import format_duration
from .schema import (
    PASSWORD_METHODS,
    AuthMethod,
    Config,
    EntraCredential,
    Exchange,
    Kind,
    Route,
    Scenario,
    Target,
    WindowsCredential,
    _KeyedError,
)
from .yamlfile import Loc, YamlDocument, read_yaml


def key_path(loc: Loc) -> str:
    """``targets[0].auth``: how the docs and the errors write a key."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path


def _user_loc(loc: tuple[Any, ...]) -> Loc:
    """Pydantic's ``loc`` without the credential union's branch name (``windows``, ``entra``), which is
    pydantic's, not a key of the file."""
    if len(loc) > 2 and loc[0] == "credentials" and loc[2] in {"windows", "entra"}:
        return (*loc[:2], *loc[3:])
    return tuple(loc)


def _schema_errors(err: ValidationError) -> Iterator[tuple[Loc, str]]:
    for detail in err.errors(include_url=False):
        loc = _user_loc(tuple(detail["loc"]))
        ctx_error = (detail.get("ctx") or {}).get("error")
        if isinstance(ctx_error, _KeyedError):
            # Raised by a nested model's validator, its key is relative to where pydantic found it.
            yield (*loc, *ctx_error.loc), ctx_error.reason
            continue
        message = detail["msg"].removeprefix("Value error, ")
        if detail["type"] == "extra_forbidden":
            message = "unknown key"
        elif detail["type"] == "missing":
            message = "required key is missing"
        elif detail["type"] == "too_short":
            message = "at least one entry is required"
        yield loc, message


def cross_field_errors(config: Config) -> Iterator[tuple[Loc, str]]:
    """Every rule that relates one part of a schema-valid configuration to another, all of them checked."""
    seen: set[str] = set()
    for index, target in enumerate(config.targets):
        where: Loc = ("targets", index)
        if target.name in seen:
            yield (*where, "name"), f"duplicate target name {target.name!r}"
        seen.add(target.name)
        yield from _target_auth_errors(config, target, where)
        if target.push is not None:
            if config.notifications is None:
                yield (*where, "push"), "push needs a notifications block (the exporter's listener)"
            elif target.kind == Kind.GRAPH and not config.notifications.public_url.startswith("https://"):
                yield ("notifications", "public_url"), "Graph calls back over https only"
        interval, timeout = config.interval_of(target), config.timeout_of(target)
        if timeout > interval:
            yield (
                (*where, "timeout"),
                f"timeout {format_duration(timeout)} exceeds the interval {format_duration(interval)}",
            )
        yield from _proxy_credential_errors(config, target.proxy_credential, (*where, "proxy_credential"))
        yield from _dns_errors(config, target, where)
    yield from _population_errors(config)
    if config.route != Route.INTERNET and config.scenario != Scenario.CLOUD_BEMS_ONPREM_EXCHANGE:
        yield (
            ("route",),
            f"route is how cloud BEMS reaches on-premises Exchange: {config.scenario.value} has no such route",
        )
    if config.defaults.timeout > config.defaults.interval:
        yield ("defaults", "timeout"), "timeout exceeds the interval"
    yield from _proxy_credential_errors(config, config.defaults.proxy_credential, ("defaults", "proxy_credential"))


# The kinds whose checks act as each mailbox: EWS (impersonation, application access) and Graph.
_MAILBOX_KINDS = frozenset({Kind.EWS, Kind.GRAPH})


def _population_errors(config: Config) -> Iterator[tuple[Loc, str]]:
    for index, target in enumerate(config.targets):
        if target.population is None:
            continue
        where: Loc = ("targets", index, "population")
        if target.population not in config.populations:
            known = ", ".join(sorted(config.populations)) or "none are defined"
            yield where, f"unknown population {target.population!r} ({known})"
        elif target.kind not in _MAILBOX_KINDS or target.credential is None:
            yield where, "only ews and graph targets with a credential check mailboxes"
    for name, population in config.populations.items():
        if population.entra_group is not None:
            credential = population.entra_group.credential
            if not isinstance(config.credentials.get(credential), EntraCredential):
                yield (
                    ("populations", name, "entra_group", "credential"),
                    f"no Entra credential named {credential!r} (Graph reads the group as an application)",
                )


def _dns_errors(config: Config, target: Target, where: Loc) -> Iterator[tuple[Loc, str]]:
    """A target looked up at its own resolvers connects directly: through a proxy, the proxy resolves the name."""
    if config.dns_of(target) is None:
        return
    if target.proxy_url is not None:
        yield (*where, "proxy_url"), "a target with dns connects directly: the proxy would resolve its name itself"
    elif config.defaults.proxy_url is not None:
        key = (*where, "dns") if target.dns is not None else ("defaults", "dns")
        yield (
            key,
            f"{target.name!r} would use defaults.proxy_url, which resolves the name itself: dns needs a direct "
            "connection",
        )


def _proxy_credential_errors(config: Config, name: str | None, loc: Loc) -> Iterator[tuple[Loc, str]]:
    credential = config.credentials.get(name) if name is not None else None
    if name is not None and not (isinstance(credential, WindowsCredential) and credential.password is not None):
        yield loc, f"no username/password credential named {name!r}"


def _target_auth_errors(config: Config, target: Target, where: Loc) -> Iterator[tuple[Loc, str]]:
    auth: Loc = (*where, "auth")
    if target.spn is not None and AuthMethod.KERBEROS not in (target.auth or ()):
        yield (*where, "spn"), "only the kerberos method uses a service principal: add kerberos to auth"
    if target.credential is None:
        if target.auth:
            yield auth, "auth methods need a credential"
        return
    credential = config.credentials.get(target.credential)
    if credential is None:
        known = ", ".join(sorted(config.credentials)) or "none are defined"
        yield (*where, "credential"), f"unknown credential {target.credential!r} ({known})"
        return
    methods = set(target.auth or ())
    if isinstance(credential, EntraCredential):
        if methods - {AuthMethod.OAUTH}:
            yield auth, f"{target.credential!r} is an Entra ID application: only oauth applies"
    elif AuthMethod.OAUTH in methods:
        yield auth, f"{target.credential!r} is a Windows account: oauth needs an Entra credential"
    elif not methods:
        yield auth, "list the methods to test: basic, ntlm, kerberos, certificate, or several"
    else:
        yield from _windows_method_errors(target, credential, methods, auth)


def _windows_method_errors(
    target: Target, credential: WindowsCredential, methods: set[AuthMethod], auth: Loc
) -> Iterator[tuple[Loc, str]]:
    """What each Windows account method needs of the credential, and where a client certificate goes."""
    name = target.credential
    if credential.password is None and (needing := sorted(methods & PASSWORD_METHODS)):
        yield auth, f"{name!r} has no password: {' and '.join(needing)} need a password"
    if AuthMethod.KERBEROS in methods and credential.password is None and credential.keytab is None:
        yield auth, f"{name!r} has neither password nor keytab: kerberos needs one"
    if AuthMethod.CERTIFICATE in methods:
        if credential.certificate_file is None:
            yield auth, f"{name!r} has no certificate_file: the certificate method presents one"
        if target.exchange != Exchange.ONPREM:
            yield auth, "certificate: client certificates are how BEMS signs in to on-premises Exchange only"


def read_yaml_file(text: str, file: str) -> YamlDocument:
    """The YAML document of ``text``; a syntax error raises ConfigError (nothing else can be checked)."""
    try:
        return read_yaml(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(file, f"invalid YAML: {where}{problem}") from None


def issues_at(document: YamlDocument, file: str, errors: Iterator[tuple[Loc, str]]) -> list[ConfigIssue]:
    """Each ``(loc, reason)`` as an issue with its key path and the line of that key in the file."""
    return [ConfigIssue(file, reason, key_path(loc) or None, document.line_of(loc)) for loc, reason in errors]


def config_error(file: str, issues: list[ConfigIssue]) -> ConfigError:
    """One ConfigError with every issue, in the order of their lines (those without one first)."""
    return ConfigError(file, issues=sorted(issues, key=lambda issue: issue.line or 0))


def parse_config(text: str, file: str) -> Config:
    """Validate YAML text; raise ConfigError listing every issue, each naming ``file``, line, key and reason."""
    document = read_yaml_file(text, file)
    issues = document.duplicate_issues(file, key_path)
    if not isinstance(document.data, dict):
        shape = "the file must hold a mapping with scenario, credentials and targets"
        raise config_error(file, [*issues, ConfigIssue(file, shape)])
    try:
        config = Config.model_validate(document.data)
    except ValidationError as err:
        raise config_error(file, issues + issues_at(document, file, _schema_errors(err))) from None
    issues += issues_at(document, file, cross_field_errors(config))
    if issues:
        raise config_error(file, issues)
    return config


def load_config(path: str | os.PathLike[str]) -> Config:
    file = str(path)
    try:
        text = Path(file).read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(file, f"cannot read: {err.strerror or err}") from None
    except UnicodeDecodeError:
        raise ConfigError(file, "not UTF-8 text") from None
    return parse_config(text, file)
