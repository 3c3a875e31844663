#!/usr/bin/env bash
# The whole test suite from a fresh checkout: Debian's Chromium for the dashboard's browser
# tests (never a downloaded browser), a virtual environment with the project and its dev
# tools, then pytest. Servers: BILLING_TEST_DATABASE_URL / BILLING_TEST_REDIS_URL when set,
# else the tests start embedded PostgreSQL and Redis themselves. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v chromium >/dev/null 2>&1; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -q && $sudo apt-get install -y -q chromium
fi

python3 -m venv .venv
.venv/bin/pip install -q -e '.[dev]'
exec .venv/bin/pytest "$@"
