"""A simulated Exchange estate for testing and demonstrating the exporter.

HTTPS servers on loopback stand in for on-prem EWS/Autodiscover, Exchange Online, Graph and Entra ID,
plus a stranger's host for Autodiscover redirects to point at; each can be switched into a network or
TLS fault. Mailboxes, impersonation and application access, throttling, EWS retirement, Autodiscover
redirects and the app registration's credential dates are switchable too.

Authentication is real: Basic, NTLM and Negotiate (with Extended Protection) on-prem, OAuth bearer
tokens from a fake Entra ID on Exchange Online, each with its own faults. Push is real too: EWS push
subscriptions and Graph webhooks call a client's listener back, with their own faults, and a fake
BEMS notification URL echoes Graph's validation tokens. This package imports nothing
from the rest of the exporter: it speaks the wire formats and writes the exporter's config on its own,
so it checks the exporter instead of sharing its assumptions.
"""

from .autodiscover import RedirectKind
from .bems import BemsFault, BemsRequest
from .directory import MailboxDirectory, UnknownMailboxError
from .endpoint import DEFAULT_SLOW_DELAY_SECONDS, Endpoint, Fault, UnknownEndpointError
from .entra import AppCredential, CredentialKind, EntraId, EntraSettings
from .ews import EwsRequest, ThrottlingKind
from .foreign import ForeignRequest
from .graph import GraphRequest
from .mailstore import MailItem
from .onprem_auth import AccountFault, AuthMethod, ExtendedProtection
from .outbound import PushFaultKind
from .pki import CertificateAuthority
from .proxy import ForwardProxy, ProxyFault, ProxyRequest
from .push import PushDelivery, PushSubscription
from .server import Simulator, serve
from .webhooks import GraphDelivery, GraphSubscription

__all__ = [
    "DEFAULT_SLOW_DELAY_SECONDS",
    "AccountFault",
    "AppCredential",
    "AuthMethod",
    "BemsFault",
    "BemsRequest",
    "CertificateAuthority",
    "CredentialKind",
    "Endpoint",
    "EntraId",
    "EntraSettings",
    "EwsRequest",
    "ExtendedProtection",
    "Fault",
    "ForeignRequest",
    "ForwardProxy",
    "GraphDelivery",
    "GraphRequest",
    "GraphSubscription",
    "MailItem",
    "MailboxDirectory",
    "ProxyFault",
    "ProxyRequest",
    "PushDelivery",
    "PushFaultKind",
    "PushSubscription",
    "RedirectKind",
    "Simulator",
    "ThrottlingKind",
    "UnknownEndpointError",
    "UnknownMailboxError",
    "serve",
]
