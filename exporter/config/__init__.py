"""The configuration file: its models (``schema``), Microsoft's clouds they name (``clouds``), and reading
and validating a file (``loading``). Import from the package: these names are its interface.

May import only the shared top-level modules (``errors``, ``logs``); everything else may import it.
"""

from ..errors import ConfigError
from .loading import load_config, parse_config
from .schema import (
    DEFAULT_CONFIG_FILE,
    PROXY_FROM_ENVIRONMENT,
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
    Notifications,
    NotificationsTLS,
    Push,
    Route,
    Scenario,
    Target,
    TLSConfig,
    WindowsCredential,
    format_duration,
    parse_duration,
    parse_listen_address,
    parse_shard,
    shard_of,
)

__all__ = [
    "DEFAULT_CONFIG_FILE",
    "PROXY_FROM_ENVIRONMENT",
    "AuthMethod",
    "AutodiscoverProtocol",
    "Config",
    "ConfigError",
    "Credential",
    "Defaults",
    "DnsConfig",
    "DnsView",
    "EntraCredential",
    "Exchange",
    "Kind",
    "Limits",
    "Notifications",
    "NotificationsTLS",
    "Push",
    "Route",
    "Scenario",
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
