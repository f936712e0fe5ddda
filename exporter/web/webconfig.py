"""The Prometheus exporter-toolkit web configuration (``--web.config.file``).

Operators who already run Prometheus exporters reuse the same file here, so the format follows
https://github.com/prometheus/exporter-toolkit/blob/master/docs/web-configuration.md:
``tls_server_config`` (server certificate, client certificate policy, TLS versions),
``http_server_config`` (extra response headers) and ``basic_auth_users`` (bcrypt hashes).
Relative file paths resolve against the directory of the web config file, as in exporter-toolkit.

Differences from exporter-toolkit, each reported as a ``ConfigError`` rather than silently ignored:

* inline ``cert``/``key``/``client_ca``, ``cipher_suites``, ``curve_preferences``,
  ``prefer_server_cipher_suites``, ``client_allowed_sans`` and ``rate_limit`` are not supported;
* ``client_auth_type: RequireAnyClientCert`` is rejected because Python's ``ssl`` module cannot
  demand a client certificate without verifying it;
* the ``Verify*`` client auth types need ``client_ca_file``: verifying client certificates against
  the public web PKI would authenticate nobody in particular.

``RequestClientCert`` is accepted and behaves like ``NoClientCert``: the exporter makes no decision
based on an unverified client certificate, so not asking for one changes nothing but the handshake.
``http_server_config.http2`` is accepted for compatibility; aiohttp only speaks HTTP/1.1.

As in exporter-toolkit, the file is read again on every reload (``LiveWebConfig``) and the certificate
files are read again when they change (``CertificateReloader``), so a renewed certificate or a changed
password takes effect without a restart. Turning TLS on or off does take one: the socket is either a TLS
socket or not.
"""

from __future__ import annotations

import asyncio
import binascii
import hashlib
import logging
import re
import secrets
import ssl
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, ClassVar

import bcrypt
import yaml
from aiohttp import hdrs, web
from bcrypt import checkpw
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from prometheus_client.core import GaugeMetricFamily, Metric
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from exporter.config.loading import config_error, issues_at, key_path
from exporter.config.yamlfile import Loc, read_yaml
from exporter.daemon.serving import CertificateReloader
from exporter.errors import ConfigError, ConfigIssue
from exporter.metrics import MetricSpec

logger = logging.getLogger(__name__)

REALM = "bems-exchange-exporter"

_TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
_TLS_VERSION_NAMES = {version: name for name, version in _TLS_VERSIONS.items()}
_DEFAULT_MIN_VERSION = ssl.TLSVersion.TLSv1_2
_DEFAULT_MAX_VERSION = ssl.TLSVersion.TLSv1_3

_CLIENT_AUTH_VERIFY_MODES = {
    "NoClientCert": ssl.CERT_NONE,
    "RequestClientCert": ssl.CERT_NONE,  # see the module docstring
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
# "RequireClientCert" is exporter-toolkit's legacy spelling of RequireAnyClientCert.
_UNSUPPORTED_CLIENT_AUTH_TYPES = frozenset({"RequireAnyClientCert", "RequireClientCert"})
_VERIFYING_CLIENT_AUTH_TYPES = frozenset({"VerifyClientCertIfGiven", "RequireAndVerifyClientCert"})

_BCRYPT_HASH = re.compile(r"\$2[aby]\$(?P<cost>\d\d)\$[./A-Za-z0-9]{53}")
_BCRYPT_MIN_COST, _BCRYPT_MAX_COST = 4, 31
# bcrypt only looks at the first 72 bytes; the bcrypt package refuses longer passwords instead of
# truncating them, and so does Go's x/crypto/bcrypt, so such a password can never match.
_BCRYPT_MAX_PASSWORD_BYTES = 72

AUTH_CACHE_SIZE = 1024  # verdicts kept per kind (accepted, refused)
# bcrypt checks waiting or running at once: past this a request with uncached credentials gets 503. At
# cost 10 one check takes ~60 ms of one core, so a full queue is answered within about half a second.
MAX_PENDING_BCRYPT_CHECKS = 8
BUSY_RETRY_AFTER_SECONDS = 1

WEB_CONFIG_RELOAD_OK = MetricSpec(
    "bems_web_config_last_reload_successful",
    "1 if the last load of --web.config.file succeeded; 0 while a failed reload left the previous one in force.",
    per_target=False,
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Middleware = Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class TLSServerConfig:
    """The validated ``tls_server_config`` section, with file paths already resolved."""

    cert_file: Path
    key_file: Path
    client_auth_type: str = "NoClientCert"
    client_ca_file: Path | None = None
    min_version: ssl.TLSVersion = _DEFAULT_MIN_VERSION
    max_version: ssl.TLSVersion = _DEFAULT_MAX_VERSION


@dataclass(frozen=True)
class WebConfig:
    """A validated web config. ``WebConfig()`` is the absence of one: plain HTTP, no auth."""

    file: str = ""
    tls: TLSServerConfig | None = None
    headers: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    basic_auth_users: Mapping[str, bytes] = field(default_factory=lambda: MappingProxyType({}))

    def ssl_context(self) -> ssl.SSLContext | None:
        """A server-side SSL context, or None when the web config does not enable TLS.

        Certificate, key and CA files are read again on every call so that a reload picks up
        renewed certificates; a file that became unusable since loading raises ``ConfigError``.
        """
        if self.tls is None:
            return None
        return _build_ssl_context(self.file, self.tls)

    @property
    def requires_authentication(self) -> bool:
        """True when every request must prove who sends it: a password, or a client certificate the CA signed."""
        verified_client = self.tls is not None and self.tls.client_auth_type == "RequireAndVerifyClientCert"
        return bool(self.basic_auth_users) or verified_client

    def middleware(self) -> Middleware:
        """An aiohttp middleware enforcing this config for good (see ``LiveWebConfig`` for one that reloads)."""
        return LiveWebConfig(self).middleware()


def load_web_config(path: str | Path) -> WebConfig:
    """Read and validate a web config file, including the certificate and key files it names.

    Every error of the file is reported at once, each as ``FILE:LINE: KEY: REASON``, as for the main config:
    keys written twice (a user listed twice under basic_auth_users would get whichever hash comes last;
    exporter-toolkit's strict decoding refuses that too), then every schema error. The certificate files
    are read only once the schema holds, since they are named by it.
    """
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(file, f"cannot read file: {_describe_os_error(exc)}") from exc
    try:
        document = read_yaml(text)
    except yaml.YAMLError as exc:
        raise ConfigError(file, f"invalid YAML: {_describe_yaml_error(exc)}") from exc
    issues = document.duplicate_issues(file, key_path)
    config: WebConfig | None = None
    try:
        config = _validate(file, Path(path).parent, document.data)
    except ValidationError as err:
        issues += issues_at(document, file, _schema_errors(err))
    except ConfigError as err:  # a certificate file that does not load
        issues += [ConfigIssue(i.file, i.reason, i.key, document.line_of(_loc(i.key))) for i in err.issues]
    if issues or config is None:
        raise config_error(file, issues)
    return config


def _loc(key: str | None) -> Loc:
    return tuple(key.split(".")) if key else ()


def _validate(file: str, base_dir: Path, document: object) -> WebConfig:
    if document is None:  # an empty file is a valid, empty configuration
        return WebConfig(file=file)
    schema = _WebConfigFile.model_validate(document)
    tls = schema.tls_server_config.resolve(base_dir) if schema.tls_server_config is not None else None
    http = schema.http_server_config
    headers = http.headers.configured() if http is not None and http.headers is not None else {}
    users = {user: hashed.encode("ascii") for user, hashed in (schema.basic_auth_users or {}).items()}
    config = WebConfig(file=file, tls=tls, headers=MappingProxyType(headers), basic_auth_users=MappingProxyType(users))
    config.ssl_context()  # loads every certificate now, so a broken file fails at startup/reload
    return config


# --- the file's schema -----------------------------------------------------------------------------------
#
# pydantic models, unknown keys forbidden, as the main config (exporter.config.schema). Values are checked
# strictly (YAML already types them: a number where a path belongs is a mistake, not a path), and the
# reasons are this module's own where pydantic's would lose something: which keys are allowed, that a key is
# exporter-toolkit's but not implemented here, what YAML type was found. Every error of the file is reported.


class _KeyedErrors(ValueError):
    """The errors of a model validator, each about one of the model's keys (pydantic only knows the model)."""

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(reason for _, reason in errors))
        self.errors = errors


def _yaml_type(value: object) -> str:
    names = {str: "a string", dict: "a mapping", list: "a list", bool: "a boolean", int: "a number", float: "a number"}
    if value is None:
        return "nothing"
    return names.get(type(value), type(value).__name__)


def _string(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a string, got {_yaml_type(value)}")
    return value


def _choice(value: object, choices: Iterable[str]) -> str:
    text = _string(value)
    if text not in choices:
        raise ValueError(f"invalid value {text!r} (expected one of: {', '.join(choices)})")
    return text


def _tls_version(value: object) -> ssl.TLSVersion:
    return _TLS_VERSIONS[_choice(value, _TLS_VERSIONS)]


def _client_auth_type(value: object) -> str:
    if value in _UNSUPPORTED_CLIENT_AUTH_TYPES:
        raise ValueError(
            f"{value} is not supported: Python's ssl module cannot require a client certificate without "
            "verifying it; use RequireAndVerifyClientCert with client_ca_file"
        )
    return _choice(value, _CLIENT_AUTH_VERIFY_MODES)


def _unset_or(parse: Callable[[object], Any]) -> BeforeValidator:
    """``parse``, except that null and an empty string are the key's absence (Go's zero value, which
    exporter-toolkit reads the same way)."""
    return BeforeValidator(lambda value: None if value is None or value == "" else parse(value))


_Path = Annotated[str | None, _unset_or(_string)]
_ClientAuthType = Annotated[str | None, _unset_or(_client_auth_type)]
_TLSVersionName = Annotated[ssl.TLSVersion | None, _unset_or(_tls_version)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    # Keys exporter-toolkit understands but this exporter does not implement. They get a specific reason so
    # an operator copying a working exporter-toolkit file learns why it is refused.
    toolkit_only_keys: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def unknown_key_reason(cls, key: str) -> str:
        if key in cls.toolkit_only_keys:
            return "exporter-toolkit option not supported by bems-exchange-exporter"
        allowed = sorted(field.alias or name for name, field in cls.model_fields.items())
        return f"unknown key (expected one of: {', '.join(allowed)})"


class _TLSSection(_Section):
    toolkit_only_keys = frozenset(
        {"cert", "key", "client_ca", "cipher_suites", "curve_preferences", "prefer_server_cipher_suites"}
        | {"client_allowed_sans"}
    )

    cert_file: _Path = None
    key_file: _Path = None
    client_auth_type: _ClientAuthType = None
    client_ca_file: _Path = None
    min_version: _TLSVersionName = None
    max_version: _TLSVersionName = None

    @property
    def enabled(self) -> bool:
        return bool(self.model_fields_set)  # ``tls_server_config: {}`` leaves TLS off, as in exporter-toolkit

    @model_validator(mode="after")
    def _consistent(self) -> _TLSSection:
        if not self.enabled:
            return self
        required = {"cert_file": self.cert_file, "key_file": self.key_file}
        errors = [(key, "required when tls_server_config is set") for key, path in required.items() if path is None]
        auth_type = self.client_auth_type or "NoClientCert"
        if auth_type in _VERIFYING_CLIENT_AUTH_TYPES and self.client_ca_file is None:
            errors.append(("client_ca_file", f"required when client_auth_type is {auth_type}"))
        if auth_type == "NoClientCert" and self.client_ca_file is not None:
            # Same refusal as exporter-toolkit: a CA without a policy suggests a forgotten policy.
            errors.append(
                (
                    "client_ca_file",
                    "set but client_auth_type is NoClientCert; set client_auth_type to "
                    "VerifyClientCertIfGiven or RequireAndVerifyClientCert",
                )
            )
        min_version = self.min_version or _DEFAULT_MIN_VERSION
        max_version = self.max_version or _DEFAULT_MAX_VERSION
        if min_version > max_version:
            reason = f"{_TLS_VERSION_NAMES[min_version]} is higher than max_version {_TLS_VERSION_NAMES[max_version]}"
            errors.append(("min_version", reason))
        if errors:
            raise _KeyedErrors(errors)
        return self

    def resolve(self, base_dir: Path) -> TLSServerConfig | None:
        """The section with its paths resolved against the web config's directory; None when it sets nothing."""
        if not self.enabled:
            return None
        assert self.cert_file is not None and self.key_file is not None  # checked by _consistent
        return TLSServerConfig(
            cert_file=base_dir / self.cert_file,
            key_file=base_dir / self.key_file,
            client_auth_type=self.client_auth_type or "NoClientCert",
            client_ca_file=base_dir / self.client_ca_file if self.client_ca_file is not None else None,
            min_version=self.min_version or _DEFAULT_MIN_VERSION,
            max_version=self.max_version or _DEFAULT_MAX_VERSION,
        )


def _header_value(value: object) -> str:
    text = _string(value)
    if "\r" in text or "\n" in text:
        raise ValueError("must not contain line breaks")
    return text


_HeaderValue = Annotated[str | None, BeforeValidator(_header_value)]
_ContentTypeOptions = Annotated[str | None, BeforeValidator(lambda value: _choice(value, ("nosniff",)))]
_FrameOptions = Annotated[str | None, BeforeValidator(lambda value: _choice(value, ("deny", "sameorigin")))]


class _Headers(_Section):
    """exporter-toolkit only lets these headers be configured (some with a fixed set of values), so that a web
    config cannot break authentication or content negotiation. Same list, same rule."""

    strict_transport_security: _HeaderValue = Field(None, alias="Strict-Transport-Security")
    x_content_type_options: _ContentTypeOptions = Field(None, alias="X-Content-Type-Options")
    x_frame_options: _FrameOptions = Field(None, alias="X-Frame-Options")
    x_xss_protection: _HeaderValue = Field(None, alias="X-XSS-Protection")
    content_security_policy: _HeaderValue = Field(None, alias="Content-Security-Policy")

    @classmethod
    def unknown_key_reason(cls, key: str) -> str:
        allowed = sorted(field.alias for field in cls.model_fields.values() if field.alias)
        return f"header cannot be configured (allowed: {', '.join(allowed)})"

    def configured(self) -> dict[str, str]:
        return self.model_dump(by_alias=True, exclude_none=True)


class _HTTPSection(_Section):
    headers: _Headers | None = None
    http2: bool | None = None  # accepted for compatibility; aiohttp only speaks HTTP/1.1


def _user_name(name: object) -> str:
    if not isinstance(name, str):
        raise ValueError(f"user name must be a string, got {_yaml_type(name)}; quote it")
    if ":" in name:
        raise ValueError("user name must not contain ':' (HTTP basic auth cannot send it)")
    return name


def _bcrypt_hash(hashed: object) -> str:
    # The hash is not echoed back: it is a credential too, if a weak one.
    match = _BCRYPT_HASH.fullmatch(hashed) if isinstance(hashed, str) else None
    if match is None or not _BCRYPT_MIN_COST <= int(match["cost"]) <= _BCRYPT_MAX_COST:
        raise ValueError(
            "not a bcrypt hash (expected $2a$, $2b$ or $2y$, a cost of 04-31 and 53 more characters; "
            "generate one with `htpasswd -nBC 10 USER`)"
        )
    return hashed


_UserName = Annotated[str, BeforeValidator(_user_name)]
_BcryptHash = Annotated[str, BeforeValidator(_bcrypt_hash)]


class _WebConfigFile(_Section):
    toolkit_only_keys = frozenset({"rate_limit"})

    tls_server_config: _TLSSection | None = None
    http_server_config: _HTTPSection | None = None
    basic_auth_users: dict[_UserName, _BcryptHash] | None = None


# The model that holds each mapping of the file, so an unknown key's reason can name its allowed keys.
_SECTIONS: dict[Loc, type[_Section]] = {
    (): _WebConfigFile,
    ("tls_server_config",): _TLSSection,
    ("http_server_config",): _HTTPSection,
    ("http_server_config", "headers"): _Headers,
}

_TYPE_REASONS = {
    "model_type": "must be a mapping",
    "dict_type": "must be a mapping",
    "bool_type": "must be true or false",
    "string_type": "must be a string",
}


def _schema_errors(err: ValidationError) -> Iterator[tuple[Loc, str]]:
    """pydantic's errors as ``(loc, reason)``; the reasons those of exporter-toolkit's users' expectations."""
    for detail in err.errors(include_url=False):
        # Every loc part is a mapping key (the file has no lists): 1234 as a user name is the key "1234".
        loc: Loc = tuple(str(part) for part in detail["loc"] if part != "[key]")
        ctx_error = (detail.get("ctx") or {}).get("error")
        if isinstance(ctx_error, _KeyedErrors):
            for key, reason in ctx_error.errors:
                yield (*loc, key), reason
        elif detail["type"] == "extra_forbidden":
            yield loc, _SECTIONS[loc[:-1]].unknown_key_reason(loc[-1])
        elif detail["type"] in _TYPE_REASONS:
            yield loc, f"{_TYPE_REASONS[detail['type']]}, got {_yaml_type(detail['input'])}"
        else:
            yield loc, detail["msg"].removeprefix("Value error, ")


def _describe_yaml_error(exc: yaml.YAMLError) -> str:
    problem = getattr(exc, "problem", None)
    mark = getattr(exc, "problem_mark", None)
    if problem is None or mark is None:
        return str(exc).replace("\n", " ")
    return f"{problem} (line {mark.line + 1}, column {mark.column + 1})"


def _describe_os_error(exc: Exception) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


def _build_ssl_context(file: str, tls: TLSServerConfig) -> ssl.SSLContext:
    prefix = "tls_server_config"
    cert_pem = _read_bytes(file, f"{prefix}.cert_file", tls.cert_file)
    key_pem = _read_bytes(file, f"{prefix}.key_file", tls.key_file)
    # OpenSSL's own errors ("[SSL] PEM lib") do not say which file is wrong; parse each first.
    try:
        x509.load_pem_x509_certificates(cert_pem)
    except ValueError as exc:  # cryptography's explanation is a generic FAQ link, so it is left out
        raise ConfigError(file, f"no PEM certificate in {tls.cert_file}", f"{prefix}.cert_file") from exc
    try:
        serialization.load_pem_private_key(key_pem, password=None)
    except TypeError as exc:  # cryptography's way of saying "this key is encrypted"
        raise ConfigError(
            file, f"{tls.key_file} is encrypted; an unencrypted private key is required", f"{prefix}.key_file"
        ) from exc
    except ValueError as exc:
        raise ConfigError(file, f"no PEM private key in {tls.key_file}", f"{prefix}.key_file") from exc
    except UnsupportedAlgorithm as exc:
        raise ConfigError(file, f"unsupported private key in {tls.key_file}: {exc}", f"{prefix}.key_file") from exc

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = tls.min_version
    context.maximum_version = tls.max_version
    try:
        context.load_cert_chain(tls.cert_file, tls.key_file)
    except (ssl.SSLError, OSError) as exc:
        # Both files parsed above, so what OpenSSL refuses is the pair: usually a key that belongs to
        # another certificate, sometimes a key too weak for its security level.
        raise ConfigError(
            file,
            f"cannot be used with the certificate in {tls.cert_file}: {_describe_ssl_error(exc)}",
            f"{prefix}.key_file",
        ) from exc
    if tls.client_ca_file is not None:
        ca_key = f"{prefix}.client_ca_file"
        _read_bytes(file, ca_key, tls.client_ca_file)
        try:
            context.load_verify_locations(cafile=tls.client_ca_file)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(
                file, f"cannot load CA certificates from {tls.client_ca_file}: {_describe_ssl_error(exc)}", ca_key
            ) from exc
    context.verify_mode = _CLIENT_AUTH_VERIFY_MODES[tls.client_auth_type]
    return context


def _describe_ssl_error(exc: OSError) -> str:
    # "(_ssl.c:3905)" locates the error in CPython's source, which tells an operator nothing.
    return re.sub(r" \(_ssl\.c:\d+\)$", "", str(exc))


def _read_bytes(file: str, key: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(file, f"cannot read {path}: {_describe_os_error(exc)}", key) from exc


def _tls_files(tls: TLSServerConfig) -> tuple[Path, ...]:
    return tuple(path for path in (tls.cert_file, tls.key_file, tls.client_ca_file) if path is not None)


@dataclass(frozen=True)
class _Guard:
    """What the middleware enforces for one loaded web config."""

    verifier: _BasicAuthVerifier | None
    headers: Mapping[str, str]


class LiveWebConfig:
    """The web config in force: read again by ``reload`` (``/-/reload``, SIGHUP), the last good one kept on error.

    Create it at startup; its middleware and its ``ssl_context`` serve one event loop and one socket.
    """

    def __init__(self, config: WebConfig) -> None:
        self.config = config
        self._guard = _Guard(_verifier_for(config), MappingProxyType(dict(config.headers)))
        self.certificates: CertificateReloader | None = None
        if config.tls is not None:
            build = partial(_build_ssl_context, config.file, config.tls)
            self.certificates = CertificateReloader(build, _tls_files(config.tls), "web port")
        self.reload_successful = True

    @property
    def requires_authentication(self) -> bool:
        return self.config.requires_authentication

    def ssl_context(self) -> ssl.SSLContext | None:
        """The listening socket's context (its certificate follows the files), or None for plain HTTP."""
        return self.certificates.context if self.certificates is not None else None

    async def reload(self) -> ConfigError | None:
        """Read the file again and apply it; on error log it, keep the running config and return the error."""
        if not self.config.file:
            return None
        try:
            config = await asyncio.to_thread(load_web_config, self.config.file)
            if (config.tls is None) != (self.config.tls is None):
                state = "on" if config.tls is not None else "off"
                raise ConfigError(
                    config.file, f"turning TLS {state} needs a restart (the socket is TLS or not)", "tls_server_config"
                )
            verifier = self._guard.verifier
            if config.basic_auth_users != self.config.basic_auth_users:
                verifier = await asyncio.to_thread(_verifier_for, config)  # the decoy hash costs one bcrypt
            if self.certificates is not None and config.tls is not None:
                self.certificates.update(partial(_build_ssl_context, config.file, config.tls), _tls_files(config.tls))
        except ConfigError as err:
            self.reload_successful = False
            logger.error(
                "web configuration reload failed; keeping the running web configuration",
                extra={"fields": {"err": str(err)}},
            )
            return err
        self.config = config
        self._guard = _Guard(verifier, MappingProxyType(dict(config.headers)))
        self.reload_successful = True
        logger.info("web configuration reloaded", extra={"fields": {"file": config.file}})
        return None

    def families(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(WEB_CONFIG_RELOAD_OK.name, WEB_CONFIG_RELOAD_OK.help)
        family.add_metric([], 1.0 if self.reload_successful else 0.0)
        yield family

    def middleware(self) -> Middleware:
        """An aiohttp middleware enforcing ``basic_auth_users`` and adding the configured headers.

        Headers are added to returned and raised responses; a handler that streams (prepares its
        response itself) has already sent its headers.
        """
        challenge = {hdrs.WWW_AUTHENTICATE: f'Basic realm="{REALM}"'}

        @web.middleware
        async def web_config_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
            guard = self._guard  # one config for the whole request, even if a reload lands meanwhile
            try:
                if guard.verifier is not None and not await guard.verifier.is_authorized(request):
                    response: web.StreamResponse = web.Response(status=401, text="Unauthorized\n", headers=challenge)
                else:
                    response = await handler(request)
            except web.HTTPException as exc:
                # Error responses (404, 405, 503, ...) are raised, not returned; they get the headers too.
                exc.headers.update(guard.headers)
                raise
            # The operator configured these explicitly, so they win over the handler's values.
            response.headers.update(guard.headers)
            return response

        return web_config_middleware


def _verifier_for(config: WebConfig) -> _BasicAuthVerifier | None:
    return _BasicAuthVerifier(config.basic_auth_users) if config.basic_auth_users else None


class _BasicAuthVerifier:
    """Checks HTTP basic auth credentials against bcrypt hashes, cheaply for repeated scrapes.

    A scrape carries the same credentials every time, so verdicts are cached (keyed by a SHA-256
    of user, password and hash, so no password is kept in memory) in bounded LRUs, the accepted ones
    apart from the refused ones: a flood of wrong passwords cannot evict a scraper's verdict, so a
    legitimate scrape stays a dictionary look-up. Cache misses run bcrypt in a worker thread, one at a
    time, as exporter-toolkit does, so a flood costs at most one core and never blocks the event loop;
    concurrent requests with the same credentials share one check, and past ``MAX_PENDING_BCRYPT_CHECKS``
    pending checks a request with other credentials is answered 503 at once instead of queueing without
    bound.
    """

    def __init__(self, users: Mapping[str, bytes]) -> None:
        self._users = {user.encode("utf-8"): hashed for user, hashed in users.items()}
        # Unknown users are checked against this decoy, at the highest configured cost, so the
        # response time does not reveal which user names exist.
        highest_cost = max(int(_BCRYPT_HASH.fullmatch(h.decode())["cost"]) for h in users.values())
        self._decoy_hash = bcrypt.hashpw(secrets.token_bytes(16), bcrypt.gensalt(highest_cost))
        self._accepted: OrderedDict[bytes, bool] = OrderedDict()
        self._refused: OrderedDict[bytes, bool] = OrderedDict()
        self._bcrypt_lock = asyncio.Lock()
        self._in_flight: dict[bytes, asyncio.Future[bool]] = {}  # checks waiting for or running bcrypt

    async def is_authorized(self, request: web.Request) -> bool:
        """The verdict; raises ``HTTPServiceUnavailable`` when too many bcrypt checks are already pending."""
        credentials = _parse_basic_authorization(request.headers.get(hdrs.AUTHORIZATION))
        if credentials is None:
            return False
        user, password = credentials
        hashed = self._users.get(user)
        known_user = hashed is not None
        hashed = hashed or self._decoy_hash
        cache_key = _credentials_digest(user, password, hashed)

        verdict = self._cached_verdict(cache_key)
        if verdict is None:
            check = self._in_flight.get(cache_key)
            if check is None:  # concurrent requests with the same credentials share one check
                if len(self._in_flight) >= MAX_PENDING_BCRYPT_CHECKS:
                    logger.warning(
                        "too many basic authentication checks pending; answering 503",
                        extra={"fields": {"remote": request.remote, "pending": len(self._in_flight)}},
                    )
                    raise web.HTTPServiceUnavailable(
                        text="too many authentication attempts at once; retry later\n",
                        headers={hdrs.RETRY_AFTER: str(BUSY_RETRY_AFTER_SECONDS)},
                    )
                check = asyncio.ensure_future(self._verify(cache_key, password, hashed, known_user))
                self._in_flight[cache_key] = check
                check.add_done_callback(lambda _: self._in_flight.pop(cache_key, None))
            # Shielded: a client that hangs up must not cancel the check others wait for.
            verdict = await asyncio.shield(check)
        if not verdict:
            fields = {"user": user.decode("utf-8", "replace"), "remote": request.remote}
            logger.debug("basic authentication failed", extra={"fields": fields})
        return verdict

    async def _verify(self, cache_key: bytes, password: bytes, hashed: bytes, known_user: bool) -> bool:
        async with self._bcrypt_lock:
            verdict = await asyncio.to_thread(_check_password, password, hashed) and known_user
        self._remember(cache_key, verdict)
        return verdict

    def _cached_verdict(self, cache_key: bytes) -> bool | None:
        for verdicts in (self._accepted, self._refused):
            verdict = verdicts.get(cache_key)
            if verdict is not None:
                verdicts.move_to_end(cache_key)
                return verdict
        return None

    def _remember(self, cache_key: bytes, verdict: bool) -> None:
        verdicts = self._accepted if verdict else self._refused
        verdicts[cache_key] = verdict
        if len(verdicts) > AUTH_CACHE_SIZE:
            verdicts.popitem(last=False)


def _parse_basic_authorization(header: str | None) -> tuple[bytes, bytes] | None:
    """(user, password) as raw bytes, like Go's Request.BasicAuth, or None if absent or malformed."""
    if header is None:
        return None
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = binascii.a2b_base64(encoded.strip(), strict_mode=True)
    except ValueError:  # binascii.Error, or non-ASCII characters in the header
        return None
    user, separator, password = decoded.partition(b":")
    return (user, password) if separator else None


def _credentials_digest(user: bytes, password: bytes, hashed: bytes) -> bytes:
    digest = hashlib.sha256()
    for part in (user, password, hashed):
        # Length prefixes keep ("ab", "c") and ("a", "bc") from sharing a cache entry.
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.digest()


def _check_password(password: bytes, hashed: bytes) -> bool:
    if len(password) > _BCRYPT_MAX_PASSWORD_BYTES:
        return False
    return checkpw(password, hashed)
