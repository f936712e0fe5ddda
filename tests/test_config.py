"""Configuration: the contract's keys load, and every bad file names file, key and reason."""

from __future__ import annotations

import textwrap
from datetime import timedelta
from pathlib import Path

import pytest

from exporter.config import AuthMethod, ConfigError, load_config, parse_config, parse_duration

GOOD = """
scenario: onprem-bems-hybrid
defaults:
  interval: 60s
  timeout: 10s
credentials:
  bemsadmin:
    username: 'CORP\\BEMSAdmin'
    password_file: {secret_file}
  entra-app:
    tenant_id: contoso.onmicrosoft.com
    client_id: 11111111-2222-3333-4444-555555555555
    client_secret_env: BEMS_TEST_SECRET
    authority: https://login.microsoftonline.com
targets:
  - name: onprem-ews
    kind: ews
    exchange: onprem
    url: https://mail.corp.example.com/EWS/Exchange.asmx
    credential: bemsadmin
    auth: [basic, ntlm]
    mailboxes: [alice@corp.example.com]
    interval: 30s
  - name: online-graph
    kind: graph
    exchange: online
    credential: entra-app
    mailboxes: [carol@contoso.com]
"""


@pytest.fixture
def secret_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "bemsadmin.password"
    path.write_text("S3cret-Passw0rd\n")
    monkeypatch.setenv("BEMS_TEST_SECRET", "entra-client-secret-value")
    return path


def write(tmp_path: Path, text: str, secret_file: Path) -> Path:
    path = tmp_path / "bems.yml"
    path.write_text(textwrap.dedent(text).replace("{secret_file}", str(secret_file)))
    return path


def test_the_documented_example_loads(tmp_path: Path, secret_file: Path) -> None:
    config = load_config(write(tmp_path, GOOD, secret_file))
    ews, graph = config.targets
    assert config.interval_of(ews) == timedelta(seconds=30)
    assert config.interval_of(graph) == timedelta(seconds=60)
    assert graph.url == "https://graph.microsoft.com/v1.0"
    assert config.auth_methods_of(graph) == (AuthMethod.OAUTH,)
    assert (ews.host, ews.port) == ("mail.corp.example.com", 443)
    assert sorted(config.secrets()) == ["S3cret-Passw0rd", "entra-client-secret-value"]


def test_inline_secret_is_kept_and_marked(tmp_path: Path, secret_file: Path) -> None:
    text = _replace("    password_file: {secret_file}", "    password: inline-Passw0rd")
    config = load_config(write(tmp_path, text, secret_file))
    assert "inline-Passw0rd" in config.secrets()
    assert config.redacted()["credentials"]["bemsadmin"]["password"] == "<secret>"


def test_secrets_never_render(tmp_path: Path, secret_file: Path) -> None:
    config = load_config(write(tmp_path, GOOD, secret_file))
    rendered = f"{config!r} {config} {config.redacted()} {config.model_dump_json()}"
    assert "S3cret-Passw0rd" not in rendered
    assert "entra-client-secret-value" not in rendered
    redacted = config.redacted()["credentials"]
    assert redacted["bemsadmin"]["password"] == f"<secret from file:{secret_file}>"
    assert redacted["entra-app"]["client_secret"] == "<secret from env:BEMS_TEST_SECRET>"


def _replace(old: str, new: str) -> str:
    assert old in GOOD, old
    return GOOD.replace(old, new, 1)


BAD = [
    pytest.param(
        _replace("scenario: onprem-bems-hybrid", "scenario: hybrid"),
        "scenario",
        "Input should be 'cloud-bems-onprem-exchange', 'onprem-bems-cloud-exchange' or 'onprem-bems-hybrid'",
        id="unknown-scenario",
    ),
    pytest.param(
        _replace("  interval: 60s", "  interval: 60s\n  intervall: 5s"),
        "defaults.intervall",
        "unknown key",
        id="unknown-key",
    ),
    pytest.param(
        _replace("  interval: 60s", "  interval: sixty"),
        "defaults.interval",
        "'sixty' is not a duration such as 30s, 5m or 1h30m",
        id="bad-duration",
    ),
    pytest.param(
        _replace("    interval: 30s", "    interval: 0s"),
        "targets[0].interval",
        "a duration must be greater than zero",
        id="zero-interval",
    ),
    pytest.param(
        _replace("    credential: bemsadmin", "    credential: bemsadmn"),
        "targets[0].credential",
        "unknown credential 'bemsadmn' (bemsadmin, entra-app)",
        id="unknown-credential",
    ),
    pytest.param(
        _replace("  - name: online-graph", "  - name: onprem-ews"),
        "targets[1].name",
        "duplicate target name 'onprem-ews'",
        id="duplicate-name",
    ),
    pytest.param(
        _replace("url: https://mail", "url: http://mail"),
        "targets[0].url",
        "'http://mail.corp.example.com/EWS/Exchange.asmx' must be an https:// URL: credentials are "
        "never sent in clear text",
        id="http-url",
    ),
    pytest.param(
        _replace("password_file: {secret_file}", "password_file: /nonexistent/secret"),
        "credentials.bemsadmin",
        "cannot read secret file /nonexistent/secret: No such file or directory",
        id="missing-secret-file",
    ),
    pytest.param(
        _replace("client_secret_env: BEMS_TEST_SECRET", "client_secret_env: BEMS_UNSET_VARIABLE"),
        "credentials.entra-app",
        "environment variable BEMS_UNSET_VARIABLE is not set",
        id="unset-env",
    ),
    pytest.param(
        _replace("    auth: [basic, ntlm]", "    auth: [basic, oauth]"),
        "targets[0].auth",
        "'bemsadmin' is a Windows account: oauth needs an Entra credential",
        id="oauth-windows",
    ),
    pytest.param(
        _replace("    credential: entra-app", "    credential: entra-app\n    auth: [ntlm]"),
        "targets[1].auth",
        "'entra-app' is an Entra ID application: only oauth applies",
        id="ntlm-entra",
    ),
    pytest.param(
        _replace("    auth: [basic, ntlm]", "    auth: [kerberos]"),
        "targets[0].auth[0]",
        "Input should be 'basic', 'ntlm' or 'oauth'",
        id="unknown-method",
    ),
    pytest.param(
        _replace("    interval: 30s", "    interval: 30s\n    timeout: 45s"),
        "targets[0].timeout",
        "timeout 45s exceeds the interval 30s",
        id="timeout-over-interval",
    ),
    pytest.param(
        _replace("    kind: graph", "    kind: owa"),
        "targets[1].kind",
        "Input should be 'ews', 'autodiscover', 'graph' or 'notification_url'",
        id="unknown-kind",
    ),
    pytest.param(
        _replace("    mailboxes: [alice@corp.example.com]", "    mailboxes: [alice]"),
        "targets[0].mailboxes",
        "'alice' is not an SMTP address",
        id="bad-mailbox",
    ),
    pytest.param(
        _replace("    client_secret_env: BEMS_TEST_SECRET\n", ""),
        "credentials.entra-app",
        "set exactly one of client_secret_file, client_secret_env, client_secret or certificate_file",
        id="entra-without-secret",
    ),
    pytest.param(
        _replace("    password_file: {secret_file}", "    password_file: {secret_file}\n    password: x"),
        "credentials.bemsadmin",
        "set only one of password, password_file",
        id="two-secret-sources",
    ),
    pytest.param(
        _replace("  bemsadmin:\n    username: 'CORP\\BEMSAdmin'", "  bemsadmin:\n    user: x"),
        "credentials.bemsadmin",
        "a credential needs either username (a Windows account) or tenant_id (an Entra ID application)",
        id="credential-kind-unknown",
    ),
    pytest.param(_replace("    kind: ews\n", ""), "targets[0].kind", "required key is missing", id="missing-kind"),
    pytest.param(
        _replace("  timeout: 10s", "  timeout: 10s\n  proxy_url: https://proxy:3128"),
        "defaults.proxy_url",
        "'https://proxy:3128' must be an http:// proxy URL (HTTP CONNECT) or 'from_environment'",
        id="proxy-scheme",
    ),
    pytest.param(
        _replace("    interval: 30s", "    interval: 30s\n    protocols: [json]"),
        "targets[0].protocols",
        "only autodiscover targets have this key",
        id="protocols-on-ews",
    ),
    pytest.param(
        _replace("    kind: ews", "    kind: autodiscover\n    protocols: [pox, imap]"),
        "targets[0].protocols[1]",
        "Input should be 'pox', 'soap' or 'json'",
        id="unknown-protocol",
    ),
    pytest.param(
        _replace("    kind: ews", "    kind: autodiscover\n    allowed_redirect_hosts: [corp.example.com, co.uk]"),
        "targets[0].allowed_redirect_hosts[1]",
        "'co.uk' is a public suffix (publicsuffix.org): anyone can register a domain under it, and credentials "
        "would go to them; name your own domain",
        id="redirect-host-public-suffix",
    ),
    pytest.param(
        _replace("    kind: ews", "    kind: autodiscover\n    allowed_redirect_hosts: [COM.]"),
        "targets[0].allowed_redirect_hosts[0]",
        "'COM.' is a public suffix (publicsuffix.org): anyone can register a domain under it, and credentials "
        "would go to them; name your own domain",
        id="redirect-host-top-level-domain",
    ),
    pytest.param(
        _replace("    kind: ews", "    kind: autodiscover\n    allowed_redirect_hosts: [cloudapp.net]"),
        "targets[0].allowed_redirect_hosts[0]",
        "'cloudapp.net' is a public suffix (publicsuffix.org): anyone can register a domain under it, and "
        "credentials would go to them; name your own domain",
        id="redirect-host-private-section-suffix",
    ),
    pytest.param(
        _replace("    kind: ews", "    kind: autodiscover\n    allowed_redirect_hosts: ['*.corp.example.com']"),
        "targets[0].allowed_redirect_hosts[0]",
        "'*.corp.example.com': write the domain itself (corp.example.com): its subdomains are allowed too",
        id="redirect-host-wildcard",
    ),
    pytest.param(
        _replace(
            "    kind: ews", "    kind: autodiscover\n    allowed_redirect_hosts: ['https://mail.corp.example.com/']"
        ),
        "targets[0].allowed_redirect_hosts[0]",
        "'https://mail.corp.example.com/' is not a host name (write mail.contoso.com, not a URL)",
        id="redirect-host-url",
    ),
    pytest.param(
        "scenario: onprem-bems-hybrid\ntargets: []\n", "targets", "at least one entry is required", id="no-targets"
    ),
]


def test_allowed_redirect_hosts_are_normalised(tmp_path: Path, secret_file: Path) -> None:
    """Any case, a trailing dot, an IDN or an IP address (also bracketed): one form to compare hosts in."""
    entries = "[Mail.Corp.Example.COM., münchen.example.de, corp, 10.0.0.5, '[2001:db8::1]']"
    text = _replace("    kind: ews", f"    kind: autodiscover\n    allowed_redirect_hosts: {entries}")
    target = load_config(write(tmp_path, text, secret_file)).targets[0]
    assert target.allowed_redirect_hosts == (
        "mail.corp.example.com", "xn--mnchen-3ya.example.de", "corp", "10.0.0.5", "2001:db8::1",
    )  # fmt: skip


@pytest.mark.parametrize(("text", "key", "reason"), BAD)
def test_bad_config_names_file_key_and_reason(
    tmp_path: Path, secret_file: Path, text: str, key: str, reason: str
) -> None:
    path = write(tmp_path, text, secret_file)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert (caught.value.file, caught.value.key, caught.value.reason) == (str(path), key, reason)
    assert str(caught.value) == f"{path}: {key}: {reason}"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("scenario: [unclosed", "invalid YAML: line 1, column 20: expected ',' or ']', but got '<stream end>'"),
        ("- a list\n", "the file must hold a mapping with scenario, credentials and targets"),
    ],
)
def test_unparseable_files(text: str, reason: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "x.yml")
    assert str(caught.value) == f"x.yml: {reason}"


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match=r"^/nonexistent/bems.yml: cannot read: No such file or directory$"):
        load_config("/nonexistent/bems.yml")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("30s", 30),
        ("5m", 300),
        ("1h30m", 5400),
        ("1d", 86400),
        (15, 15),
        ("2.5s", 2.5),
    ],
)
def test_durations(text: str | int, seconds: float) -> None:
    assert parse_duration(text).total_seconds() == seconds


@pytest.mark.parametrize("text", ["", "5", "s", "-5s", "5 s", "5x", "1h 30m", True])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize("key", ["ca_file", "public_ca_file"])
def test_ca_files_must_be_readable(tmp_path: Path, secret_file: Path, key: str) -> None:
    text = _replace("  timeout: 10s", f"  timeout: 10s\n  tls: {{{key}: /nonexistent/ca.pem}}")
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text, secret_file))
    assert (caught.value.key, caught.value.reason) == (
        f"defaults.tls.{key}",
        "cannot read CA file /nonexistent/ca.pem",
    )


PUSH_BASE = """
scenario: onprem-bems-hybrid
{notifications}
credentials:
  app: {{tenant_id: t.onmicrosoft.com, client_id: c, client_secret: s3cret}}
targets:
  - {{name: g, kind: graph, exchange: online, credential: app, {push}}}
  - {{name: bems, kind: notification_url, url: 'https://bems.corp.example.com/notificationClient'{extra}}}
"""
LISTENER = "notifications: {listen_address: ':10443', public_url: 'https://monitor.corp.example.com:10443'}"


@pytest.mark.parametrize(("notifications", "push", "extra", "key", "reason"), [
    ("", "push: {mailbox: p@contoso.com}", "", "targets[0].push",
     "push needs a notifications block (the exporter's listener)"),
    (LISTENER.replace("https://", "http://"), "push: {mailbox: p@contoso.com}", "", "notifications.public_url",
     "Graph calls back over https only"),
    (LISTENER, "push: {mailbox: p@contoso.com, status_frequency: 5}", "", "targets[0].push.status_frequency",
     "Graph sends no keep-alives: this is an EWS setting"),
    (LISTENER, "push: {mailbox: p@contoso.com}", ", exchange: online", "targets[1].exchange",
     "a notification_url target is on the BEMS side: it has no exchange"),
    (LISTENER.replace("10443'}", "10443/x?y=1'}"), "push: {mailbox: p@contoso.com}",
     "", "notifications.public_url",
     "'https://monitor.corp.example.com:10443/x?y=1' must be an http:// or https:// URL without query or fragment"),
    (LISTENER.replace("':10443'", "'10443'"), "push: {mailbox: p@contoso.com}", "", "notifications.listen_address",
     "'10443': expected HOST:PORT or :PORT"),
    (LISTENER, "push: {mailbox: nobody}", "", "targets[0].push.mailbox", "'nobody' is not an SMTP address"),
])  # fmt: skip
def test_bad_push_configuration(notifications: str, push: str, extra: str, key: str, reason: str) -> None:
    text = PUSH_BASE.format(notifications=notifications, push=push, extra=extra)
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "push.yml")
    assert (caught.value.key, caught.value.reason) == (key, reason)


def test_push_defaults() -> None:
    config = parse_config(PUSH_BASE.format(notifications=LISTENER, push="push: {mailbox: p@contoso.com}", extra=""),
                          "push.yml")  # fmt: skip
    graph = config.targets_by_name()["g"]
    assert graph.push_stall_after.total_seconds() == 360  # the write interval (5m) plus a minute
    assert config.targets_by_name()["bems"].exchange_label == ""
