"""A simulated Exchange estate for testing and demonstrating the exporter.

HTTPS servers on loopback stand in for on-prem EWS/Autodiscover, Exchange Online, Graph and Entra ID;
each can be switched into a network or TLS fault. This package imports nothing from the rest of the
exporter: it speaks the wire formats and writes the exporter's config on its own, so it checks the
exporter instead of sharing its assumptions.
"""

from .endpoint import DEFAULT_SLOW_DELAY_SECONDS, Endpoint, Fault, UnknownEndpointError
from .pki import CertificateAuthority
from .proxy import ForwardProxy, ProxyFault, ProxyRequest
from .server import Simulator, serve

__all__ = [
    "DEFAULT_SLOW_DELAY_SECONDS",
    "CertificateAuthority",
    "Endpoint",
    "Fault",
    "ForwardProxy",
    "ProxyFault",
    "ProxyRequest",
    "Simulator",
    "UnknownEndpointError",
    "serve",
]
