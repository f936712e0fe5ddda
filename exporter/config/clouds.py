"""Microsoft's clouds: where each one signs apps in, serves Exchange Online and serves Graph.

A token is good only in the cloud that issued it, for the resource its scope names, so the sign-in
host, the scopes and the Graph root all follow the credential's ``cloud``. Sources:

- Entra ID (sign-in) and Graph root per national cloud: "Microsoft Graph national cloud deployments",
  https://learn.microsoft.com/graph/deployments (GCC uses the global endpoints; GCC High the US
  Government L4 ones; DoD the L5 Graph with the US Government sign-in host).
- A ``.default`` scope names the cloud's own resource host:
  https://learn.microsoft.com/graph/sdks/national-clouds ("Permission scopes").
- The Exchange Online host per cloud (``outlook.office365.us`` for GCC High, ``webmail.apps.mil`` for
  DoD, ``partner.outlook.cn`` for 21Vianet): the ``-ExchangeEnvironmentName`` endpoints of
  ``Connect-ExchangeOnline``, https://learn.microsoft.com/powershell/exchange/connect-to-exchange-online-powershell.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Cloud(StrEnum):
    GLOBAL = "global"  # worldwide Microsoft 365, GCC included
    USGOV = "usgov"  # Microsoft 365 GCC High
    DOD = "dod"  # Microsoft 365 DoD
    CHINA = "china"  # Microsoft 365 operated by 21Vianet


class Resource(StrEnum):
    """What a token is for: Exchange Online (EWS, Autodiscover) or Microsoft Graph."""

    EXCHANGE = "exchange"
    GRAPH = "graph"


_DEFAULT_SCOPE_SUFFIX = "/.default"  # the client-credentials grant asks for all consented permissions
GRAPH_VERSION = "v1.0"


@dataclass(frozen=True, slots=True)
class CloudEndpoints:
    login: str  # the Entra ID authority root (without tenant)
    exchange: str  # the Exchange Online resource, whose EWS is {exchange}/EWS/Exchange.asmx
    graph: str  # the Microsoft Graph root

    def scope(self, resource: Resource) -> str:
        return (self.graph if resource == Resource.GRAPH else self.exchange) + _DEFAULT_SCOPE_SUFFIX

    @property
    def graph_url(self) -> str:
        return f"{self.graph}/{GRAPH_VERSION}"


ENDPOINTS: dict[Cloud, CloudEndpoints] = {
    Cloud.GLOBAL: CloudEndpoints(
        "https://login.microsoftonline.com", "https://outlook.office365.com", "https://graph.microsoft.com"
    ),
    Cloud.USGOV: CloudEndpoints(
        "https://login.microsoftonline.us", "https://outlook.office365.us", "https://graph.microsoft.us"
    ),
    Cloud.DOD: CloudEndpoints(
        "https://login.microsoftonline.us", "https://webmail.apps.mil", "https://dod-graph.microsoft.us"
    ),
    Cloud.CHINA: CloudEndpoints(
        "https://login.chinacloudapi.cn", "https://partner.outlook.cn", "https://microsoftgraph.chinacloudapi.cn"
    ),
}
