"""The web port: its routes and who may call them (``http_app``), the exporter-toolkit web config
(``webconfig``), the metrics built at scrape time (``collector``) in the text format (``exposition``), and
the status page (``status_page``).

May import everything below it: ``daemon``, ``checks``, ``protocol``, ``config`` and the shared top-level
modules.
"""
