#!/usr/bin/env bash
# Generates Python clients from openapi/*.json with openapi-python-client and drives a
# live Quiver through them (smoke.py). Fails when the generator warns about the spec
# (--fail-on-warning: it would otherwise skip what it cannot read and exit 0).
# The clients go to a temp dir of their own, removed on exit, so runs do not share
# (or clobber) generated code.
#
# Against a running Quiver: QUIVER_CONTROL_URL=... QUIVER_DATA_URL=... clients/python/test_client.sh
# Otherwise it starts a standalone Quiver of its own (QUIVER_BIN, or the one cargo builds).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
source "$root/scripts/lib/quiver-ci.sh"

out=''
cleanup() {
    local status=$?
    if [ -n "$out" ]; then rm -rf "$out" || true; fi
    # Stops the Quiver this script started, if it did; returns $status.
    quiver_ci_stop "$status"
}
trap cleanup EXIT

venv=$(quiver_ci_venv) || exit 1
out=$(mktemp -d)
for plane in data control; do
    log="$out/$plane.log"
    "$venv/bin/openapi-python-client" generate --path "$root/openapi/$plane-plane.json" \
        --output-path "$out/quiver_${plane}_client" --meta none --config "$here/generator.yaml" \
        --fail-on-warning >"$log" 2>&1 ||
        {
            cat "$log" >&2
            echo "error: generating the $plane-plane client failed, or openapi-python-client warned about" \
                "openapi/$plane-plane.json (a warning means part of the spec was skipped: fix the utoipa annotations)" >&2
            exit 1
        }
done

if [ -z "${QUIVER_DATA_URL:-}" ] || [ -z "${QUIVER_CONTROL_URL:-}" ]; then
    quiver_ci_start
fi
PYTHONPATH="$out" "$venv/bin/python" "$here/smoke.py"
