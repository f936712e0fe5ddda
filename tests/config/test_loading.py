"""Configuration: the contract's keys load, and every bad file names file, key and reason."""

from __future__ import annotations

import logging
import os
import textwrap
from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from exporter.cli import main
from exporter.config import AuthMethod, ConfigError, DnsView, load_config, parse_config, parse_duration
from exporter.daemon.app import Exporter
from exporter.errors import ConfigIssue

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
    # The pair is what a Basic header carries (Base64-encoded): the log redaction knows it too.
    assert sorted(config.secrets()) == [
        "CORP\\BEMSAdmin:S3cret-Passw0rd",
        "S3cret-Passw0rd",
        "entra-client-secret-value",
    ]


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


def _with_dns(dns: str, *more: str) -> str:
    return _replace("    interval: 30s", "\n".join(("    interval: 30s", f"    dns: {dns}", *more)))


BAD = [
    pytest.param(
        _with_dns("{servers: [ns1.corp.example.com]}"),
        24,
        "targets[0].dns.servers[0]",
        "'ns1.corp.example.com' is not an IP address (a resolver is named by its address, with an optional port)",
        id="dns-server-by-name",
    ),
    pytest.param(
        _with_dns("{servers: ['[2001:db8::53]:99999']}"),
        24,
        "targets[0].dns.servers[0]",
        "'[2001:db8::53]:99999': the port must be a number from 1 to 65535",
        id="dns-server-bad-port",
    ),
    pytest.param(
        _with_dns("{servers: [192.0.2.53, '192.0.2.53:53']}"),
        24,
        "targets[0].dns.servers",
        "a server is listed twice",
        id="dns-server-twice",
    ),
    pytest.param(
        _with_dns("{servers: [192.0.2.53], view: outside}"),
        24,
        "targets[0].dns.view",
        "Input should be 'internet' or 'internal'",
        id="dns-unknown-view",
    ),
    pytest.param(
        _with_dns("{servers: []}"),
        24,
        "targets[0].dns.servers",
        "at least one server is required",
        id="dns-without-servers",
    ),
    pytest.param(
        _with_dns("{servers: [192.0.2.53]}", "    proxy_url: http://proxy.corp.example.com:3128"),
        25,
        "targets[0].proxy_url",
        "a target with dns connects directly: the proxy would resolve its name itself",
        id="dns-through-a-proxy",
    ),
    pytest.param(
        _replace("scenario: onprem-bems-hybrid", "scenario: onprem-bems-hybrid\nroute: connectivity_node"),
        3,
        "route",
        "route is how cloud BEMS reaches on-premises Exchange: onprem-bems-hybrid has no such route",
        id="route-outside-the-cloud-scenario",
    ),
    pytest.param(
        _replace("scenario: onprem-bems-hybrid", "scenario: hybrid"),
        2,
        "scenario",
        "Input should be 'cloud-bems-onprem-exchange', 'onprem-bems-cloud-exchange' or 'onprem-bems-hybrid'",
        id="unknown-scenario",
    ),
    pytest.param(
        _replace("  interval: 60s", "  interval: 60s\n  intervall: 5s"),
        5,
        "defaults.intervall",
        "unknown key",
        id="unknown-key",
    ),
    pytest.param(
        _replace("  interval: 60s", "  interval: sixty"),
        4,
        "defaults.interval",
        "'sixty' is not a duration such as 30s, 5m or 1h30m",
        id="bad-duration",
    ),
    pytest.param(
        _replace("    interval: 30s", "    interval: 0s"),
        23,
        "targets[0].interval",
        "a duration must be greater than zero",
        id="zero-interval",
    ),
    pytest.param(
        _replace("    credential: bemsadmin", "    credential: bemsadmn"),
        20,
        "targets[0].credential",
        "unknown credential 'bemsadmn' (bemsadmin, entra-app)",
        id="unknown-credential",
    ),
    pytest.param(
        _replace("  - name: online-graph", "  - name: onprem-ews"),
        24,
        "targets[1].name",
        "duplicate target name 'onprem-ews'",
        id="duplicate-name",
    ),
    pytest.param(
        _replace("url: https://mail", "url: http://mail"),
        19,
        "targets[0].url",
        "'http://mail.corp.example.com/EWS/Exchange.asmx' must be an https:// URL: credentials are "
        "never sent in clear text",
        id="http-url",
    ),
    pytest.param(
        _replace("password_file: {secret_file}", "password_file: /nonexistent/secret"),
        7,
        "credentials.bemsadmin",
        "cannot read secret file /nonexistent/secret: No such file or directory",
        id="missing-secret-file",
    ),
    pytest.param(
        _replace("client_secret_env: BEMS_TEST_SECRET", "client_secret_env: BEMS_UNSET_VARIABLE"),
        10,
        "credentials.entra-app",
        "environment variable BEMS_UNSET_VARIABLE is not set",
        id="unset-env",
    ),
    pytest.param(
        _replace("    auth: [basic, ntlm]", "    auth: [basic, oauth]"),
        21,
        "targets[0].auth",
        "'bemsadmin' is a Windows account: oauth needs an Entra credential",
        id="oauth-windows",
    ),
    pytest.param(
        _replace("    credential: entra-app", "    credential: entra-app\n    auth: [ntlm]"),
        28,
        "targets[1].auth",
        "'entra-app' is an Entra ID application: only oauth applies",
        id="ntlm-entra",
    ),
    pytest.param(
        _replace("    auth: [basic, ntlm]", "    auth: [digest]"),
        21,
        "targets[0].auth[0]",
        "Input should be 'basic', 'ntlm', 'kerberos', 'oauth' or 'certificate'",
        id="unknown-method",
    ),
    pytest.param(
        _replace("    password_file: {secret_file}", "    password_file: {secret_file}\n    keytab: {secret_file}"),
        7,
        "credentials.bemsadmin",
        "set only one of password_file, password_env, password and keytab",
        id="password-and-keytab",
    ),
    pytest.param(
        _replace("    password_file: {secret_file}", "    keytab: /nonexistent/bemsadmin.keytab"),
        9,
        "credentials.bemsadmin.keytab",
        "cannot read /nonexistent/bemsadmin.keytab",
        id="unreadable-keytab",
    ),
    pytest.param(
        _replace("    password_file: {secret_file}", "    keytab: {secret_file}"),
        21,
        "targets[0].auth",
        "'bemsadmin' has no password: basic and ntlm need a password",
        id="keytab-for-ntlm",
    ),
    pytest.param(
        _replace("    password_file: {secret_file}\n", ""),
        7,
        "credentials.bemsadmin",
        "set one of password_file, password_env, password, keytab or certificate_file",
        id="no-secret-at-all",
    ),
    pytest.param(
        _replace("    password_file: {secret_file}", "    password_file: {secret_file}\n    key_file: {secret_file}"),
        10,
        "credentials.bemsadmin.key_file",
        "goes with certificate_file",
        id="key-without-certificate",
    ),
    pytest.param(
        _replace(
            "    password_file: {secret_file}", "    password_file: {secret_file}\n    certificate_file: {secret_file}"
        ),
        10,
        "credentials.bemsadmin.certificate_file",
        "cannot load the certificate with its key: a PEM certificate and its private key (in key_file or the same "
        "file) are needed, with key_password if the key is encrypted",
        id="certificate-that-does-not-load",
    ),
    pytest.param(
        _replace("    auth: [basic, ntlm]", "    auth: [basic, certificate]"),
        21,
        "targets[0].auth",
        "'bemsadmin' has no certificate_file: the certificate method presents one",
        id="certificate-without-file",
    ),
    pytest.param(
        _replace("    auth: [basic, ntlm]", "    auth: [basic, ntlm]\n    spn: HTTP/mail-lb.corp.example.com"),
        22,
        "targets[0].spn",
        "only the kerberos method uses a service principal: add kerberos to auth",
        id="spn-without-kerberos",
    ),
    pytest.param(
        _replace("    auth: [basic, ntlm]", "    auth: [kerberos]\n    spn: mail-lb.corp.example.com"),
        22,
        "targets[0].spn",
        "'mail-lb.corp.example.com' is not a service principal SERVICE/host, such as HTTP/mail.contoso.com",
        id="spn-without-service-class",
    ),
    pytest.param(
        _replace("    interval: 30s", "    interval: 30s\n    timeout: 45s"),
        24,
        "targets[0].timeout",
        "timeout 45s exceeds the interval 30s",
        id="timeout-over-interval",
    ),
    pytest.param(
        _replace("    mailboxes: [alice@corp.example.com]", "    mailboxes: [alice]"),
        22,
        "targets[0].mailboxes",
        "'alice' is not an SMTP address",
        id="bad-mailbox",
    ),
    pytest.param(
        _replace("    client_secret_env: BEMS_TEST_SECRET\n", ""),
        10,
        "credentials.entra-app",
        "set exactly one of client_secret_file, client_secret_env, client_secret or certificate_file",
        id="entra-without-secret",
    ),
    pytest.param(
        _replace("    password_file: {secret_file}", "    password_file: {secret_file}\n    password: x"),
        7,
        "credentials.bemsadmin",
        "set only one of password, password_file",
        id="two-secret-sources",
    ),
    pytest.param(
        _replace("  bemsadmin:\n    username: 'CORP\\BEMSAdmin'", "  bemsadmin:\n    user: x"),
        7,
        "credentials.bemsadmin",
        "a credential needs either username (a Windows account) or tenant_id (an Entra ID application)",
        id="credential-kind-unknown",
    ),
    pytest.param(_replace("    kind: ews\n", ""), 16, "targets[0].kind", "required key is missing", id="missing-kind"),
    pytest.param(
        _replace("  timeout: 10s", "  timeout: 10s\n  proxy_url: https://proxy:3128"),
        6,
        "defaults.proxy_url",
        "'https://proxy:3128' must be an http:// proxy URL (HTTP CONNECT) or 'from_environment'",
        id="proxy-scheme",
    ),
    pytest.param(
        _replace("    interval: 30s", "    interval: 30s\n    protocols: [json]"),
        24,
        "targets[0].protocols",
        "only autodiscover targets have this key",
        id="protocols-on-ews",
    ),
    pytest.param(
        _replace("    kind: ews", "    kind: autodiscover\n    protocols: [pox, imap]"),
        18,
        "targets[0].protocols[1]",
        "Input should be 'pox', 'soap' or 'json'",
        id="unknown-protocol",
    ),
    pytest.param(
        _replace("    kind: ews", "    kind: autodiscover\n    allowed_redirect_hosts: [corp.example.com, co.uk]"),
        18,
        "targets[0].allowed_redirect_hosts[1]",
        "'co.uk' is a public suffix (publicsuffix.org): anyone can register a domain under it, and credentials "
        "would go to them; name your own domain",
        id="redirect-host-public-suffix",
    ),
    pytest.param(
        _replace("    kind: ews", "    kind: autodiscover\n    allowed_redirect_hosts: [COM.]"),
        18,
        "targets[0].allowed_redirect_hosts[0]",
        "'COM.' is a public suffix (publicsuffix.org): anyone can register a domain under it, and credentials "
        "would go to them; name your own domain",
        id="redirect-host-top-level-domain",
    ),
    pytest.param(
        _replace("    kind: ews", "    kind: autodiscover\n    allowed_redirect_hosts: [cloudapp.net]"),
        18,
        "targets[0].allowed_redirect_hosts[0]",
        "'cloudapp.net' is a public suffix (publicsuffix.org): anyone can register a domain under it, and "
        "credentials would go to them; name your own domain",
        id="redirect-host-private-section-suffix",
    ),
    pytest.param(
        _replace("    kind: ews", "    kind: autodiscover\n    allowed_redirect_hosts: ['*.corp.example.com']"),
        18,
        "targets[0].allowed_redirect_hosts[0]",
        "'*.corp.example.com': write the domain itself (corp.example.com): its subdomains are allowed too",
        id="redirect-host-wildcard",
    ),
    pytest.param(
        _replace(
            "    kind: ews", "    kind: autodiscover\n    allowed_redirect_hosts: ['https://mail.corp.example.com/']"
        ),
        18,
        "targets[0].allowed_redirect_hosts[0]",
        "'https://mail.corp.example.com/' is not a host name (write mail.contoso.com, not a URL)",
        id="redirect-host-url",
    ),
    pytest.param(
        "scenario: onprem-bems-hybrid\ntargets: []\n", 2, "targets", "at least one entry is required", id="no-targets"
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


def test_dns_servers_are_kept_with_their_port(tmp_path: Path, secret_file: Path) -> None:
    text = _with_dns(
        "{servers: [192.0.2.53, '198.51.100.1:5353', '2001:db8::53', '[2001:db8::54]:5353'], view: internet}"
    )
    config = load_config(write(tmp_path, text, secret_file))
    target = config.targets[0]
    dns = config.dns_of(target)
    assert dns is not None and dns.view == DnsView.INTERNET
    assert dns.servers == ("192.0.2.53:53", "198.51.100.1:5353", "[2001:db8::53]:53", "[2001:db8::54]:5353")
    assert config.dns_of(config.targets[1]) is None  # no defaults.dns: the host's resolver


@pytest.mark.parametrize(("text", "line", "key", "reason"), BAD)
def test_bad_config_names_file_line_key_and_reason(
    tmp_path: Path, secret_file: Path, text: str, line: int, key: str, reason: str
) -> None:
    path = write(tmp_path, text, secret_file)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.issues == (ConfigIssue(str(path), reason, key, line),)
    assert (caught.value.file, caught.value.line, caught.value.key, caught.value.reason) == (
        str(path),
        line,
        key,
        reason,
    )
    assert str(caught.value) == f"{path}:{line}: {key}: {reason}"


GOOD_TWICE_BEMSADMIN = _replace(
    "  entra-app:", "  bemsadmin:\n    username: 'CORP\\Other'\n    password: other-Passw0rd\n  entra-app:"
)

MANY_ERRORS = [
    pytest.param(
        GOOD_TWICE_BEMSADMIN,
        [(10, "credentials.bemsadmin", "duplicate key (first at line 7)")],
        id="duplicate-credential",
    ),
    pytest.param(
        GOOD + "scenario: cloud-bems-onprem-exchange\n",
        [(29, "scenario", "duplicate key (first at line 2)")],
        id="duplicate-top-level-key",
    ),
    pytest.param(
        _replace("  interval: 60s", "  interval: sixty\n  intervall: 5s").replace("kind: ews", "kind: owa"),
        [
            (4, "defaults.interval", "'sixty' is not a duration such as 30s, 5m or 1h30m"),
            (5, "defaults.intervall", "unknown key"),
            (18, "targets[0].kind", "Input should be 'ews', 'autodiscover', 'graph' or 'notification_url'"),
        ],
        id="three-schema-errors",
    ),
    pytest.param(
        _replace("    credential: bemsadmin", "    credential: bemsadmn")
        .replace("    interval: 30s", "    interval: 30s\n    timeout: 45s")
        .replace("  - name: online-graph", "  - name: onprem-ews"),
        [
            (20, "targets[0].credential", "unknown credential 'bemsadmn' (bemsadmin, entra-app)"),
            (24, "targets[0].timeout", "timeout 45s exceeds the interval 30s"),
            (25, "targets[1].name", "duplicate target name 'onprem-ews'"),
        ],
        id="three-cross-field-errors",
    ),
    pytest.param(
        GOOD_TWICE_BEMSADMIN.replace("  interval: 60s", "  interval: sixty"),
        [
            (4, "defaults.interval", "'sixty' is not a duration such as 30s, 5m or 1h30m"),
            (10, "credentials.bemsadmin", "duplicate key (first at line 7)"),
        ],
        id="duplicate-and-schema-error",
    ),
    pytest.param(
        # An unknown kind gets no Graph default URL: both are reported, each where it is.
        _replace("    kind: graph", "    kind: owa"),
        [
            (24, "targets[1].url", "required key is missing"),
            (25, "targets[1].kind", "Input should be 'ews', 'autodiscover', 'graph' or 'notification_url'"),
        ],
        id="unknown-kind",
    ),
]


@pytest.mark.parametrize(("text", "expected"), MANY_ERRORS)
def test_every_error_is_reported_at_once_each_with_its_line(
    tmp_path: Path, secret_file: Path, text: str, expected: list[tuple[int, str, str]]
) -> None:
    path = write(tmp_path, text, secret_file)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.issues == tuple(ConfigIssue(str(path), reason, key, line) for line, key, reason in expected)
    assert str(caught.value).splitlines() == [f"{path}:{line}: {key}: {reason}" for line, key, reason in expected]


def test_config_check_prints_every_error_and_fails(
    tmp_path: Path, secret_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, GOOD_TWICE_BEMSADMIN.replace("  interval: 60s", "  interval: sixty"), secret_file)
    assert main(["--config.file", str(path), "--config.check"]) != 0
    err = capsys.readouterr().err
    assert f"{path}:4: defaults.interval: 'sixty' is not a duration such as 30s, 5m or 1h30m" in err
    assert f"{path}:10: credentials.bemsadmin: duplicate key (first at line 7)" in err


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


# --- secret files that others can read or change: a warning, as ssh gives for a private key --------------------


@pytest.mark.skipif(os.name == "nt", reason="POSIX modes; on Windows the ACL decides")
@pytest.mark.parametrize(
    ("mode", "problem"),
    [
        pytest.param(0o600, None, id="owner-only"),
        pytest.param(0o400, None, id="owner-read-only"),
        pytest.param(0o640, None, id="group-may-read"),  # Kubernetes fsGroup, chmod 0440
        pytest.param(0o644, "is readable by every user (mode 0644)", id="world-readable"),
        pytest.param(0o660, "is writable by its group (mode 0660)", id="group-writable"),
        pytest.param(0o602, "is writable by every user (mode 0602)", id="world-writable"),
        pytest.param(
            0o666,
            "is readable by every user and writable by every user and writable by its group (mode 0666)",
            id="everything",
        ),
    ],
)
def test_a_secret_file_others_can_read_or_change_loads_with_a_warning(
    tmp_path: Path, secret_file: Path, mode: int, problem: str | None
) -> None:
    secret_file.chmod(mode)
    config = load_config(write(tmp_path, GOOD, secret_file))
    expected = [
        f"credentials.bemsadmin.password_file: {secret_file} {problem}: only the exporter's user should read it"
    ]
    assert config.secret_file_warnings() == (expected if problem else [])


def entra_config(tmp_path: Path, secret_file: Path, **credential: str) -> Path:
    data = yaml.safe_load(textwrap.dedent(GOOD).replace("{secret_file}", str(secret_file)))
    app = data["credentials"]["entra-app"]
    del app["client_secret_env"]
    app.update(credential)
    path = tmp_path / "entra.yml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.skipif(os.name == "nt", reason="POSIX modes; on Windows the ACL decides")
@pytest.mark.parametrize(
    ("key", "files"),
    [
        pytest.param("client_secret_file", {"client_secret_file": "app.secret"}, id="client-secret"),
        pytest.param("private_key_file", {"certificate_file": "app.crt", "private_key_file": "app.key"}, id="key"),
        pytest.param("certificate_file", {"certificate_file": "app.pem"}, id="key-inside-the-certificate-file"),
    ],
)
def test_every_kind_of_entra_secret_file_is_checked(
    tmp_path: Path, secret_file: Path, key: str, files: dict[str, str]
) -> None:
    secret_file.chmod(0o600)
    paths = {name: tmp_path / file for name, file in files.items()}
    for name, path in paths.items():
        path.write_text("entra-client-secret-value\n")
        path.chmod(0o600 if name == "certificate_file" and key != "certificate_file" else 0o644)
    config = load_config(entra_config(tmp_path, secret_file, **{k: str(v) for k, v in paths.items()}))
    assert config.secret_file_warnings() == [
        f"credentials.entra-app.{key}: {paths[key]} is readable by every user (mode 0644): "
        "only the exporter's user should read it"
    ]


def test_a_secret_too_short_to_redact_is_warned_about(tmp_path: Path, secret_file: Path) -> None:
    secret_file.write_text("abc\n")
    secret_file.chmod(0o600)
    config = load_config(write(tmp_path, GOOD, secret_file))
    assert config.secret_file_warnings() == [
        "credentials.bemsadmin.password has fewer than 4 characters: too short to be redacted from logs"
    ]


@pytest.mark.skipif(os.name == "nt", reason="POSIX modes; on Windows the ACL decides")
async def test_secret_file_warnings_are_logged_at_every_load_and_printed_by_config_check(
    tmp_path: Path, secret_file: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    secret_file.chmod(0o644)
    config_file = write(tmp_path, GOOD, secret_file)
    warning = f"credentials.bemsadmin.password_file: {secret_file} is readable by every user (mode 0644)"

    assert main(["--config.file", str(config_file), "--config.check"]) == 0
    assert f"warning: {warning}" in capsys.readouterr().out

    exporter = Exporter(str(config_file))
    with caplog.at_level(logging.WARNING, logger="exporter.daemon.app"):
        exporter.load()
        secret_file.chmod(0o600)
        assert await exporter.reload() is None
        secret_file.chmod(0o604)
        assert await exporter.reload() is None
    await exporter.stop()
    insecure = [getattr(r, "fields", {}).get("err", "") for r in caplog.records if r.getMessage() == "insecure secret"]
    assert len(insecure) == 2, insecure
    assert insecure[0].startswith(warning)
    assert insecure[1].startswith(warning.replace("0644", "0604"))


async def test_a_failed_reload_logs_every_error_and_keeps_the_running_configuration(
    tmp_path: Path, secret_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(tmp_path, GOOD, secret_file)
    exporter = Exporter(str(path))
    exporter.load()
    running = exporter.config
    write(tmp_path, GOOD_TWICE_BEMSADMIN.replace("  interval: 60s", "  interval: sixty"), secret_file)
    with caplog.at_level(logging.ERROR, logger="exporter.daemon.app"):
        error = await exporter.reload()
    await exporter.stop()
    assert error is not None
    assert [(issue.line, issue.key) for issue in error.issues] == [
        (4, "defaults.interval"),
        (10, "credentials.bemsadmin"),
    ]
    assert exporter.config is running
    failed = [getattr(r, "fields", {}).get("err") for r in caplog.records if "reload failed" in r.getMessage()]
    assert failed == [f"{path}:4: defaults.interval: 'sixty' is not a duration such as 30s, 5m or 1h30m\n"
                      f"{path}:10: credentials.bemsadmin: duplicate key (first at line 7)"]  # fmt: skip
