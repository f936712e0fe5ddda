"""A fake Entra ID tenant: OIDC discovery, its signing keys and the v2.0 token endpoint (facts file 7.1-7.4).

It serves what MSAL fetches for ``authority=https://localhost:PORT/<tenant>`` with
``instance_discovery=False``:

- ``GET /{tenant}/v2.0/.well-known/openid-configuration`` (and the ``oidc_authority`` form without
  ``/v2.0``), naming this endpoint's own URLs with the tenant's GUID, as Entra names it;
- ``GET /{tenant}/discovery/v2.0/keys``, the JWKS with the key access tokens are signed with;
- ``POST /{tenant}/oauth2/v2.0/token`` for ``grant_type=client_credentials``, authenticated with the
  app's secret (form body or HTTP Basic) or with a client assertion signed by the app's certificate.

``{tenant}`` is ``contoso.onmicrosoft.com`` or its GUID. Access tokens are RS256 JWTs shaped like the
v1 tokens Exchange Online and Graph receive (``aud`` is the resource, ``roles`` the granted
application permissions). Errors carry the AADSTS shapes of facts file 7.2.

Faults, in ``EntraId.settings`` (``Simulator.configure_entra``, admin ``PATCH /api/v1/auth/entra``):
``secret_expired`` (401 AADSTS7000222 for the right secret; certificates still work),
``token_endpoint_down`` (503), ``throttled`` (429 with ``Retry-After``), ``roles_granted`` false
(tokens without ``roles``: the app was never consented), ``graph_roles`` (the Graph application
permissions consented, ``Application.Read.All`` for instance), ``exchange_roles`` (Exchange Online's:
``full_access_as_app`` and ``Exchange.ManageAsApp``) and ``expires_in`` (token lifetime).

The app registration's credentials, as Graph lists them (``AppCredential``): the client secret and the
certificate, each with an end date that ``set_credential_end`` moves. Only the listing changes; the
secret keeps working until ``secret_expired`` says otherwise, so the two can be tested apart.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from functools import partial
from typing import Any
from urllib.parse import unquote

import jwt
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from .credentials import APP_DISPLAY_NAME, SimulatorCredentials

EXCHANGE_ONLINE_RESOURCE = "https://outlook.office365.com"
GRAPH_RESOURCE = "https://graph.microsoft.com"
# EWS for every mailbox, and the admin API the exporter reads the EWS settings through (exchange_admin.py).
EXCHANGE_ONLINE_ROLES = ["full_access_as_app", "Exchange.ManageAsApp"]
# BEMS's Graph permissions (bems-context.md); a setting, since reading the app's own credentials needs more.
DEFAULT_GRAPH_ROLES = ["Mail.Read", "User.Read.All"]
# A client secret's lifetime as the Entra portal recommends it.
_SECRET_LIFETIME = timedelta(days=180)
DEFAULT_EXPIRES_IN = 3599
CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
_DEFAULT_SCOPE_SUFFIX = "/.default"
# appidacr: how the app authenticated, 1 with a secret and 2 with a certificate.
_SECRET_AUTHENTICATED, _CERTIFICATE_AUTHENTICATED = "1", "2"
_NO_STORE = {"Cache-Control": "no-store, no-cache", "Pragma": "no-cache"}
_DISCOVERY_CACHING = {"Cache-Control": "max-age=86400, private", "Access-Control-Allow-Origin": "*"}


@dataclass
class EntraSettings:
    secret_expired: bool = False
    token_endpoint_down: bool = False
    throttled: bool = False
    throttled_retry_after_seconds: int = 5
    roles_granted: bool = True
    graph_roles: list[str] = field(default_factory=lambda: list(DEFAULT_GRAPH_ROLES))
    exchange_roles: list[str] = field(default_factory=lambda: list(EXCHANGE_ONLINE_ROLES))
    expires_in: int = DEFAULT_EXPIRES_IN

    def update(self, **changes: Any) -> None:
        """Change the named settings; ValueError (and nothing changed) for an unknown name or a bad value."""
        types = {field.name: type(getattr(self, field.name)) for field in fields(self)}
        for name, value in changes.items():
            if name not in types:
                raise ValueError(f"unknown Entra setting {name!r}; settings: {', '.join(types)}")
            # bool is an int: a flag given as a number, or a number given as a flag, is a mistake.
            if type(value) is not types[name]:
                raise ValueError(f"Entra setting {name} must be a {types[name].__name__}, not {value!r}")
            if types[name] is int and value <= 0:
                raise ValueError(f"Entra setting {name} must be a positive number of seconds, not {value}")
            if types[name] is list and not all(isinstance(item, str) and item for item in value):
                raise ValueError(f"Entra setting {name} must be a list of names, not {value!r}")
        for name, value in changes.items():
            setattr(self, name, list(value) if isinstance(value, list) else value)

    def state(self) -> dict[str, Any]:
        return asdict(self)


class CredentialKind(StrEnum):
    SECRET = "secret"  # a passwordCredential in Graph
    CERTIFICATE = "certificate"  # a keyCredential in Graph


@dataclass
class AppCredential:
    """One credential of the app registration, with what Graph lists about it (never the secret itself)."""

    key_id: str
    display_name: str
    start: datetime
    end: datetime

    def state(self) -> dict[str, Any]:
        return {"key_id": self.key_id, "start": iso_utc(self.start), "end": iso_utc(self.end)}


class EntraId:
    """The identity provider's state: the registered app, the token signing key, faults and a request count.

    ``token_requests`` counts every POST to the token endpoint by ``(client_id, scope)``, whatever its
    outcome, so a test can tell a token served from a client's cache from a fresh one.
    """

    def __init__(self, credentials: SimulatorCredentials, graph_roles: Sequence[str] = DEFAULT_GRAPH_ROLES) -> None:
        self._starting_graph_roles = list(graph_roles)
        self.tenant_guid = credentials.tenant_guid
        self.client_id = credentials.client_id
        self.app_certificate_file = credentials.client_certificate_file
        self.app_private_key_file = credentials.client_private_key_file
        self._tenant_aliases = {credentials.tenant_id.casefold(), credentials.tenant_guid.casefold()}
        self._client_secret = credentials.client_secret
        self._app_certificate = x509.load_pem_x509_certificate(self.app_certificate_file.read_bytes())
        # The app registration's directory object; its ids are derived from the client id, so they are stable.
        self.app_object_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"application:{self.client_id}"))
        self.app_display_name = APP_DISPLAY_NAME
        # Graph's hint is the secret's first three characters.
        self.app_secret_hint = self._client_secret[:3]
        # The secret was created once, so a reset keeps its start date.
        self._secret_start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=30)
        # Tokens need not outlive the simulator, so the signing key is new on each start.
        self._signing_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        public_der = self._signing_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self._key_id = _base64url(hashlib.sha1(public_der).digest())
        # v1 access tokens (what Exchange Online and Graph get) name the tenant in this issuer form.
        self.access_token_issuer = f"https://sts.windows.net/{self.tenant_guid}/"
        self.reset()

    def reset(self) -> None:
        """Settings (``graph_roles`` as given at the start), request counts and the credentials' listed end
        dates as they were at the start.

        The tenant, the app and the signing key stay (a new RSA key is most of a start's cost), so a
        token issued before a reset still verifies, as it would at a tenant whose admin undid the faults.
        """
        self.settings = EntraSettings(graph_roles=list(self._starting_graph_roles))
        self.token_requests: Counter[tuple[str, str]] = Counter()
        # On-premises URLs registered as service principal names of Office 365 Exchange Online, as hybrid
        # modern authentication has them (learn.microsoft.com/microsoft-365/enterprise/
        # configure-exchange-server-for-hybrid-modern-authentication): tokens for them are Exchange tokens.
        self.hybrid_resources: set[str] = set()
        self.app_credentials = {
            CredentialKind.SECRET: AppCredential(
                str(uuid.uuid5(uuid.NAMESPACE_URL, f"secret:{self.client_id}")),
                "exporter",
                self._secret_start,
                self._secret_start + _SECRET_LIFETIME,
            ),
            # Entra takes a certificate credential's dates from the certificate.
            CredentialKind.CERTIFICATE: AppCredential(
                str(uuid.uuid5(uuid.NAMESPACE_URL, f"certificate:{self.app_certificate_thumbprint}")),
                self._app_certificate.subject.rfc4514_string(),
                self._app_certificate.not_valid_before_utc,
                self._app_certificate.not_valid_after_utc,
            ),
        }

    @property
    def app_certificate_thumbprint(self) -> str:
        """The SHA-1 thumbprint, in hex, that the app registration shows and MSAL's ``thumbprint`` takes."""
        return self._app_certificate.fingerprint(hashes.SHA1()).hex().upper()

    def set_credential_end(self, kind: CredentialKind | str, end: datetime) -> AppCredential:
        """Move the end date Graph lists for the app's ``secret`` or ``certificate``; ValueError for bad input."""
        try:
            credential = self.app_credentials[CredentialKind(kind)]
        except ValueError:
            raise ValueError(f"unknown credential kind {kind!r}; valid: {', '.join(CredentialKind)}") from None
        if not isinstance(end, datetime) or end.tzinfo is None:
            raise ValueError(f"the end must be a datetime with a time zone, not {end!r}")
        credential.end = end.astimezone(UTC)
        return credential

    def state(self) -> dict[str, Any]:
        return {
            **self.settings.state(),
            "app_credentials": {str(kind): credential.state() for kind, credential in self.app_credentials.items()},
            "app_certificate_file": str(self.app_certificate_file),
            "app_private_key_file": str(self.app_private_key_file),
            "hybrid_resources": sorted(self.hybrid_resources),
            "token_requests": [
                {"client_id": client_id, "scope": scope, "count": count}
                for (client_id, scope), count in self.token_requests.items()
            ],
        }

    def decode_access_token(self, token: str, audience: str) -> dict[str, Any]:
        """The claims of one of our access tokens for ``audience``; raises ``jwt.PyJWTError`` otherwise."""
        return jwt.decode(
            token,
            self._signing_key.public_key(),
            algorithms=["RS256"],
            audience=audience,
            issuer=self.access_token_issuer,
            options={"require": ["exp", "aud", "iss"]},
        )

    def add_routes(self, app: web.Application, base_url: str) -> None:
        app.router.add_get(
            "/{tenant}/v2.0/.well-known/openid-configuration", partial(self._discovery, base_url=base_url)
        )
        app.router.add_get("/{tenant}/.well-known/openid-configuration", partial(self._discovery, base_url=base_url))
        app.router.add_get("/{tenant}/discovery/v2.0/keys", self._keys)
        app.router.add_post("/{tenant}/oauth2/v2.0/token", partial(self._token, base_url=base_url))

    def _knows_tenant(self, request: web.Request) -> bool:
        return request.match_info["tenant"].casefold() in self._tenant_aliases

    async def _discovery(self, request: web.Request, base_url: str) -> web.Response:
        tenant = request.match_info["tenant"]
        if not self._knows_tenant(request):
            return _aadsts_error(
                400,
                "invalid_tenant",
                90002,
                f"Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing "
                "into the correct cloud. Check with your subscription administrator, this may happen if there "
                "are no active subscriptions for the tenant.",
                headers=_DISCOVERY_CACHING,
            )
        tenant_url = f"{base_url}/{self.tenant_guid}"
        metadata = {
            "token_endpoint": f"{tenant_url}/oauth2/v2.0/token",
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
            "jwks_uri": f"{tenant_url}/discovery/v2.0/keys",
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "issuer": f"{tenant_url}/v2.0",
            "request_uri_parameter_supported": False,
            "authorization_endpoint": f"{tenant_url}/oauth2/v2.0/authorize",
            "device_authorization_endpoint": f"{tenant_url}/oauth2/v2.0/devicecode",
            "end_session_endpoint": f"{tenant_url}/oauth2/v2.0/logout",
            "tenant_region_scope": "WW",
            "cloud_instance_name": "microsoftonline.com",
            "msgraph_host": "graph.microsoft.com",
        }
        return web.json_response(metadata, headers=_DISCOVERY_CACHING)

    async def _keys(self, request: web.Request) -> web.Response:
        if not self._knows_tenant(request):
            return _aadsts_error(400, "invalid_tenant", 90002, f"Tenant '{request.match_info['tenant']}' not found.")
        key = jwt.algorithms.RSAAlgorithm.to_jwk(self._signing_key.public_key(), as_dict=True)
        key.update({"use": "sig", "kid": self._key_id, "x5t": self._key_id, "issuer": self.access_token_issuer})
        return web.json_response({"keys": [key]}, headers=_DISCOVERY_CACHING)

    async def _token(self, request: web.Request, base_url: str) -> web.Response:
        form = await request.post()
        basic_client_id, basic_secret = _basic_credentials(request)
        client_id = str(form.get("client_id") or basic_client_id or "")
        scope = str(form.get("scope", ""))
        self.token_requests[(client_id, scope)] += 1
        if self.settings.token_endpoint_down:
            return web.Response(status=503, text="Service Unavailable", headers=_NO_STORE)
        if self.settings.throttled:
            return _aadsts_error(
                429,
                "temporarily_unavailable",
                90055,  # TenantThrottlingError [UNVERIFIED wording]
                "There are too many incoming requests. Please try again later.",
                headers={"Retry-After": str(self.settings.throttled_retry_after_seconds)},
            )
        tenant = request.match_info["tenant"]
        if not self._knows_tenant(request):
            return _aadsts_error(
                400,
                "invalid_request",
                90002,
                f"Tenant '{tenant}' not found. This may happen if there are no active subscriptions for the tenant. "
                "Check to make sure you have the correct tenant ID. Check with your subscription administrator.",
            )
        if form.get("grant_type") != "client_credentials":
            return _aadsts_error(
                400,
                "unsupported_grant_type",
                70003,  # [UNVERIFIED wording]
                "The app requested an unsupported grant type. This simulator issues client_credentials only.",
            )
        if client_id != self.client_id:
            return _aadsts_error(
                400,
                "unauthorized_client",
                700016,
                f"Application with identifier '{client_id}' was not found in the directory '{tenant}'. This can "
                "happen if the application has not been installed by the administrator of the tenant or consented "
                "to by any user in the tenant. You may have sent your authentication request to the wrong tenant.",
            )
        if not _is_default_scope(scope):
            return _aadsts_error(
                400,
                "invalid_scope",
                70011,
                f"The provided value for the input parameter 'scope' is not valid. The scope {scope} is not valid.",
            )
        resource = scope.removesuffix(_DEFAULT_SCOPE_SUFFIX)
        if resource not in (EXCHANGE_ONLINE_RESOURCE, GRAPH_RESOURCE) and resource not in self.hybrid_resources:
            # A resource of another cloud (graph.microsoft.us for a global tenant) or none at all: Entra's
            # InvalidResourceServicePrincipalNotFound (AADSTS error code reference, 500011).
            return _aadsts_error(
                400,
                "invalid_resource",
                500011,
                f"The resource principal named {resource} was not found in the tenant named {tenant}. This can "
                "happen if the application has not been installed by the administrator of the tenant or consented "
                "to by any user in the tenant. You might have sent your authentication request to the wrong tenant.",
            )
        assertion = form.get("client_assertion")
        secret = form.get("client_secret") or basic_secret
        if assertion is not None:
            failure = self._check_assertion(
                str(assertion), str(form.get("client_assertion_type", "")), f"{base_url}/{tenant}", base_url
            )
            authenticated_with = _CERTIFICATE_AUTHENTICATED
        elif secret is not None:
            failure = self._check_secret(str(secret))
            authenticated_with = _SECRET_AUTHENTICATED
        else:
            failure = _aadsts_error(
                401,
                "invalid_client",
                7000218,  # [UNVERIFIED wording]
                "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
            )
        if failure is not None:
            return failure
        return web.json_response(self._issue(resource, authenticated_with), headers=_NO_STORE)

    def _check_secret(self, secret: str) -> web.Response | None:
        if secret != self._client_secret:
            return _aadsts_error(401, "invalid_client", 7000215, "Invalid client secret provided.")
        if self.settings.secret_expired:
            return _aadsts_error(
                401,
                "invalid_client",
                7000222,
                f"The provided client secret keys for app '{self.client_id}' are expired. Visit the Azure portal "
                "to create new keys for your app: https://aka.ms/NewClientSecret, or consider using certificate "
                "credentials for added security: https://aka.ms/certCreds.",
            )
        return None

    def _check_assertion(
        self, assertion: str, assertion_type: str, requested_tenant_url: str, base_url: str
    ) -> web.Response | None:
        """Verify a client assertion as RFC 7523 and Entra want it [UNVERIFIED: the AADSTS texts below]."""
        if assertion_type != CLIENT_ASSERTION_TYPE:
            return _aadsts_error(
                400, "invalid_request", 700025, f"The client_assertion_type '{assertion_type}' is not supported."
            )
        certificate_der = self._app_certificate.public_bytes(serialization.Encoding.DER)
        registered_thumbprints = {
            "x5t": hashlib.sha1(certificate_der).digest(),
            "x5t#S256": hashlib.sha256(certificate_der).digest(),
        }
        try:
            header = jwt.get_unverified_header(assertion)
        except jwt.PyJWTError:
            return _aadsts_error(401, "invalid_client", 50027, "JWT token is invalid or malformed.")
        if not any(_base64url_decode(header.get(name)) == digest for name, digest in registered_thumbprints.items()):
            return _aadsts_error(
                401,
                "invalid_client",
                700027,
                "Client assertion contains an invalid signature. [Reason - The key was not found.]",
            )
        # The audience is the token endpoint, under whichever tenant alias the client was given.
        audiences = [f"{base_url}/{self.tenant_guid}/oauth2/v2.0/token", f"{requested_tenant_url}/oauth2/v2.0/token"]
        try:
            claims = jwt.decode(
                assertion,
                self._app_certificate.public_key(),
                algorithms=["RS256", "PS256"],
                audience=audiences,
                issuer=self.client_id,
                options={"require": ["exp", "aud", "iss", "sub"]},
            )
        except jwt.InvalidSignatureError:
            return _aadsts_error(401, "invalid_client", 700027, "Client assertion failed signature validation.")
        except (jwt.ExpiredSignatureError, jwt.ImmatureSignatureError):
            return _aadsts_error(401, "invalid_client", 700024, "Client assertion is not within its valid time range.")
        except jwt.InvalidIssuerError:
            return _aadsts_error(
                401,
                "invalid_client",
                700021,
                "Client assertion application identifier doesn't match 'client_id' parameter.",
            )
        except jwt.PyJWTError as error:
            return _aadsts_error(401, "invalid_client", 50027, f"JWT token is invalid or malformed: {error}")
        if claims["sub"] != self.client_id:
            return _aadsts_error(
                401,
                "invalid_client",
                700021,
                "Client assertion application identifier doesn't match 'client_id' parameter.",
            )
        return None

    def _issue(self, resource: str, authenticated_with: str) -> dict[str, Any]:
        now = int(time.time())
        expires_in = self.settings.expires_in
        claims: dict[str, Any] = {
            "aud": resource,
            "iss": self.access_token_issuer,
            "iat": now,
            "nbf": now,
            "exp": now + expires_in,
            "appid": self.client_id,
            "appidacr": authenticated_with,
            "idtyp": "app",
            "oid": str(uuid.uuid5(uuid.NAMESPACE_URL, self.client_id)),
            "sub": str(uuid.uuid5(uuid.NAMESPACE_URL, self.client_id)),
            "tid": self.tenant_guid,
            "ver": "1.0",
        }
        roles = self._granted_roles(resource) if self.settings.roles_granted else []
        # Entra leaves the claim out when nothing was consented, rather than sending it empty.
        if roles:
            claims["roles"] = roles
        token = jwt.encode(
            claims, self._signing_key, algorithm="RS256", headers={"kid": self._key_id, "x5t": self._key_id}
        )
        return {"token_type": "Bearer", "expires_in": expires_in, "ext_expires_in": expires_in, "access_token": token}

    def _granted_roles(self, resource: str) -> list[str]:
        """The application permissions admin consent granted the app on ``resource``."""
        exchange = resource == EXCHANGE_ONLINE_RESOURCE or resource in self.hybrid_resources
        return list(self.settings.exchange_roles if exchange else self.settings.graph_roles)


def iso_utc(moment: datetime) -> str:
    """ISO 8601 in UTC with a ``Z``, as Graph writes dates."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _is_default_scope(scope: str) -> bool:
    """Only ``<resource>/.default`` is valid for the client-credentials grant."""
    return scope.endswith(_DEFAULT_SCOPE_SUFFIX) and " " not in scope and scope != _DEFAULT_SCOPE_SUFFIX


def _basic_credentials(request: web.Request) -> tuple[str | None, str | None]:
    """``client_secret_basic``: the client id and secret, each form-urlencoded, in an HTTP Basic header."""
    scheme, _, encoded = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None, None
    try:
        client_id, _, secret = base64.b64decode(encoded, validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None, None
    return unquote(client_id), unquote(secret)


def _aadsts_error(
    status: int, error: str, code: int, description: str, headers: dict[str, str] | None = None
) -> web.Response:
    """An Entra error body (facts file 7.2), with the trace lines Entra appends to every description."""
    trace_id, correlation_id = str(uuid.uuid4()), str(uuid.uuid4())
    timestamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    body = {
        "error": error,
        "error_description": (
            f"AADSTS{code}: {description}\r\nTrace ID: {trace_id}\r\nCorrelation ID: {correlation_id}\r\n"
            f"Timestamp: {timestamp}"
        ),
        "error_codes": [code],
        "timestamp": timestamp,
        "trace_id": trace_id,
        "correlation_id": correlation_id,
        "error_uri": f"https://login.microsoftonline.com/error?code={code}",
    }
    return web.json_response(body, status=status, headers={**_NO_STORE, **(headers or {})})


def _base64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _base64url_decode(value: Any) -> bytes | None:
    """A JWT header's base64url value; clients differ on keeping the ``=`` padding (MSAL keeps it)."""
    if not isinstance(value, str):
        return None
    try:
        return base64.urlsafe_b64decode(value.rstrip("=") + "=" * (-len(value.rstrip("=")) % 4))
    except (binascii.Error, ValueError):
        return None
