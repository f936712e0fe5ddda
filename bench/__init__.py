"""The benchmark: ``python -m bench`` (or ``make bench``) prints figures and asserts nothing timed.

It starts the Exchange simulator and the exporter as separate processes on loopback, measures the
exporter process alone from ``/proc`` (CPU, RSS) and from its own ``/metrics`` (checks completed,
scheduling lag), and compares the CPU of one TLS check with Debian's ``prometheus-blackbox-exporter``
and ``openssl s_time``. See docs/performance.md.
"""
