"""The ``populations:`` section: each source loads, and every mistake is FILE:LINE: KEY: REASON, all at once."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from exporter.config import ConfigError, Directory, parse_config

BASE = """\
scenario: onprem-bems-hybrid
credentials:
  bemsadmin:
    username: 'CORP\\BEMSAdmin'
    password_file: {secret}
  app:
    tenant_id: contoso.onmicrosoft.com
    client_id: 11111111-2222-3333-4444-555555555555
    client_secret_file: {secret}
targets:
  - name: onprem-ews
    kind: ews
    exchange: onprem
    url: https://mail.corp.example.com/EWS/Exchange.asmx
    credential: bemsadmin
    auth: [basic]
    population: {target_population}
populations:
"""


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "secret"
    path.write_text("a-long-enough-secret-value\n")
    return path


def config_text(secret: Path, populations: str, target_population: str = "staff") -> str:
    head = BASE.replace("{secret}", str(secret)).replace("{target_population}", target_population)
    return head + textwrap.indent(textwrap.dedent(populations).replace("{secret}", str(secret)), "  ")


def test_each_source_loads(secret: Path, tmp_path: Path) -> None:
    config = parse_config(config_text(secret, """
        staff:
          file: {path: /srv/bems/users.csv, column: PrimarySmtpAddress}
          sweep_interval: 12h
        directory:
          ldap:
            url: ldaps://dc1.corp.example.com
            bind_dn: CN=bems-reader,OU=Service,DC=corp,DC=example,DC=com
            password_file: {secret}
            base: DC=corp,DC=example,DC=com
            group: CN=BEMS Users,OU=Groups,DC=corp,DC=example,DC=com
        cloud:
          entra_group: {credential: app, group_id: 0f7d2c4e-0000-4000-8000-000000000001}
    """), "bems.yml")  # fmt: skip
    staff, directory, cloud = (config.populations[name] for name in ("staff", "directory", "cloud"))
    assert staff.file is not None and staff.file.column == "PrimarySmtpAddress"
    assert staff.sweep_interval.total_seconds() == 12 * 3600
    assert directory.ldap is not None and directory.ldap.directory == Directory.ACTIVE_DIRECTORY
    assert directory.ldap.secure_port == 636 and directory.ldap.page_size == 500
    assert cloud.entra_group is not None and cloud.source_kind == "entra_group"
    assert config.targets[0].population == "staff"
    # The bind password is a secret: redacted from /config, and from logs with the others.
    assert "a-long-enough-secret-value" not in str(config.redacted())
    assert "a-long-enough-secret-value" in set(config.secrets())


LDAP = """
staff:
  ldap:
    url: {url}
    bind_dn: cn=reader,dc=corp
    password_file: {password_file}
    base: dc=corp
    {selection}
"""


def _ldap(url: str = "ldaps://dc1", password_file: str = "{secret}", selection: str = "filter: (mail=*)") -> str:
    return LDAP.format(url=url, password_file=password_file, selection=selection)


# id: (populations, the target's population, an issue the load reports)
MISTAKES = {
    "no-source": ("staff: {}\n", "staff",
                  "populations.staff: set exactly one source: file, ldap or entra_group (found none)"),
    "two-sources": ("staff:\n  file: {path: a.txt}\n  entra_group: {credential: app, group_id: g}\n", "staff",
                    "populations.staff: set exactly one source: file, ldap or entra_group (found file, entra_group)"),
    "unknown-key": ("staff:\n  file: {path: a.txt, colum: mail}\n", "staff",
                    "populations.staff.file.colum: unknown key"),
    "unknown-population": ("staff:\n  file: {path: a.txt}\n", "nobody",
                           "targets[0].population: unknown population 'nobody' (staff)"),
    "entra-group-needs-an-entra-credential": (
        "staff:\n  entra_group: {credential: bemsadmin, group_id: g}\n", "staff",
        "populations.staff.entra_group.credential: no Entra credential named 'bemsadmin'"),
    "ldap-in-clear": (_ldap(url="ldap://dc1"), "staff",
                      "populations.staff.ldap: ldap:// sends the bind password in clear text"),
    "not-ldap": (_ldap(url="https://dc1"), "staff",
                 "populations.staff.ldap.url: 'https://dc1' must be an ldaps:// or ldap:// URL"),
    "neither-filter-nor-group": (_ldap(selection="base: x"), "staff",
                                 "populations.staff.ldap: set exactly one of filter"),
    "no-password-file": (_ldap(password_file="/nonexistent/pw"), "staff",
                         "populations.staff.ldap: cannot read password_file /nonexistent/pw"),
}  # fmt: skip


@pytest.mark.parametrize(("populations", "target_population", "expected"), MISTAKES.values(), ids=MISTAKES.keys())
def test_each_mistake_names_file_line_key_and_reason(
    secret: Path, populations: str, target_population: str, expected: str
) -> None:
    with pytest.raises(ConfigError) as error:
        parse_config(config_text(secret, populations, target_population), "bems.yml")
    assert any(expected in f"{issue}" for issue in error.value.issues), [str(i) for i in error.value.issues]
    assert all(f"{issue}".startswith("bems.yml:") for issue in error.value.issues)


def test_every_mistake_is_reported_at_once(secret: Path) -> None:
    text = config_text(secret, "staff:\n  file: {path: a.txt, colum: x}\nother: {}\n", "nobody")
    with pytest.raises(ConfigError) as error:
        parse_config(text, "bems.yml")
    keys = {issue.key for issue in error.value.issues}
    assert {"populations.staff.file.colum", "populations.other"} <= keys


def test_a_population_on_a_target_that_checks_no_mailbox_is_refused(secret: Path) -> None:
    text = (
        config_text(secret, "staff:\n  file: {path: a.txt}\n")
        .replace("    kind: ews\n", "    kind: autodiscover\n")
        .replace("EWS/Exchange.asmx", "autodiscover/autodiscover.xml")
    )
    with pytest.raises(ConfigError) as error:
        parse_config(text, "bems.yml")
    assert [str(i) for i in error.value.issues] == [
        "bems.yml:17: targets[0].population: only ews and graph targets with a credential check mailboxes"
    ]
