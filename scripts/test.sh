#!/usr/bin/env bash
# Installs everything the test suite needs, then runs it: ruff, then pytest.
# requirements-dev.txt is the runtime (requirements.txt) plus the test and tooling packages.
# Apache Kafka's jars are fetched from Maven Central by the test fixtures on first use
# (cached in .cache/kafka); Chromium comes from Debian; JS clients from npm.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt

if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "warning: Debian's chromium is not installed (browser tests will fail): sudo apt-get install chromium" >&2
  fi
fi

for dir in tests/js examples/vue-client; do
  if [ -f "$dir/package.json" ]; then
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
  fi
done

python3 -m ruff check .
python3 -m pytest "$@"
