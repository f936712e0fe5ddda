"""A simulated Exchange estate for testing and demonstrating the exporter.

HTTPS servers on loopback stand in for on-prem EWS/Autodiscover, Exchange Online, Graph and Entra ID,
plus a stranger's host for Autodiscover redirects to point at; each can be switched into a network or
TLS fault. Mailboxes, impersonation and application access, throttling, EWS retirement, Autodiscover
redirects and the app registration's credential dates are switchable too.

Authentication is real: Basic, NTLM and Negotiate (with Extended Protection) on-prem, OAuth bearer
tokens from a fake Entra ID on Exchange Online, each with its own faults. This package imports nothing
from the rest of the exporter: it speaks the wire formats and writes the exporter's config on its own,
so it checks the exporter instead of sharing its assumptions.
"""

from .autodiscover import RedirectKind
from .directory import MailboxDirectory, UnknownMailboxError
from .endpoint import DEFAULT_SLOW_DELAY_SECONDS, Endpoint, Fault, UnknownEndpointError
from .entra import AppCredential, CredentialKind, EntraId, EntraSettings
from .ews import EwsRequest, ThrottlingKind
from .foreign import ForeignRequest
from .graph import GraphRequest
from .onprem_auth import AccountFault, AuthMethod, ExtendedProtection
from .pki import CertificateAuthority
from .proxy import ForwardProxy, ProxyFault, ProxyRequest
from .server import Simulator, serve

__all__ = [
    "DEFAULT_SLOW_DELAY_SECONDS",
    "AccountFault",
    "AppCredential",
    "AuthMethod",
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
    "GraphRequest",
    "MailboxDirectory",
    "ProxyFault",
    "ProxyRequest",
    "RedirectKind",
    "Simulator",
    "ThrottlingKind",
    "UnknownEndpointError",
    "UnknownMailboxError",
    "serve",
]
