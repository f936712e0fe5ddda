"""The audit report (``bems-exchange-exporter report``, docs/audit.md): calendar-month availability of each
requirement, of the scenario verdict and of each check, from the per-minute recording rules in a Prometheus or a
store that answers its query API (VictoriaMetrics, Thanos, Mimir).

``ledger`` holds the arithmetic as pure functions over samples; ``store`` asks the query API; ``document``
writes HTML, PDF, CSV and JSON from one computed ``Report``. May import only the shared top-level modules.
"""
