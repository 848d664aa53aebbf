#!/usr/bin/env bash
# Installs the Debian packages the test suite starts as real servers, when missing.
set -euo pipefail
need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
# tests/test_compose.py validates docker-compose.yml (the engine itself does not run).
command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
# tests/test_store_backup.py runs docs/operations.md's `sqlite3 ... ".backup"` as written.
command -v sqlite3 >/dev/null 2>&1 || need+=(sqlite3)
# tests/test_dns_discovery.py resolves replicas through a real DNS server. The -base
# package is the binary alone: no service that would take port 53.
command -v dnsmasq >/dev/null 2>&1 || [ -x /usr/sbin/dnsmasq ] || need+=(dnsmasq-base)
# tests/test_admin_ui_browser.py drives the admin web UI in headless Chromium through
# Selenium and Debian's chromedriver (no browser is downloaded at test time).
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
# tests/test_dashboard.py runs the dashboard's queries on a real Prometheus;
# tests/test_alerts.py runs promtool (the same Debian package ships it).
prometheus_missing=false
command -v prometheus >/dev/null 2>&1 || prometheus_missing=true
command -v promtool >/dev/null 2>&1 || prometheus_missing=true
if [ ${#need[@]} -eq 0 ] && [ "$prometheus_missing" = false ]; then
  exit 0
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
$sudo apt-get update -q
if [ ${#need[@]} -gt 0 ]; then
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${need[@]}"
fi
if [ "$prometheus_missing" = true ]; then
  # The tests run /usr/bin/prometheus themselves: the package's service must not
  # start (it would hold :9090). A policy-rc.d that answers 101 stops invoke-rc.d
  # and deb-systemd-invoke from starting it during the install; the service is
  # then disabled so a reboot does not start it either.
  policy=/usr/sbin/policy-rc.d
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
    $sudo chmod 755 "$policy"
    trap '$sudo rm -f "$policy"' EXIT
  fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends prometheus
  if [ -d /run/systemd/system ]; then
    $sudo systemctl disable --now prometheus.service >/dev/null 2>&1 || true
  fi
fi
