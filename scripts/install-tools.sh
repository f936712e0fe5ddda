#!/usr/bin/env bash
# Installs the external programs the test suite runs for real: promtool (Debian package prometheus) and
# amtool and alertmanager (Debian package prometheus-alertmanager), chromium for the status page, and dnsmasq
# (a real DNS server on loopback for a target's dns.servers).
# In CI (CI=true) a missing tool is a failure, so this must succeed there; elsewhere it explains.
set -euo pipefail

packages=()
command -v promtool >/dev/null 2>&1 || packages+=(prometheus)
# Debian calls the alertmanager binary prometheus-alertmanager.
{ command -v amtool && { command -v alertmanager || command -v prometheus-alertmanager; }; } >/dev/null 2>&1 \
  || packages+=(prometheus-alertmanager)
# The status page is tested in a real headless browser.
command -v chromium >/dev/null 2>&1 || packages+=(chromium)
# Debian installs dnsmasq in /usr/sbin, which a non-root PATH may lack (tests/dns_servers.py looks there too).
# dnsmasq-base: the binary without the dnsmasq package's system service, which would take port 53.
PATH="$PATH:/usr/sbin:/sbin" command -v dnsmasq >/dev/null 2>&1 || packages+=(dnsmasq-base)
[ ${#packages[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # --no-install-recommends: only the binaries; the package's service is not started in containers.
  apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
  exit 0
fi
echo "missing: ${packages[*]} — install with: sudo apt-get install ${packages[*]}" >&2
exit 1
