"""The web port: its routes and who may call them (``http_app``), the exporter-toolkit web config
(``webconfig``), the metrics built at scrape time (``collector``) in the text format (``exposition``), and
the status page (``status_page``).

``http_app.create_app`` assembles the web port over a running exporter: the metrics registry with the
collector over its results, and, while the app runs, its web config reloaded with the configuration (a
reload hook of the exporter).

May import everything below it: ``daemon``, ``checks``, ``protocol``, ``config`` and the shared top-level
modules.
"""
