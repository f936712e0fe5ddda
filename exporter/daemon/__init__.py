"""The running exporter: the configuration loaded and reloaded (``app``), the checks scheduled (``scheduler``)
and run under limits and timeouts (``runner``), their latest results (``store``) and the scenario verdict
drawn from them (``scenario``), the notification listener (``listener``) and how the exporter's two HTTP
servers take connections (``serving``).

May import ``checks``, ``protocol``, ``config`` and the shared top-level modules; never ``web``. What the web
side needs it finds on the ``Exporter``: the result store and status its collector reads, and reload hooks
that ``Exporter.reload`` (SIGHUP, ``/-/reload``) runs after the configuration, which is how the web config
reloads with it.
"""
