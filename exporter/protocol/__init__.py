"""The wire: how the exporter speaks to Exchange, Entra ID and Graph, with no notion of a check.

TCP connections, TLS and HTTP CONNECT proxies (``tcp_tls``), the system's name lookups off the event loop
(``lookup_threads``), HTTP with bounded responses
(``http_client``), NTLM and Negotiate (``ntlm``), Entra ID tokens (``entra_tokens``), EWS SOAP
(``ews_soap``), Autodiscover (``autodiscover_wire``), Graph's JSON answers and error envelope
(``graph_wire``), XML from untrusted servers (``safe_xml``), and the state that Exchange's answers impose on
the next request: back-off (``backoff``) and credentials withheld after repeated 401s (``suspension``).

May import ``config`` and the shared top-level modules (``results``, ``metrics``, ``logs``, ``errors``);
never ``checks``, ``daemon`` or ``web``.
"""
