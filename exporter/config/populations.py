"""The ``populations:`` section: where the mailboxes of every BEMS user come from, and how often each is swept.

A population has exactly one source: a file (one address a line, or CSV with a named column), an LDAP search
(a filter, or a group with its nested members), or an Entra group (Graph ``transitiveMembers``). Targets name a
population beside or instead of their ``mailboxes``; docs/populations.md is the operator's guide.
"""

from __future__ import annotations

from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from .durations import Duration

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FileSource(_Model):
    """A text file of addresses, re-read when its modification time or size changes."""

    path: str = Field(min_length=1)
    # None: one address a line ('#' starts a comment). Else the file is CSV and this column holds the address.
    column: str | None = Field(default=None, min_length=1)


class Directory(StrEnum):
    """Which LDAP server: Active Directory resolves nested groups itself (LDAP_MATCHING_RULE_IN_CHAIN); any
    other (OpenLDAP, 389) is asked for each group's members and the exporter walks the nesting."""

    ACTIVE_DIRECTORY = "active_directory"
    GENERIC = "generic"


class LdapSource(_Model):
    url: str
    bind_dn: str = Field(min_length=1)
    password: SecretStr
    password_source: str = "inline"
    base: str = Field(min_length=1)
    filter: str | None = None  # any RFC 4515 filter: every entry it matches under base is a member
    group: str | None = None  # a group's DN: its members, nested groups' members included
    directory: Directory = Directory.ACTIVE_DIRECTORY
    attribute: str = "mail"  # the entry's SMTP address
    ca_file: str | None = None
    start_tls: bool = False
    page_size: int = Field(default=500, ge=1, le=10_000)  # RFC 2696; AD's MaxPageSize defaults to 1000
    timeout: Duration = timedelta(seconds=30)

    @model_validator(mode="before")
    @classmethod
    def _password(cls, data: Any) -> Any:
        # From a file only: an LDAP bind password is a domain account's, never written into the config itself.
        if isinstance(data, dict):
            data = dict(data)
            if "password" in data:
                raise ValueError("write the bind password in a file and name it in password_file")
            path = data.pop("password_file", None)
            if path is None:
                raise ValueError("password_file is required (the bind password, read from that file)")
            try:
                secret = Path(str(path)).read_text(encoding="utf-8").strip()
            except OSError as err:
                raise ValueError(f"cannot read password_file {path}: {err.strerror or err}") from None
            if not secret:
                raise ValueError(f"password_file {path} is empty")
            data["password"], data["password_source"] = secret, f"file:{path}"
        return data

    @field_validator("url")
    @classmethod
    def _ldap_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("ldap", "ldaps") or not parts.hostname:
            raise ValueError(f"{value!r} must be an ldaps:// or ldap:// URL (ldap:// needs start_tls)")
        _ = parts.port  # raises ValueError for a malformed port
        return value

    @field_validator("ca_file")
    @classmethod
    def _ca_readable(cls, value: str | None) -> str | None:
        if value is not None and not Path(value).is_file():
            raise ValueError(f"cannot read CA file {value}")
        return value

    @model_validator(mode="after")
    def _one_selection(self) -> LdapSource:
        if (self.filter is None) == (self.group is None):
            raise ValueError("set exactly one of filter (any search) or group (a group's nested members)")
        if urlsplit(self.url).scheme == "ldap" and not self.start_tls:
            # The bind sends the password: never in clear text, as the HTTPS-only targets.
            raise ValueError("ldap:// sends the bind password in clear text: use ldaps:// or set start_tls: true")
        if urlsplit(self.url).scheme == "ldaps" and self.start_tls:
            raise ValueError("start_tls upgrades an ldap:// connection: ldaps:// is TLS from the start")
        return self

    @property
    def secure_port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or (636 if parts.scheme == "ldaps" else 389)


class EntraGroupSource(_Model):
    """An Entra ID group's transitive user members, read through Graph with an Entra credential."""

    credential: str = Field(min_length=1)  # an Entra credential with GroupMember.Read.All (application)
    group_id: str = Field(min_length=1)


class Population(_Model):
    file: FileSource | None = None
    ldap: LdapSource | None = None
    entra_group: EntraGroupSource | None = None
    sweep_interval: Duration = timedelta(days=1)  # every mailbox checked once per interval, spread evenly
    refresh_interval: Duration = timedelta(hours=1)  # how often the source is read again
    # BEMSExchangePopulationFailingShare fires above this share of failing mailboxes (exported as a gauge, so that one
    # rule serves every population with its own threshold).
    alert_failing_share: float = Field(default=0.05, gt=0, le=1)

    @model_validator(mode="after")
    def _one_source(self) -> Population:
        given = [key for key in ("file", "ldap", "entra_group") if getattr(self, key) is not None]
        if len(given) != 1:
            raise ValueError(f"set exactly one source: file, ldap or entra_group (found {', '.join(given) or 'none'})")
        return self

    @property
    def source_kind(self) -> str:
        return "file" if self.file else "ldap" if self.ldap else "entra_group"


class Sweeps(_Model):
    """Where sweeps keep their progress, so that a restart resumes (None: in memory only)."""

    state_directory: str | None = None

    @field_validator("state_directory")
    @classmethod
    def _writable(cls, value: str | None) -> str | None:
        if value is not None and not Path(value).is_dir():
            raise ValueError(f"{value} is not a directory")
        return value
