#!/usr/bin/env bash
# The whole test suite from a fresh checkout: Debian's Chromium for the dashboard's browser
# tests (never a downloaded browser) and Debian's PgBouncer for the tests through a pooler
# (the tests start their own), Debian's prometheus for its promtool (the alert rules are
# checked and unit-tested), a virtual environment with the project and its dev tools, then
# pytest. Servers: BILLING_TEST_DATABASE_URL / BILLING_TEST_REDIS_URL when set, else the
# tests start embedded PostgreSQL and Redis themselves. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ] || missing+=(pgbouncer)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)  # promtool checks the alert rules
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -q && $sudo apt-get install -y -q "${missing[@]}"
fi

python3 -m venv .venv
.venv/bin/pip install -q -e '.[dev]'
exec .venv/bin/pytest -n 2 "$@"
