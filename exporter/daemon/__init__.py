"""The running exporter: the configuration loaded and reloaded (``app``), the checks scheduled (``scheduler``)
and run under limits and timeouts (``runner``), their latest results (``store``) and the scenario verdict
drawn from them (``scenario``), the notification listener (``listener``) and how the exporter's two HTTP
servers take connections (``serving``).

May import ``checks``, ``protocol``, ``config`` and the shared top-level modules; not ``web``, except that
``app``, where the exporter is assembled, registers the web side's collector and holds its web config.
"""
