"""Tests for exporter.web.webconfig: validation messages, and a real aiohttp server behind TLS and auth."""

from __future__ import annotations

import asyncio
import base64
import datetime
import ipaddress
import ssl
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import bcrypt
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bems_simulator.pki import CertificateAuthority
from exporter.errors import ConfigError
from exporter.web import webconfig
from exporter.web.webconfig import load_web_config

PASSWORD = "correct horse battery staple"
# Cost 4 keeps the suite fast; production hashes use 10 or more.
PASSWORD_HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode()


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


@dataclass(frozen=True)
class PKI:
    directory: Path
    ca_file: Path
    cert_file: Path
    key_file: Path
    other_key_file: Path
    encrypted_key_file: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    """A CA, a server certificate for 127.0.0.1 signed by it, an unrelated and an encrypted key."""
    directory = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _certificate("test CA", ca_key, None, ca_key, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = _certificate("127.0.0.1", server_key, ca_cert, ca_key, ca=False)
    files = {
        "ca.pem": ca_cert.public_bytes(serialization.Encoding.PEM),
        "server.crt": server_cert.public_bytes(serialization.Encoding.PEM),
        "server.key": _key_pem(server_key),
        "other.key": _key_pem(ec.generate_private_key(ec.SECP256R1())),
        "encrypted.key": server_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        ),
    }
    for name, content in files.items():
        (directory / name).write_bytes(content)
    return PKI(
        directory=directory,
        ca_file=directory / "ca.pem",
        cert_file=directory / "server.crt",
        key_file=directory / "server.key",
        other_key_file=directory / "other.key",
        encrypted_key_file=directory / "encrypted.key",
    )


@pytest.fixture
def write_config(pki: PKI, tmp_path: Path) -> Callable[[str], Path]:
    """Writes a web config next to a copy of the PKI files, so relative paths resolve to them."""
    for source in (pki.ca_file, pki.cert_file, pki.key_file, pki.other_key_file, pki.encrypted_key_file):
        (tmp_path / source.name).write_bytes(source.read_bytes())
    (tmp_path / "garbage.pem").write_text("not a PEM file\n")

    def write(text: str) -> Path:
        path = tmp_path / "web.yml"
        path.write_text(text)
        return path

    return write


TLS = "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"

BAD_CONFIGS = [
    pytest.param(
        "tls_server_config: [",
        None,
        "invalid YAML: expected the node content, but found '<stream end>' (line 1, column 21)",
        id="invalid-yaml",
    ),
    pytest.param("- tls_server_config\n", 1, "must be a mapping, got a list", id="not-a-mapping"),
    pytest.param(
        "tls_config: {}\n",
        1,
        "tls_config: unknown key (expected one of: basic_auth_users, http_server_config, tls_server_config)",
        id="unknown-top-level-key",
    ),
    pytest.param(
        "rate_limit: {burst: 1}\n",
        1,
        "rate_limit: exporter-toolkit option not supported by bems-exchange-exporter",
        id="toolkit-only-top-level-key",
    ),
    pytest.param(
        "tls_server_config: server.crt\n",
        1,
        "tls_server_config: must be a mapping, got a string",
        id="tls-not-a-mapping",
    ),
    pytest.param(
        TLS + "  certfile: x\n",
        4,
        "tls_server_config.certfile: unknown key (expected one of: "
        "cert_file, client_auth_type, client_ca_file, key_file, max_version, min_version)",
        id="unknown-tls-key",
    ),
    pytest.param(
        TLS + "  cipher_suites: [TLS_AES_128_GCM_SHA256]\n",
        4,
        "tls_server_config.cipher_suites: exporter-toolkit option not supported by bems-exchange-exporter",
        id="toolkit-only-tls-key",
    ),
    pytest.param(
        "tls_server_config:\n  key_file: server.key\n",
        1,
        "tls_server_config.cert_file: required when tls_server_config is set",
        id="missing-cert-file",
    ),
    pytest.param(
        "tls_server_config:\n  cert_file: server.crt\n",
        1,
        "tls_server_config.key_file: required when tls_server_config is set",
        id="missing-key-file",
    ),
    pytest.param(
        "tls_server_config:\n  cert_file: 42\n  key_file: server.key\n",
        2,
        "tls_server_config.cert_file: must be a string, got a number",
        id="cert-file-not-a-string",
    ),
    pytest.param(
        "tls_server_config:\n  cert_file: missing.crt\n  key_file: server.key\n",
        2,
        "tls_server_config.cert_file: cannot read {dir}/missing.crt: No such file or directory",
        id="cert-file-missing",
    ),
    pytest.param(
        "tls_server_config:\n  cert_file: server.crt\n  key_file: missing.key\n",
        3,
        "tls_server_config.key_file: cannot read {dir}/missing.key: No such file or directory",
        id="key-file-missing",
    ),
    pytest.param(
        "tls_server_config:\n  cert_file: garbage.pem\n  key_file: server.key\n",
        2,
        "tls_server_config.cert_file: no PEM certificate in {dir}/garbage.pem",
        id="cert-file-not-a-certificate",
    ),
    pytest.param(
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.crt\n",
        3,
        "tls_server_config.key_file: no PEM private key in {dir}/server.crt",
        id="key-file-not-a-key",
    ),
    pytest.param(
        "tls_server_config:\n  cert_file: server.crt\n  key_file: encrypted.key\n",
        3,
        "tls_server_config.key_file: {dir}/encrypted.key is encrypted; an unencrypted private key is required",
        id="key-file-encrypted",
    ),
    pytest.param(
        "tls_server_config:\n  cert_file: server.crt\n  key_file: other.key\n",
        3,
        "tls_server_config.key_file: cannot be used with the certificate in {dir}/server.crt: "
        "[X509: KEY_VALUES_MISMATCH] key values mismatch",
        id="key-does-not-match-cert",
    ),
    pytest.param(
        TLS + "  client_auth_type: RequireAndVerify\n",
        4,
        "tls_server_config.client_auth_type: invalid value "
        "'RequireAndVerify' (expected one of: NoClientCert, RequestClientCert, VerifyClientCertIfGiven, "
        "RequireAndVerifyClientCert)",
        id="bad-client-auth-type",
    ),
    pytest.param(
        TLS + "  client_auth_type: RequireAnyClientCert\n",
        4,
        "tls_server_config.client_auth_type: "
        "RequireAnyClientCert is not supported: Python's ssl module cannot require a client certificate "
        "without verifying it; use RequireAndVerifyClientCert with client_ca_file",
        id="require-any-client-cert",
    ),
    pytest.param(
        TLS + "  client_auth_type: RequireAndVerifyClientCert\n",
        1,
        "tls_server_config.client_ca_file: required when client_auth_type is RequireAndVerifyClientCert",
        id="verify-without-ca",
    ),
    pytest.param(
        TLS + "  client_ca_file: ca.pem\n",
        4,
        "tls_server_config.client_ca_file: set but client_auth_type is "
        "NoClientCert; set client_auth_type to VerifyClientCertIfGiven or RequireAndVerifyClientCert",
        id="ca-without-client-auth",
    ),
    pytest.param(
        TLS + "  client_auth_type: VerifyClientCertIfGiven\n  client_ca_file: garbage.pem\n",
        5,
        "tls_server_config.client_ca_file: cannot load CA certificates from {dir}/garbage.pem: "
        "[X509: NO_CERTIFICATE_OR_CRL_FOUND] no certificate or crl found",
        id="ca-file-unloadable",
    ),
    pytest.param(
        TLS + "  min_version: TLS1.2\n",
        4,
        "tls_server_config.min_version: invalid value 'TLS1.2' (expected one of: TLS10, TLS11, TLS12, TLS13)",
        id="bad-min-version",
    ),
    pytest.param(
        TLS + "  max_version: TLS14\n",
        4,
        "tls_server_config.max_version: invalid value 'TLS14' (expected one of: TLS10, TLS11, TLS12, TLS13)",
        id="bad-max-version",
    ),
    pytest.param(
        TLS + "  min_version: TLS13\n  max_version: TLS12\n",
        4,
        "tls_server_config.min_version: TLS13 is higher than max_version TLS12",
        id="min-above-max",
    ),
    pytest.param(
        "http_server_config:\n  http2: maybe\n",
        2,
        "http_server_config.http2: must be true or false, got a string",
        id="http2-not-a-boolean",
    ),
    pytest.param(
        "http_server_config:\n  headers: [X-Frame-Options]\n",
        2,
        "http_server_config.headers: must be a mapping, got a list",
        id="headers-not-a-mapping",
    ),
    pytest.param(
        "http_server_config:\n  headers: {Strict-Transport-Security: 31536000}\n",
        2,
        "http_server_config.headers.Strict-Transport-Security: must be a string, got a number",
        id="header-value-not-a-string",
    ),
    pytest.param(
        "http_server_config:\n  headers: {Server: nginx}\n",
        2,
        "http_server_config.headers.Server: header "
        "cannot be configured (allowed: Content-Security-Policy, Strict-Transport-Security, "
        "X-Content-Type-Options, X-Frame-Options, X-XSS-Protection)",
        id="header-not-allowed",
    ),
    pytest.param(
        "http_server_config:\n  headers: {X-Frame-Options: allow}\n",
        2,
        "http_server_config.headers.X-Frame-Options: invalid value 'allow' (expected one of: deny, sameorigin)",
        id="bad-header-value",
    ),
    pytest.param(
        'http_server_config:\n  headers: {Content-Security-Policy: "a\\nb"}\n',
        2,
        "http_server_config.headers.Content-Security-Policy: must not contain line breaks",
        id="header-value-with-line-break",
    ),
    pytest.param(
        "basic_auth_users:\n  alice: hunter22\n",
        2,
        "basic_auth_users.alice: not a bcrypt hash (expected "
        "$2a$, $2b$ or $2y$, a cost of 04-31 and 53 more characters; generate one with "
        "`htpasswd -nBC 10 USER`)",
        id="password-not-hashed",
    ),
    pytest.param(
        f"basic_auth_users:\n  alice: '{PASSWORD_HASH.replace('$04$', '$03$')}'\n",
        2,
        "basic_auth_users.alice: not a bcrypt hash (expected $2a$, $2b$ or $2y$, a cost of 04-31 and 53 more "
        "characters; generate one with `htpasswd -nBC 10 USER`)",
        id="bcrypt-cost-too-low",
    ),
    pytest.param(
        f"basic_auth_users:\n  'al:ice': '{PASSWORD_HASH}'\n",
        2,
        "basic_auth_users.al:ice: user name must not contain ':' (HTTP basic auth cannot send it)",
        id="colon-in-user-name",
    ),
    pytest.param(
        f"basic_auth_users:\n  1234: '{PASSWORD_HASH}'\n",
        2,
        "basic_auth_users.1234: user name must be a string, got a number; quote it",
        id="numeric-user-name",
    ),
]


@pytest.mark.parametrize(("text", "line", "reason"), BAD_CONFIGS)
def test_bad_config_is_rejected_with_file_line_key_and_reason(
    write_config: Callable[[str], Path], text: str, line: int | None, reason: str
) -> None:
    path = write_config(text)
    with pytest.raises(ConfigError) as caught:
        load_web_config(path)
    where = f"{path}:{line}" if line is not None else str(path)
    assert str(caught.value) == f"{where}: {reason}".replace("{dir}", str(path.parent))


def test_a_user_listed_twice_is_refused_with_both_lines(write_config: Callable[[str], Path]) -> None:
    """PyYAML would keep the last hash; exporter-toolkit's strict decoding refuses the file, and so does this."""
    path = write_config(f"basic_auth_users:\n  alice: '{PASSWORD_HASH}'\n  alice: x\n")
    with pytest.raises(ConfigError) as caught:
        load_web_config(path)
    not_bcrypt = (
        "not a bcrypt hash (expected $2a$, $2b$ or $2y$, a cost of 04-31 and 53 more characters; generate one with "
        "`htpasswd -nBC 10 USER`)"
    )
    assert str(caught.value).splitlines() == [
        f"{path}:3: basic_auth_users.alice: duplicate key (first at line 2)",
        f"{path}:3: basic_auth_users.alice: {not_bcrypt}",
    ]


def test_every_error_of_the_file_is_reported_at_once_each_with_its_line(write_config: Callable[[str], Path]) -> None:
    """As the main config: an operator fixes the whole file in one go, not one error per restart."""
    path = write_config(
        "tls_server_config:\n"
        "  cert_file: server.crt\n"
        "  key_file: server.key\n"
        "  min_version: TLS1.3\n"
        "http_server_config:\n"
        "  http2: yes please\n"
        "basic_auth_users:\n"
        "  alice: hunter22\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_web_config(path)
    assert [(issue.line, issue.key) for issue in caught.value.issues] == [
        (4, "tls_server_config.min_version"),
        (6, "http_server_config.http2"),
        (8, "basic_auth_users.alice"),
    ]
    assert str(caught.value).splitlines()[:2] == [
        f"{path}:4: tls_server_config.min_version: invalid value 'TLS1.3' "
        "(expected one of: TLS10, TLS11, TLS12, TLS13)",
        f"{path}:6: http_server_config.http2: must be true or false, got a string",
    ]


def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.yml"
    with pytest.raises(ConfigError, match=r"absent\.yml: cannot read file: No such file or directory$"):
        load_web_config(path)


def test_empty_file_means_plain_http_without_auth(write_config: Callable[[str], Path]) -> None:
    config = load_web_config(write_config(""))
    assert config.ssl_context() is None
    assert not config.basic_auth_users
    assert not config.headers


def test_password_hash_is_not_echoed_in_the_error(write_config: Callable[[str], Path]) -> None:
    with pytest.raises(ConfigError) as caught:
        load_web_config(write_config("basic_auth_users:\n  alice: plaintext-password\n"))
    assert "plaintext-password" not in str(caught.value)


def test_valid_config_resolves_paths_against_its_directory(write_config: Callable[[str], Path]) -> None:
    path = write_config(
        TLS + "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.pem\n"
        "  min_version: TLS13\n"
        f"http_server_config:\n  http2: false\n  headers: {{X-Frame-Options: deny}}\nbasic_auth_users:\n"
        f"  alice: '{PASSWORD_HASH}'\n"
    )
    config = load_web_config(path)
    assert config.tls is not None
    assert config.tls.cert_file == path.parent / "server.crt"
    assert config.tls.client_ca_file == path.parent / "ca.pem"
    context = config.ssl_context()
    assert context is not None
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.minimum_version == ssl.TLSVersion.TLSv1_3
    assert context.maximum_version == ssl.TLSVersion.TLSv1_3
    assert dict(config.headers) == {"X-Frame-Options": "deny"}
    assert config.basic_auth_users == {"alice": PASSWORD_HASH.encode()}


# --- a real server -------------------------------------------------------------------------------


async def _ok(request: web.Request) -> web.Response:
    return web.Response(text="ok")


@dataclass(frozen=True)
class RunningServer:
    url: str
    client_ssl: ssl.SSLContext


@pytest.fixture
async def server(write_config: Callable[[str], Path], pki: PKI) -> AsyncIterator[RunningServer]:
    """An aiohttp server on 127.0.0.1 with TLS 1.3 only, basic auth for alice and one extra header."""
    config = load_web_config(
        write_config(
            TLS + "  min_version: TLS13\n"
            "http_server_config:\n  headers: {X-Frame-Options: deny, X-Content-Type-Options: nosniff}\n"
            f"basic_auth_users:\n  alice: '{PASSWORD_HASH}'\n"
        )
    )
    app = web.Application(middlewares=[config.middleware()])
    app.router.add_get("/metrics", _ok)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=config.ssl_context()).start()
        host, port = runner.addresses[0][:2]
        yield RunningServer(url=f"https://{host}:{port}", client_ssl=ssl.create_default_context(cafile=pki.ca_file))
    finally:
        await runner.cleanup()


def _basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="no-credentials"),
        pytest.param(_basic("alice", "wrong"), id="wrong-password"),
        pytest.param(_basic("mallory", PASSWORD), id="unknown-user"),
        pytest.param({"Authorization": "Basic !!!not-base64"}, id="malformed"),
        pytest.param({"Authorization": "Bearer abc"}, id="other-scheme"),
    ],
)
async def test_request_without_valid_credentials_gets_401(server: RunningServer, headers: dict[str, str]) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{server.url}/metrics", headers=headers, ssl=server.client_ssl) as response,
    ):
        assert response.status == 401
        assert response.headers["WWW-Authenticate"] == 'Basic realm="bems-exchange-exporter"'
        assert response.headers["X-Frame-Options"] == "deny"


async def test_right_credentials_get_200_with_configured_headers(server: RunningServer) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{server.url}/metrics", headers=_basic("alice", PASSWORD), ssl=server.client_ssl) as response,
    ):
        assert response.status == 200
        assert await response.text() == "ok"
        assert response.headers["X-Frame-Options"] == "deny"
        assert response.headers["X-Content-Type-Options"] == "nosniff"


async def test_configured_headers_are_added_to_error_responses(server: RunningServer) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{server.url}/nowhere", headers=_basic("alice", PASSWORD), ssl=server.client_ssl) as response,
    ):
        assert response.status == 404
        assert response.headers["X-Frame-Options"] == "deny"


async def test_plain_http_to_the_tls_port_fails(server: RunningServer) -> None:
    plain_url = server.url.replace("https://", "http://")
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientError):
            async with session.get(f"{plain_url}/metrics", headers=_basic("alice", PASSWORD)):
                pass


@pytest.mark.parametrize(
    ("client_max_version", "accepted"),
    [(ssl.TLSVersion.TLSv1_2, False), (ssl.TLSVersion.TLSv1_3, True)],
    ids=["tls12-client-rejected", "tls13-client-accepted"],
)
async def test_min_version_tls13(
    server: RunningServer, pki: PKI, client_max_version: ssl.TLSVersion, accepted: bool
) -> None:
    client_ssl = ssl.create_default_context(cafile=pki.ca_file)
    client_ssl.maximum_version = client_max_version
    async with aiohttp.ClientSession() as session:
        request = session.get(f"{server.url}/metrics", headers=_basic("alice", PASSWORD), ssl=client_ssl)
        if accepted:
            async with request as response:
                assert response.status == 200
        else:
            # asyncio's TLS server drops the connection on a failed handshake, so the client sees a
            # reset rather than a protocol_version alert; either way no connection is established.
            with pytest.raises(aiohttp.ClientConnectorError):
                async with request:
                    pass


# --- the verdict cache ---------------------------------------------------------------------------


@pytest.fixture
def checkpw_calls(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Counts bcrypt verifications by wrapping the module's checkpw reference; returns the hashes used."""
    calls: list[bytes] = []
    real_checkpw = webconfig.checkpw

    def counting_checkpw(password: bytes, hashed: bytes) -> bool:
        calls.append(hashed)
        return real_checkpw(password, hashed)

    monkeypatch.setattr(webconfig, "checkpw", counting_checkpw)
    return calls


async def _status(middleware: webconfig.Middleware, headers: dict[str, str]) -> int:
    """Runs one request through the middleware in front of a handler that answers 200."""
    response = await middleware(make_mocked_request("GET", "/metrics", headers=headers), _ok)
    return response.status


@pytest.fixture
def auth_middleware(write_config: Callable[[str], Path]) -> webconfig.Middleware:
    return load_web_config(write_config(f"basic_auth_users:\n  alice: '{PASSWORD_HASH}'\n")).middleware()


async def test_repeated_credentials_are_verified_by_bcrypt_once(
    auth_middleware: webconfig.Middleware, checkpw_calls: list[bytes]
) -> None:
    assert await _status(auth_middleware, _basic("alice", PASSWORD)) == 200
    assert await _status(auth_middleware, _basic("alice", PASSWORD)) == 200
    assert len(checkpw_calls) == 1
    assert await _status(auth_middleware, _basic("alice", "wrong")) == 401
    assert await _status(auth_middleware, _basic("alice", "wrong")) == 401
    assert len(checkpw_calls) == 2


async def test_concurrent_requests_with_the_same_credentials_share_one_bcrypt_check(
    auth_middleware: webconfig.Middleware, checkpw_calls: list[bytes]
) -> None:
    statuses = await asyncio.gather(*(_status(auth_middleware, _basic("alice", PASSWORD)) for _ in range(10)))
    assert statuses == [200] * 10
    assert len(checkpw_calls) == 1


async def test_unknown_user_costs_a_bcrypt_check_against_a_decoy(
    auth_middleware: webconfig.Middleware, checkpw_calls: list[bytes]
) -> None:
    assert await _status(auth_middleware, _basic("mallory", PASSWORD)) == 401
    assert len(checkpw_calls) == 1
    decoy = checkpw_calls[0]
    assert decoy != PASSWORD_HASH.encode()
    assert decoy.startswith(b"$2b$04$")  # same cost as the real hashes, so the same time


async def test_cache_evicts_least_recently_used_verdicts(
    auth_middleware: webconfig.Middleware, checkpw_calls: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(webconfig, "AUTH_CACHE_SIZE", 2)
    for password in ("wrong-1", "wrong-2", "wrong-1", "wrong-3"):  # wrong-1 is used again before wrong-3
        await _status(auth_middleware, _basic("alice", password))
    assert len(checkpw_calls) == 3
    await _status(auth_middleware, _basic("alice", "wrong-1"))  # still cached
    assert len(checkpw_calls) == 3
    await _status(auth_middleware, _basic("alice", "wrong-2"))  # evicted
    assert len(checkpw_calls) == 4


async def test_wrong_passwords_cannot_evict_an_accepted_verdict(
    auth_middleware: webconfig.Middleware, checkpw_calls: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(webconfig, "AUTH_CACHE_SIZE", 2)
    assert await _status(auth_middleware, _basic("alice", PASSWORD)) == 200
    for n in range(5):  # more wrong passwords than the cache holds
        assert await _status(auth_middleware, _basic("alice", f"wrong-{n}")) == 401
    assert len(checkpw_calls) == 6
    assert await _status(auth_middleware, _basic("alice", PASSWORD)) == 200
    assert len(checkpw_calls) == 6  # the scraper's verdict survived the flood


async def test_a_flood_of_wrong_passwords_is_bounded_with_503_while_cached_scrapes_pass(
    auth_middleware: webconfig.Middleware, checkpw_calls: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert await _status(auth_middleware, _basic("alice", PASSWORD)) == 200  # the scraper, verified once
    release = threading.Event()
    counting_checkpw = webconfig.checkpw

    def held(password: bytes, hashed: bytes) -> bool:
        release.wait(timeout=30)
        return counting_checkpw(password, hashed)

    monkeypatch.setattr(webconfig, "checkpw", held)
    bound, extra = webconfig.MAX_PENDING_BCRYPT_CHECKS, 5

    async def attempt(password: str) -> web.StreamResponse | web.HTTPException:
        request = make_mocked_request("GET", "/metrics", headers=_basic("alice", password))
        try:
            return await auth_middleware(request, _ok)
        except web.HTTPException as exc:
            return exc

    flood = [asyncio.create_task(attempt(f"wrong-{n}")) for n in range(bound + extra)]
    try:
        async with asyncio.timeout(10):  # the refusals come at once, while every admitted check is held
            while sum(task.done() for task in flood) < extra:
                await asyncio.sleep(0.01)
        refused = [task.result() for task in flood if task.done()]
        assert [r.status for r in refused] == [503] * extra
        assert all(r.headers["Retry-After"] == "1" for r in refused)
        # A cached scrape does not queue behind the flood.
        assert await asyncio.wait_for(_status(auth_middleware, _basic("alice", PASSWORD)), 10) == 200
    finally:
        release.set()
    outcomes = await asyncio.gather(*flood)
    assert sorted(o.status for o in outcomes) == [401] * bound + [503] * extra
    assert len(checkpw_calls) == 1 + bound  # the scraper's check, then one per admitted wrong password


@pytest.mark.parametrize(
    "authorization",
    [
        pytest.param(_basic("alice", "x" * 73)["Authorization"], id="password-beyond-bcrypt-72-byte-limit"),
        pytest.param("Basic w6k=", id="no-colon"),
        pytest.param("Basic é", id="non-ascii"),
        pytest.param("Basic", id="no-token"),
    ],
)
async def test_odd_authorization_headers_are_refused_without_error(
    auth_middleware: webconfig.Middleware, authorization: str
) -> None:
    assert await _status(auth_middleware, {"Authorization": authorization}) == 401


# --- reloading (issue 15, item 6) ------------------------------------------------------------------------


async def _served_certificate(port: int, ca_pem: bytes) -> bytes:
    """The DER certificate a fresh TLS connection to 127.0.0.1:port is served."""
    client_ssl = ssl.create_default_context(cadata=ca_pem.decode())
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ssl)
    try:
        return writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    finally:
        writer.close()


def _der(pem: bytes) -> bytes:
    return x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)


async def test_a_renewed_certificate_is_served_at_the_next_handshake_without_a_restart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ca = CertificateAuthority.create("Renewal Test CA")
    first, second, third = (ca.issue(["localhost"], ["127.0.0.1"]) for _ in range(3))
    cert_file, key_file = tmp_path / "server.crt", tmp_path / "server.key"

    def install(pair: tuple[bytes, bytes]) -> None:
        cert_file.write_bytes(pair[0])
        key_file.write_bytes(pair[1])

    install(first)
    (tmp_path / "web.yml").write_text(TLS)
    live = webconfig.LiveWebConfig(load_web_config(tmp_path / "web.yml"))
    server = await asyncio.start_server(lambda _r, w: w.close(), "127.0.0.1", 0, ssl=live.ssl_context())
    port = server.sockets[0].getsockname()[1]
    try:
        assert await _served_certificate(port, ca.cert_pem) == _der(first[0])
        install(second)
        assert await _served_certificate(port, ca.cert_pem) == _der(second[0])
        # A renewal that does not load (the key of another certificate) keeps the last good one, and says so.
        cert_file.write_bytes(third[0])
        assert await _served_certificate(port, ca.cert_pem) == _der(second[0])
        assert "cannot load the changed certificate; serving the previous one" in caplog.text
        key_file.write_bytes(third[1])  # the pair is complete again
        assert await _served_certificate(port, ca.cert_pem) == _der(third[0])
    finally:
        server.close()
        await server.wait_closed()


@pytest.fixture
def web_yml(tmp_path: Path) -> Path:
    return tmp_path / "web.yml"


async def test_a_reload_applies_a_changed_password_and_keeps_the_last_good_file(
    web_yml: Path, caplog: pytest.LogCaptureFixture
) -> None:
    new_hash = bcrypt.hashpw(b"new password", bcrypt.gensalt(4)).decode()
    web_yml.write_text(f"basic_auth_users:\n  alice: '{PASSWORD_HASH}'\n")
    live = webconfig.LiveWebConfig(load_web_config(web_yml))
    middleware = live.middleware()  # made once, at startup, as create_app does
    assert await _status(middleware, _basic("alice", PASSWORD)) == 200

    web_yml.write_text(f"basic_auth_users:\n  alice: '{new_hash}'\n")
    assert await live.reload() is None
    assert await _status(middleware, _basic("alice", PASSWORD)) == 401  # cached as good before: not any more
    assert await _status(middleware, _basic("alice", "new password")) == 200
    assert [s.value for f in live.families() for s in f.samples] == [1.0]

    web_yml.write_text("basic_auth_users:\n  alice: plaintext\n")
    error = await live.reload()
    assert error is not None and "basic_auth_users.alice: not a bcrypt hash" in str(error)
    assert "web configuration reload failed; keeping the running web configuration" in caplog.text
    assert await _status(middleware, _basic("alice", "new password")) == 200  # the last good file still rules
    assert [s.value for f in live.families() for s in f.samples] == [0.0]

    web_yml.write_text(f"basic_auth_users:\n  alice: '{new_hash}'\n")
    assert await live.reload() is None
    assert [s.value for f in live.families() for s in f.samples] == [1.0]


@pytest.mark.parametrize(
    ("before", "after", "reason"),
    [
        pytest.param("", TLS, "tls_server_config: turning TLS on needs a restart", id="tls-on"),
        pytest.param(TLS, "", "tls_server_config: turning TLS off needs a restart", id="tls-off"),
    ],
)
async def test_a_reload_cannot_turn_tls_on_or_off(
    write_config: Callable[[str], Path], before: str, after: str, reason: str
) -> None:
    live = webconfig.LiveWebConfig(load_web_config(write_config(before)))
    write_config(after)
    error = await live.reload()
    assert error is not None and reason in str(error)
    assert (live.config.tls is None) == (before == "")


async def test_a_reload_applies_new_tls_versions_to_the_running_socket(
    write_config: Callable[[str], Path], pki: PKI
) -> None:
    live = webconfig.LiveWebConfig(load_web_config(write_config(TLS)))
    server = await asyncio.start_server(lambda _r, w: w.close(), "127.0.0.1", 0, ssl=live.ssl_context())
    port = server.sockets[0].getsockname()[1]
    tls12_client = ssl.create_default_context(cafile=pki.ca_file)
    tls12_client.maximum_version = ssl.TLSVersion.TLSv1_2
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=tls12_client)
        writer.close()
        write_config(TLS + "  min_version: TLS13\n")
        assert await live.reload() is None
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await asyncio.open_connection("127.0.0.1", port, ssl=tls12_client)
    finally:
        server.close()
        await server.wait_closed()


def test_without_a_file_there_is_nothing_to_reload() -> None:
    assert asyncio.run(webconfig.LiveWebConfig(webconfig.WebConfig()).reload()) is None
