#!/usr/bin/env bash
# Fetches the dashboard's (and GraphiQL's) browser libraries from the npm registry into
# src/shipyard/dashboard/static/vendor/ and checks each file against the sha256 below, so the
# files committed there are exactly these releases, unmodified. Needs npm (`npm pack` only
# downloads a package's tarball; nothing is installed or run).
#   bash scripts/vendor_ui.sh          # fetch and check (rewrites the files)
#   bash scripts/vendor_ui.sh --check  # only check the committed files
set -euo pipefail
cd "$(dirname "$0")/.."
dest=src/shipyard/dashboard/static/vendor

# package@version  file in the package  -> path under vendor/  sha256
files=(
  "htmx.org@2.0.11 dist/htmx.min.js htmx.min.js d6fdc75f204e6bdefa99b69bf1e6d4ac69b8a364f77929f45c13476b4000f717"
  "htmx.org@2.0.11 LICENSE LICENSE.htmx d3d2456f76414f2456104660ebd65aff1c04cd7966b942bdabd63f3cdb316a38"
  "uplot@1.6.32 dist/uPlot.iife.min.js uPlot.iife.min.js 19c8d4c6ad88929a79f4ae49d6f7161566dfd0ba3d15cc495e974f787eb78f1f"
  "uplot@1.6.32 dist/uPlot.min.css uPlot.min.css df630c6a8d6f8eeaff264b50f73ce5b114f646ffd9a0bb74f049b0a00135fa04"
  "uplot@1.6.32 LICENSE LICENSE.uplot 8f989229699b4fe2f1a0432d0e9edc338a8a911e250e2d1b01ecd770a5f5b1bd"
  "graphiql@3.8.3 graphiql.min.js graphiql/graphiql.min.js 22faab94067b695e5f7959619fbe686ebcc8955002a0c97d986bcbba4ad4bc2c"
  "graphiql@3.8.3 graphiql.min.css graphiql/graphiql.min.css b1868247f8e0502cd869e581f5f3cb55b334862e7f51b1d6cbace11059b9adc2"
  "graphiql@3.8.3 LICENSE graphiql/LICENSE.graphiql -"
  "react@18.2.0 umd/react.production.min.js graphiql/react.production.min.js 4b4969fa4ef3594324da2c6d78ce8766fbbc2fd121fff395aedf997db0a99a06"
  "react@18.2.0 LICENSE graphiql/LICENSE.react -"
  "react-dom@18.2.0 umd/react-dom.production.min.js graphiql/react-dom.production.min.js 21758ed084cd0e37e735722ee4f3957ea960628a29dfa6c3ce1a1d47a2d6e4f7"
  "react-dom@18.2.0 LICENSE graphiql/LICENSE.react-dom -"
)

check() {
  local path=$1 want=$2
  [ "$want" = "-" ] && return 0
  local got
  got=$(sha256sum "$path" | cut -d' ' -f1)
  if [ "$got" != "$want" ]; then
    echo "$path: sha256 $got, expected $want" >&2
    return 1
  fi
}

if [ "${1:-}" != "--check" ]; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  for line in "${files[@]}"; do
    read -r spec inner target _ <<<"$line"
    folder="$work/${spec//[@\/]/_}"
    if [ ! -d "$folder" ]; then
      mkdir -p "$folder"
      (cd "$folder" && npm pack --silent "$spec" >/dev/null && tar xzf ./*.tgz)
    fi
    mkdir -p "$(dirname "$dest/$target")"
    cp "$folder/package/$inner" "$dest/$target"
  done
fi
status=0
for line in "${files[@]}"; do
  read -r _ _ target sha <<<"$line"
  check "$dest/$target" "$sha" || status=1
done
[ $status = 0 ] && echo "vendored files match their releases"
exit $status
