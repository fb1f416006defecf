#!/usr/bin/env bash
# Install what `make test` and `make demo` need on a fresh machine: the Debian packages
# (as root), a virtualenv with Nimbus and its extras, and the Serverless Framework v3.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-}

need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v java >/dev/null 2>&1 || need_apt+=(openjdk-17-jre-headless)
# headless Chromium for the dashboard's browser test (Playwright drives the Debian build)
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need_apt+=(chromium-driver)
# The operator's stack test (tests/integration/test_prometheus_stack.py): Prometheus, promtool, Alertmanager.
command -v prometheus >/dev/null 2>&1 || need_apt+=(prometheus)
command -v prometheus-alertmanager >/dev/null 2>&1 || need_apt+=(prometheus-alertmanager)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "bootstrap: apt-get install ${need_apt[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "bootstrap: please install ${need_apt[*]} (not root, or no apt-get)" >&2
    exit 1
  fi
fi

if [ -z "$PYTHON" ]; then
  for candidate in python3 python3.11 python3.12 python3.13; do
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c "import sys; sys.exit(sys.version_info < (3, 11))" 2>/dev/null; then
      PYTHON=$candidate; break
    fi
  done
fi
[ -n "$PYTHON" ] || { echo "bootstrap: Python 3.11+ is required" >&2; exit 1; }

if [ ! -x "$VENV/bin/python" ]; then
  echo "bootstrap: creating $VENV with $PYTHON"
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
echo "bootstrap: pip install -e '.[local,dev,airflow]' (first time: several minutes)"
"$VENV/bin/python" -m pip install -q -e '.[local,dev,airflow]'

if command -v npm >/dev/null 2>&1; then
  echo "bootstrap: npm ci (Serverless Framework v3, to check serverless.yml)"
  npm ci --no-audit --no-fund --loglevel=error >/dev/null
else
  echo "bootstrap: npm not found; the serverless.yml check against the Framework will be skipped" >&2
fi
