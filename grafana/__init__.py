"""Grafana dashboards of bems-exchange-exporter as code: `python -m grafana.build` writes grafana/dashboards/."""
