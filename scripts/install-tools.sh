#!/usr/bin/env bash
# Installs the external programs the test suite runs for real: promtool (Debian package prometheus),
# amtool and alertmanager (package prometheus-alertmanager, whose binary Debian calls
# prometheus-alertmanager), chromium for the status page, dnsmasq (a real DNS server on loopback for a
# target's dns.servers), and MIT Kerberos for the Kerberos tests: a KDC (krb5kdc, kdb5_util: krb5-kdc;
# kadmin.local: krb5-admin-server), kinit and klist (krb5-user) and faketime (a KDC whose clock is off);
# for the audit report, victoria-metrics (a long-term store) and poppler-utils (its PDF read back);
# slapd and ldap-utils (a real OpenLDAP directory for populations read over LDAP).
# With `build`, only what building the Python venv needs: python-gssapi and krb5 compile against MIT
# Kerberos (libkrb5-dev, krb5-config) with a C compiler (`make` runs this before it creates .venv).
# In CI (CI=true) a missing tool is a failure, so this must succeed there; elsewhere it explains.
set -euo pipefail

packages=()
command -v krb5-config >/dev/null 2>&1 || packages+=(libkrb5-dev)
command -v cc >/dev/null 2>&1 || packages+=(gcc libc6-dev)
if [ "${1:-}" != build ]; then
  command -v promtool >/dev/null 2>&1 || packages+=(prometheus)
  { command -v amtool && { command -v alertmanager || command -v prometheus-alertmanager; }; } >/dev/null 2>&1 \
    || packages+=(prometheus-alertmanager)
  # The status page is tested in a real headless browser.
  command -v chromium >/dev/null 2>&1 || packages+=(chromium)
  # Debian installs dnsmasq and the KDC's programs in /usr/sbin, which a non-root PATH may lack (the tests
  # look there too). dnsmasq-base: the binary without the dnsmasq package's system service (port 53).
  PATH="$PATH:/usr/sbin:/sbin" command -v dnsmasq >/dev/null 2>&1 || packages+=(dnsmasq-base)
  PATH="$PATH:/usr/sbin:/sbin" command -v krb5kdc >/dev/null 2>&1 || packages+=(krb5-kdc)
  PATH="$PATH:/usr/sbin:/sbin" command -v kadmin.local >/dev/null 2>&1 || packages+=(krb5-admin-server)
  command -v kinit >/dev/null 2>&1 || packages+=(krb5-user)
  command -v faketime >/dev/null 2>&1 || packages+=(faketime)
  # The audit report is proven against VictoriaMetrics too (tests/long_term_stores.py starts its own on
  # loopback; the package's system service is neither needed nor started in containers).
  command -v victoria-metrics >/dev/null 2>&1 || packages+=(victoria-metrics)
  # pdftotext reads back the audit report's PDF; pdftoppm drew its first page for the README.
  command -v pdftotext >/dev/null 2>&1 || packages+=(poppler-utils)
  # slapd is in /usr/sbin too; ldap-utils brings ldapsearch, to look into a test directory by hand.
  PATH="$PATH:/usr/sbin:/sbin" command -v slapd >/dev/null 2>&1 || packages+=(slapd)
  command -v ldapsearch >/dev/null 2>&1 || packages+=(ldap-utils)
fi
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
