#!/usr/bin/env bash
# Runs pytest; "no tests collected" (exit 5) is a failure, never a silent pass.
# Each run gets its own temporary folder (the embedded servers live there), so a
# concurrent pytest on the same machine, rotating the shared /tmp/pytest-of-$USER,
# can never delete this run's database from under it. It is removed afterwards.
set -u
pytest_bin=${1:-pytest}
shift || true
basetemp=$(mktemp -d "${TMPDIR:-/tmp}/l9-tests.XXXXXX")
trap 'rm -rf "$basetemp"' EXIT
"$pytest_bin" -q -p no:cacheprovider --basetemp="$basetemp/t" "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "run-tests: pytest collected no tests - treating as a failure" >&2
  exit 1
fi
exit "$rc"
