#!/usr/bin/env bash
# Runs pytest; "no tests collected" (exit 5) is a failure, never a silent pass.
set -u
pytest_bin=${1:-pytest}
shift || true
"$pytest_bin" -q -p no:cacheprovider "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "run-tests: pytest collected no tests - treating as a failure" >&2
  exit 1
fi
exit "$rc"
