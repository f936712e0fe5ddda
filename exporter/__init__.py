"""bems-exchange-exporter: Prometheus exporter for the Exchange prerequisites of BEMS Push Notifications.

The packages, each importing only those below it (``[tool.importlinter]`` in pyproject.toml, run by
``make lint``):

- ``web``: the HTTP side: the web port's routes and access gating, the web config, the collector, the
  exposition format and the status page.
- ``daemon``: the running process: the exporter and its reloads, the scheduler, the runner, the result
  store, the scenario verdict, the notification listener and how both HTTP servers take connections.
- ``checks``: one module per check, what they share (the probe context, per-mailbox units, signing in,
  long-lived resources) and the push state the listener feeds.
- ``protocol``: the wire: TCP, TLS and proxies, HTTP, NTLM/Negotiate, Entra tokens, EWS, Autodiscover,
  safe XML, and what Exchange's answers ask of the next request (back-off, credential suspension).
- ``config``: the configuration file's models, Microsoft's clouds and loading.

Beside them, what every layer may use: ``results`` (the check result model), ``metrics`` (metric
specifications), ``logs``, ``errors``; and the entry points on top, ``cli`` (with ``report``, the probe
subcommand's output) and ``__main__``. The simulator is another distribution (``bems_simulator``): nothing
here imports it.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("bems-exchange-exporter")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
