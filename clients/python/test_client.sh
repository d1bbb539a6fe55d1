#!/usr/bin/env bash
# Generates Python clients from openapi/*.json with openapi-python-client and drives a
# live Quiver through them (smoke.py). Fails when the generator warns about the spec.
#
# Against a running Quiver: QUIVER_CONTROL_URL=... QUIVER_DATA_URL=... clients/python/test_client.sh
# Otherwise it starts a standalone Quiver of its own (QUIVER_BIN, or the one cargo builds).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
source "$root/scripts/lib/quiver-ci.sh"

venv=$(quiver_ci_venv)
out="$here/generated"
rm -rf "$out"
mkdir -p "$out"
for plane in data control; do
    log="$out/$plane.log"
    "$venv/bin/openapi-python-client" generate --path "$root/openapi/$plane-plane.json" \
        --output-path "$out/quiver_${plane}_client" --meta none --config "$here/generator.yaml" >"$log" 2>&1 ||
        { cat "$log" >&2; echo "error: generating the $plane-plane client failed" >&2; exit 1; }
    # The generator exits 0 when it skips parts of the spec; any warning is a spec bug.
    if grep -qiE 'warning|skipping|could not|unsupported' "$log"; then
        cat "$log" >&2
        echo "error: openapi-python-client warned about openapi/$plane-plane.json; fix the utoipa annotations" >&2
        exit 1
    fi
done

if [ -z "${QUIVER_DATA_URL:-}" ] || [ -z "${QUIVER_CONTROL_URL:-}" ]; then
    quiver_ci_start
    trap quiver_ci_stop EXIT
fi
PYTHONPATH="$out" "$venv/bin/python" "$here/smoke.py"
