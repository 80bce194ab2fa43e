#!/usr/bin/env bash
# Runs pytest; "no tests collected" (exit 5) is a failure, never a silent pass.
# Each run gets its own temporary folder (the embedded servers live there), so a
# concurrent pytest on the same machine, rotating the shared /tmp/pytest-of-$USER,
# can never delete this run's database from under it. It is removed afterwards.
#
# With no test paths (make test: the whole suite), a second pass runs the tests
# marked `cluster` again on a local Redis Cluster (3 masters + 3 replicas,
# L9_TEST_REDIS=cluster): delivery, reclaim, dead letters, RPC, retention, the
# agents, l9 health, the auditor, the SymPy worker, the lineage projector and the
# extraction end to end.
set -u
pytest_bin=${1:-pytest}
shift || true
basetemp=$(mktemp -d "${TMPDIR:-/tmp}/l9-tests.XXXXXX")
trap 'rm -rf "$basetemp"' EXIT

run() {  # run <name> <pytest args...>
  local name=$1
  shift
  "$pytest_bin" -q -p no:cacheprovider --basetemp="$basetemp/$name" "$@"
  local rc=$?
  if [ "$rc" -eq 5 ]; then
    echo "run-tests: pytest collected no tests ($name) - treating as a failure" >&2
    return 1
  fi
  return "$rc"
}

if [ "$#" -gt 0 ]; then
  run t "$@"
  exit $?
fi
run t --durations=15 || exit $?
echo "run-tests: the tests marked 'cluster', again on a local Redis Cluster" >&2
L9_TEST_REDIS=cluster run cluster --durations=5 -m cluster tests/integration
