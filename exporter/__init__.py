"""bems-exchange-exporter: Prometheus exporter for the Exchange prerequisites of BEMS Push Notifications."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("bems-exchange-exporter")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
