"""The benchmark: ``python -m bench`` (or ``make bench``) prints figures and asserts nothing timed.

It starts the Exchange simulator and the exporter as separate processes on loopback, measures the
exporter process alone from ``/proc`` (CPU, RSS) and from its own ``/metrics`` (checks completed,
scheduling lag): check rates up to the knee, ``/metrics`` at 1,000 to 50,000 series, memory with
mailboxes, CPU and requests on the wire per check, and the CPU of one TLS check side by side with
Debian's ``prometheus-blackbox-exporter`` and ``openssl s_time``. See docs/performance.md.
"""
