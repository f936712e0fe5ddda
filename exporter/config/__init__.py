"""The configuration file: its models (``schema``), Microsoft's clouds they name (``clouds``), and reading
and validating a file (``loading``). Import from the package: these names are its interface.

May import only the shared top-level modules (``errors``, ``logs``); everything else may import it.
"""

from ..errors import ConfigError
from .durations import format_duration, parse_duration
from .loading import load_config, parse_config
from .populations import Directory, EntraGroupSource, FileSource, LdapSource, Population, Sweeps
from .schema import (
    DEFAULT_CONFIG_FILE,
    PROXY_FROM_ENVIRONMENT,
    WINDOWS_METHODS,
    AuthMethod,
    AutodiscoverProtocol,
    Config,
    Credential,
    Defaults,
    DnsConfig,
    DnsView,
    EntraCredential,
    Exchange,
    Kind,
    Limits,
    MaintenanceWindow,
    Notifications,
    NotificationsTLS,
    Push,
    Route,
    Scenario,
    Target,
    TLSConfig,
    WindowsCredential,
    parse_listen_address,
    parse_shard,
    shard_of,
)

__all__ = [
    "DEFAULT_CONFIG_FILE",
    "PROXY_FROM_ENVIRONMENT",
    "WINDOWS_METHODS",
    "AuthMethod",
    "AutodiscoverProtocol",
    "Config",
    "ConfigError",
    "Credential",
    "Defaults",
    "Directory",
    "DnsConfig",
    "DnsView",
    "EntraCredential",
    "EntraGroupSource",
    "Exchange",
    "FileSource",
    "Kind",
    "LdapSource",
    "Limits",
    "MaintenanceWindow",
    "Notifications",
    "NotificationsTLS",
    "Population",
    "Push",
    "Route",
    "Scenario",
    "Sweeps",
    "TLSConfig",
    "Target",
    "WindowsCredential",
    "format_duration",
    "load_config",
    "parse_config",
    "parse_duration",
    "parse_listen_address",
    "parse_shard",
    "shard_of",
]
