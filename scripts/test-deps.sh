#!/usr/bin/env bash
# Installs and starts what the test suite talks to: DCMTK (the independent DICOM peer),
# libmagic (MIME sniffing), openssl (test certificates), Chromium (the dashboard and OHIF viewer tests), npm (fetches the
# OHIF build those tests open), PostgreSQL and Redis. Safe to run again; does nothing that is already done.
set -euo pipefail

need_apt=()
command -v storescu >/dev/null 2>&1 || need_apt+=(dcmtk)
# libmagic sniffs uploaded documents' MIME types (python-magic loads it)
ldconfig -p 2>/dev/null | grep 'libmagic\.so\.1' >/dev/null || need_apt+=(libmagic1)
# headless Chromium opens the statistics dashboard and the OHIF viewer in the tests
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
# npm fetches the prebuilt OHIF viewer (@ohif/app) for the viewer test, as `make viewer` does
command -v npm >/dev/null 2>&1 || need_apt+=(npm)
# the openssl CLI makes the throwaway PKI of the DICOM TLS, HTTPS and ATNA tests
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "missing Debian packages: ${need_apt[*]} (run: sudo apt-get install ${need_apt[*]})" >&2
    exit 1
  fi
fi

if ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
  if command -v pg_ctlcluster >/dev/null 2>&1; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
  fi
  for _ in $(seq 1 30); do pg_isready -h 127.0.0.1 -p 5432 -q && break; sleep 1; done
fi
pg_isready -h 127.0.0.1 -p 5432 || { echo "PostgreSQL is not running on 127.0.0.1:5432" >&2; exit 1; }

if ! redis-cli -h 127.0.0.1 ping >/dev/null 2>&1 && command -v redis-server >/dev/null 2>&1; then
  mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log || true
fi
